"""The one path for every product write (docs/design.md, invariant 5).

`ProductWrites.session()` opens a write session; `session.run(work)` runs
`work(tx)` in one MySQL transaction (deadlocks retried as `Database.run`
does). `tx`, a `ProductTransaction`, is the only thing that may write the
`products` table:

* every UPDATE it makes bumps `version` and `updated_at`;
* it records `{product_id: version}` of every row it changed, from what it
  already knows (a row it holds locked, a version compare-and-set) or, failing
  that, by one read-back before commit;
* rows whose searchable fields changed are re-indexed through the
  `SearchBackend` seam inside the same transaction;
* every stock write declares its `stock_delta`; a product whose stock the
  transaction takes from at-or-above its `low_stock_threshold` to below it
  gets a `stock.low` outbox row before commit (`StockLowOutbox`), and one
  whose stock it takes to zero or back from it is listed as sold out or in
  stock in the search index (`SearchIndex.set_in_stock`), both from what the
  transaction already read (a row read at the version before its first stock
  write, or after its last) or, failing that, the same read-back.

When the session ends, normally or by an exception (what committed before a
MySQL outage must not stay cached), the versions of every committed
transaction are invalidated once (`Invalidator.after_commit`).

Every cursor that `Database` hands out refuses INSERT/UPDATE/DELETE/REPLACE
on `products` unless a `ProductTransaction` is making the statement, so a
write path that skips this module fails loudly instead of leaving caches stale.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar

from chalicelib.domain.products import PRODUCT_COLUMNS
from chalicelib.service.ports import CacheInvalidator, SearchIndex, StockLowOutbox
from chalicelib.adapters.db import placeholders

_ALL_COLUMNS = frozenset(c.strip() for c in PRODUCT_COLUMNS.split(","))

T = TypeVar("T")


# An assignment to `stock` (not `low_stock_threshold`): such a write must say its delta.
_WRITES_STOCK = re.compile(r"(?<![\w.])stock\s*=")



def quantity_case(values: Mapping[int, int]):
    """`CASE id WHEN .. THEN v .. END` and its parameters: each row's value in one statement."""
    ids = sorted(values)
    return (f"CASE id {' '.join(['WHEN %s THEN %s'] * len(ids))} END",
            [value for pid in ids for value in (pid, values[pid])])


class ProductTransaction:
    """The product writes of one transaction. `cursor` is for everything else
    (orders, order lines, reads); product rows change only through the methods here."""

    def __init__(self, cursor, search_index: Optional[SearchIndex], stock_low: Optional[StockLowOutbox] = None):
        self.cursor = cursor
        self._search_index = search_index
        self._stock_low = stock_low
        # Low-stock crossings: (stock, threshold) of a row as read at a version (every write bumps
        # the version, so a version names one stock), the net stock change of this transaction, the
        # version before its first stock write (when known), and whether a write changed only some rows.
        self._stock_at: dict[int, dict[int, tuple[int, int]]] = {}
        self._stock_net: dict[int, int] = {}
        self._version_before: dict[int, Optional[int]] = {}
        self._stock_ambiguous = False
        self.versions: dict[int, int] = {}   # product id -> version after this transaction's last change
        self._unknown: set[int] = set()      # changed, version not known yet
        self._locked: dict[int, int] = {}    # rows this transaction holds FOR UPDATE -> their version
        self._full_rows: dict[int, dict] = {}  # full rows read since their last change
        self._reindex: set[int] = set()

    def _write(self, sql: str, args) -> int:
        self.cursor.products_writable = True
        try:
            return self.cursor.execute(sql, args)
        finally:
            self.cursor.products_writable = False

    # --- reads --------------------------------------------------------------

    def select(self, ids: Iterable[int], columns: str = PRODUCT_COLUMNS, lock: bool = False) -> dict[int, dict]:
        """{id: row} of the given products (`id` and `version` always included);
        with `lock`, FOR UPDATE in id order (the global lock order)."""
        ids = sorted(set(ids))
        if not ids:
            return {}
        wanted = [c.strip() for c in columns.split(",")]
        wanted += [c for c in ("id", "version") if c not in wanted]
        self.cursor.execute(f"SELECT {', '.join(wanted)} FROM products WHERE id IN ({placeholders(len(ids))})"
                            + (" ORDER BY id FOR UPDATE" if lock else ""), ids)
        rows = {row["id"]: row for row in self.cursor.fetchall()}
        for pid, row in rows.items():
            if pid in self.versions or pid in self._unknown:
                self.versions[pid] = row["version"]
                self._unknown.discard(pid)
            if lock:
                self._locked[pid] = row["version"]
            if _ALL_COLUMNS.issubset(wanted):
                self._full_rows[pid] = row
            if "stock" in row and "low_stock_threshold" in row:
                self._stock_at.setdefault(pid, {})[row["version"]] = (row["stock"], row["low_stock_threshold"])
        return rows

    def taken_skus(self, skus: Sequence[str]) -> list[str]:
        """Those of `skus` a product has; the column's collation decides what "the same sku"
        is (case and accents)."""
        wanted = " UNION ALL ".join(["SELECT %s AS sku"] * len(skus))
        self.cursor.execute(f"SELECT DISTINCT w.sku FROM ({wanted}) w JOIN products p ON p.sku = w.sku", list(skus))
        return [row["sku"] for row in self.cursor.fetchall()]

    # --- writes -------------------------------------------------------------

    def insert(self, products: Sequence[Mapping]) -> list[dict]:
        """Insert new products (validated dicts); their full rows in the given order.
        Raises DuplicateKey on a duplicate sku."""
        self.cursor.products_writable = True
        try:
            self.cursor.executemany(
                "INSERT INTO products (sku, name, description, category, price_cents, stock, low_stock_threshold) "
                "VALUES (%(sku)s, %(name)s, %(description)s, %(category)s, %(price_cents)s, %(stock)s, "
                "%(low_stock_threshold)s)",
                [{"low_stock_threshold": 0, **p} for p in products])
        finally:
            self.cursor.products_writable = False
        skus = [p["sku"] for p in products]
        self.cursor.execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE sku IN ({placeholders(len(skus))})", skus)
        by_sku = {row["sku"]: row for row in self.cursor.fetchall()}
        rows = [by_sku[sku] for sku in skus]
        for row in rows:
            self.versions[row["id"]] = row["version"]
            self._full_rows[row["id"]] = row
            self._reindex.add(row["id"])
        return rows

    def update(self, ids: Iterable[int], assignments: str, params: Sequence = (), where: str = "",
               where_params: Sequence = (), reindex: bool = False,
               stock_delta: Optional[Mapping[int, int]] = None) -> int:
        """`UPDATE products SET <assignments>, version + 1 ... WHERE id IN (ids) [AND <where>]`;
        the number of rows changed. `reindex` when searchable fields change;
        `stock_delta` ({id: change}) whenever `assignments` write stock."""
        ids = sorted(set(ids))
        self._check_stock_write(assignments, stock_delta)
        before = {pid: self._locked.get(pid) for pid in ids}
        sets = f"{assignments}, " if assignments else ""
        changed = self._write(
            f"UPDATE products SET {sets}version = version + 1, updated_at = CURRENT_TIMESTAMP(6) "
            f"WHERE id IN ({placeholders(len(ids))})" + (f" AND {where}" if where else ""),
            [*params, *ids, *where_params])
        for pid in ids:
            self._full_rows.pop(pid, None)
            if pid in self._locked and changed == len(ids):
                # Locked by us: nobody else moved it, so it is exactly one version on.
                self._locked[pid] += 1
                self.versions[pid] = self._locked[pid]
                self._unknown.discard(pid)
            else:
                self._unknown.add(pid)
        if stock_delta is not None and changed:
            if changed == len(ids):
                for pid in ids:
                    self._note_stock(pid, before[pid], stock_delta[pid])
            else:  # which rows changed is unknown: this transaction must not commit (finish() refuses)
                self._stock_ambiguous = True
        if reindex:
            self._reindex.update(ids)
        return changed

    def take_stock(self, quantities: Mapping[int, int], prices: Optional[Mapping[int, int]] = None) -> int:
        """Take every line whose row is active with enough stock (and, with `prices`, still at
        the unit price the caller decided with), in one statement; the number of rows taken.
        Every order writer takes stock here: one guard, the rows locked in ascending id order."""
        case, params = quantity_case(quantities)
        where, where_params = f"status = 'active' AND stock >= {case}", params
        if prices is not None:
            price_case, price_params = quantity_case({pid: prices[pid] for pid in quantities})
            where, where_params = f"{where} AND price_cents = {price_case}", [*params, *price_params]
        return self.update(quantities, f"stock = stock - {case}", params, where=where, where_params=where_params,
                           stock_delta={pid: -qty for pid, qty in quantities.items()})

    def compare_and_set(self, product_id: int, version: int, assignments: str, params: Sequence = (),
                        where: str = "", where_params: Sequence = (), stock_delta: Optional[int] = None) -> bool:
        """Change the row only if it is still at `version` (and `where` holds)."""
        self._check_stock_write(assignments, None if stock_delta is None else {product_id: stock_delta})
        changed = self._write(
            f"UPDATE products SET {assignments}, version = version + 1, updated_at = CURRENT_TIMESTAMP(6) "
            "WHERE id = %s AND version = %s" + (f" AND {where}" if where else ""),
            [*params, product_id, version, *where_params])
        if changed:
            self._full_rows.pop(product_id, None)
            self.versions[product_id] = version + 1
            self._unknown.discard(product_id)
            if stock_delta is not None:
                self._note_stock(product_id, version, stock_delta)
        return bool(changed)

    # --- low stock ----------------------------------------------------------

    @staticmethod
    def _check_stock_write(assignments: str, stock_delta) -> None:
        if _WRITES_STOCK.search(assignments) and stock_delta is None:
            raise ValueError("a stock write must give its stock_delta (low-stock events depend on it)")

    def _note_stock(self, pid: int, version_before: Optional[int], delta: int) -> None:
        """A write changed `pid`'s stock by `delta`; `version_before`: its version just before, if known."""
        if pid not in self._stock_net:
            self._version_before[pid] = version_before
        self._stock_net[pid] = self._stock_net.get(pid, 0) + delta

    def _stock_at_commit(self) -> dict[int, tuple[int, int]]:
        """{product id: (stock now, threshold)} for every product whose stock this transaction
        changed. The row is ours (locked) from the first stock write to commit, so stock at
        commit = stock before + the net change."""
        changed = {pid: net for pid, net in self._stock_net.items() if net}
        after, unread = {}, []
        for pid, net in changed.items():
            seen = self._stock_at.get(pid, {})
            if self.versions.get(pid) in seen and pid not in self._unknown:
                after[pid] = seen[self.versions[pid]]
            elif self._version_before.get(pid) in seen:
                stock, threshold = seen[self._version_before[pid]]
                after[pid] = (stock + net, threshold)
            else:
                unread.append(pid)
        if unread:
            rows = self.select(unread, "id, stock, low_stock_threshold")
            after.update({pid: (rows[pid]["stock"], rows[pid]["low_stock_threshold"]) for pid in rows})
        return after

    def finish(self) -> None:
        """Before commit: re-index what needs it and read back the versions not known yet."""
        if self._reindex and self._search_index is not None:
            missing = self._reindex - set(self._full_rows)
            if missing:
                self.select(missing)
            self._search_index.index(self.cursor, [self._full_rows[pid] for pid in sorted(self._reindex)
                                                   if pid in self._full_rows])
        if self._stock_ambiguous:
            raise AssertionError("a stock write changed only some of its rows; which ones is unknown")
        if self._stock_net and (self._stock_low is not None or self._search_index is not None):
            now = self._stock_at_commit()
            before = {pid: stock - self._stock_net[pid] for pid, (stock, _) in now.items()}
            if self._stock_low is not None:
                for pid, (stock, threshold) in sorted(now.items()):
                    if stock < threshold <= before[pid]:
                        self._stock_low.add_stock_low(self.cursor, pid, stock, threshold)
            crossed = {pid: stock > 0 for pid, (stock, _) in now.items() if (stock > 0) != (before[pid] > 0)}
            if crossed and self._search_index is not None:
                self._search_index.set_in_stock(self.cursor, crossed)
        if self._unknown:
            self.select(self._unknown, "id")


class WriteSession:
    """Transactions whose committed product versions are invalidated together at the end."""

    def __init__(self, db, search_index: Optional[SearchIndex], stock_low: Optional[StockLowOutbox] = None):
        self._db = db
        self._search_index = search_index
        self._stock_low = stock_low
        self.versions: dict[int, int] = {}

    def run(self, work: Callable[[ProductTransaction], T]) -> T:
        """`work(tx)` in one transaction; its product versions count once it has committed."""
        committed: list[ProductTransaction] = []

        def attempt(cur):
            tx = ProductTransaction(cur, self._search_index, self._stock_low)
            result = work(tx)
            tx.finish()
            committed[:] = [tx]  # the last attempt is the one that commits
            return result

        result = self._db.run(attempt)
        for pid, version in committed[0].versions.items():
            self.versions[pid] = max(self.versions.get(pid, 0), version)
        return result


class ProductWrites:
    """Opens write sessions: the composition root builds one per process."""

    def __init__(self, db, invalidator: CacheInvalidator, search_index: Optional[SearchIndex],
                 stock_low: Optional[StockLowOutbox] = None):
        self.db = db
        self.invalidator = invalidator
        self.search_index = search_index
        self.stock_low = stock_low

    @contextmanager
    def session(self, enqueue: bool = True) -> Iterator[WriteSession]:
        """`enqueue=False` (the order hot path): the invalidation queue is used only
        if Redis did not take the invalidation at once."""
        session = WriteSession(self.db, self.search_index, self.stock_low)
        try:
            yield session
        finally:
            if session.versions:
                self.invalidator.after_commit(session.versions, search=True, enqueue=enqueue)

    def run(self, work: Callable[[ProductTransaction], T], enqueue: bool = True) -> T:
        """One transaction in a session of its own (a single admin write)."""
        with self.session(enqueue) as session:
            return session.run(work)

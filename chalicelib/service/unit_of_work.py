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
  `SearchBackend` seam inside the same transaction.

When the session ends, normally or by an exception (what committed before a
MySQL outage must not stay cached), the versions of every committed
transaction are invalidated once (`Invalidator.after_commit`).

Every cursor that `Database` hands out refuses INSERT/UPDATE/DELETE/REPLACE
on `products` unless a `ProductTransaction` is making the statement, so a
write path that skips this module fails loudly instead of leaving caches stale.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping, Optional, Protocol, Sequence, TypeVar

PRODUCT_COLUMNS = ("id, sku, name, description, category, price_cents, stock, version, status, "
                   "created_at, updated_at")
_ALL_COLUMNS = frozenset(c.strip() for c in PRODUCT_COLUMNS.split(","))

T = TypeVar("T")


class SearchIndex(Protocol):
    def index(self, cur, rows: Sequence[Mapping]) -> None:
        """(Re)index full product rows inside the product write transaction `cur`."""


class CacheInvalidator(Protocol):
    def after_commit(self, versions: Mapping[int, int], search: bool = True, enqueue: bool = True) -> None:
        """Invalidate the cached copies older than `versions`; never raises."""


def _marks(n: int) -> str:
    return ",".join(["%s"] * n)


class ProductTransaction:
    """The product writes of one transaction. `cursor` is for everything else
    (orders, order lines, reads); product rows change only through the methods here."""

    def __init__(self, cursor, search_index: Optional[SearchIndex]):
        self.cursor = cursor
        self._search_index = search_index
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
        self.cursor.execute(f"SELECT {', '.join(wanted)} FROM products WHERE id IN ({_marks(len(ids))})"
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
        return rows

    # --- writes -------------------------------------------------------------

    def insert(self, products: Sequence[Mapping]) -> list[dict]:
        """Insert new products (validated dicts); their full rows in the given order.
        Raises pymysql's IntegrityError on a duplicate sku."""
        self.cursor.products_writable = True
        try:
            self.cursor.executemany(
                "INSERT INTO products (sku, name, description, category, price_cents, stock) "
                "VALUES (%(sku)s, %(name)s, %(description)s, %(category)s, %(price_cents)s, %(stock)s)",
                products)
        finally:
            self.cursor.products_writable = False
        skus = [p["sku"] for p in products]
        self.cursor.execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE sku IN ({_marks(len(skus))})", skus)
        by_sku = {row["sku"]: row for row in self.cursor.fetchall()}
        rows = [by_sku[sku] for sku in skus]
        for row in rows:
            self.versions[row["id"]] = row["version"]
            self._full_rows[row["id"]] = row
            self._reindex.add(row["id"])
        return rows

    def update(self, ids: Iterable[int], assignments: str, params: Sequence = (), where: str = "",
               where_params: Sequence = (), reindex: bool = False) -> int:
        """`UPDATE products SET <assignments>, version + 1 ... WHERE id IN (ids) [AND <where>]`;
        the number of rows changed. `reindex` when searchable fields change."""
        ids = sorted(set(ids))
        sets = f"{assignments}, " if assignments else ""
        changed = self._write(
            f"UPDATE products SET {sets}version = version + 1, updated_at = CURRENT_TIMESTAMP(6) "
            f"WHERE id IN ({_marks(len(ids))})" + (f" AND {where}" if where else ""),
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
        if reindex:
            self._reindex.update(ids)
        return changed

    def compare_and_set(self, product_id: int, version: int, assignments: str, params: Sequence = (),
                        where: str = "", where_params: Sequence = ()) -> bool:
        """Change the row only if it is still at `version` (and `where` holds)."""
        changed = self._write(
            f"UPDATE products SET {assignments}, version = version + 1, updated_at = CURRENT_TIMESTAMP(6) "
            "WHERE id = %s AND version = %s" + (f" AND {where}" if where else ""),
            [*params, product_id, version, *where_params])
        if changed:
            self._full_rows.pop(product_id, None)
            self.versions[product_id] = version + 1
            self._unknown.discard(product_id)
        return bool(changed)

    def finish(self) -> None:
        """Before commit: re-index what needs it and read back the versions not known yet."""
        if self._reindex and self._search_index is not None:
            missing = self._reindex - set(self._full_rows)
            if missing:
                self.select(missing)
            self._search_index.index(self.cursor, [self._full_rows[pid] for pid in sorted(self._reindex)
                                                   if pid in self._full_rows])
        if self._unknown:
            self.select(self._unknown, "id")


class WriteSession:
    """Transactions whose committed product versions are invalidated together at the end."""

    def __init__(self, db, search_index: Optional[SearchIndex]):
        self._db = db
        self._search_index = search_index
        self.versions: dict[int, int] = {}

    def run(self, work: Callable[[ProductTransaction], T]) -> T:
        """`work(tx)` in one transaction; its product versions count once it has committed."""
        committed: list[ProductTransaction] = []

        def attempt(cur):
            tx = ProductTransaction(cur, self._search_index)
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

    def __init__(self, db, invalidator: CacheInvalidator, search_index: Optional[SearchIndex]):
        self.db = db
        self.invalidator = invalidator
        self.search_index = search_index

    @contextmanager
    def session(self, enqueue: bool = True) -> Iterator[WriteSession]:
        """`enqueue=False` (the order hot path): the invalidation queue is used only
        if Redis did not take the invalidation at once."""
        session = WriteSession(self.db, self.search_index)
        try:
            yield session
        finally:
            if session.versions:
                self.invalidator.after_commit(session.versions, search=True, enqueue=enqueue)

    def run(self, work: Callable[[ProductTransaction], T], enqueue: bool = True) -> T:
        """One transaction in a session of its own (a single admin write)."""
        with self.session(enqueue) as session:
            return session.run(work)

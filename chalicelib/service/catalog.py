"""The catalog service: product writes through the unit of work, and cached
reads (one loader per hot key; X-Cache HIT / MISS / BYPASS / STALE).

A cache miss reads from the MySQL reader when there is one (adapters/readers.py).
The copy it gets is cached only if the version fence takes it; one the fence
refuses is older than a committed write (an admin's change the reader has not
applied yet), so the product is read again from the writer, as is one the
reader does not have yet (just created). With the cache down there is no fence
to ask: reads go to the writer."""
import time

from chalicelib.domain.errors import (
    CacheUnavailable,
    DuplicateKey,
    DuplicateSku,
    InsufficientStock,
    ProductNotFound,
    ServiceUnavailable,
    ValidationError,
    VersionConflict,
)
from chalicelib.domain.products import (
    MAX_STOCK,
    to_api,
    validate_delta,
    validate_new_product,
    validate_patch,
)
from chalicelib.domain.validation import MAX_ECHO_NAMES
from chalicelib.service.ports import ProductReads, ProductTransaction, ProductWrites


class Catalog:
    def __init__(self, reads: ProductReads, cache, writes: ProductWrites, lagging: ProductReads = None):
        self.reads = reads        # on the writer
        self.lagging = lagging    # on the MySQL reader while it is usable (adapters/readers.py); None: no reader
        self.cache = cache
        self.writes = writes

    # --- writes -------------------------------------------------------------

    @staticmethod
    def _locked_row(tx: ProductTransaction, product_id):
        row = tx.select([product_id], lock=True).get(product_id)
        if row is None:
            raise ProductNotFound(f"Product {product_id} does not exist.", product_id=product_id)
        return row

    def create(self, body):
        product = validate_new_product(body)
        return self.create_many([product], validated=True)[0]

    def create_many(self, products, validated=False):
        """All or nothing; returns the created products in request order."""
        if not validated:
            products = [validate_new_product(p, f"products[{i}]") for i, p in enumerate(products)]
        skus = [p["sku"] for p in products]
        if len({sku.casefold() for sku in skus}) != len(skus):  # skus are unique case-insensitively
            seen, dupes = set(), []
            for sku in skus:
                if sku.casefold() in seen:
                    dupes.append(sku)
                seen.add(sku.casefold())
            raise DuplicateSku("The same sku appears more than once in the request.", details={"skus": sorted(set(dupes))})

        def work(tx: ProductTransaction):
            try:
                return tx.insert(products)
            except DuplicateKey:
                # Name the taken skus ourselves: MySQL's text names its index and quotes the row.
                existing = sorted(tx.taken_skus(skus))[:MAX_ECHO_NAMES]
                if not existing:  # two skus of the request that only the collation finds equal
                    message = "Two skus in the request are the same when compared case- and accent-insensitively."
                else:
                    message = f"A product with sku {', '.join(existing)} already exists."
                raise DuplicateSku(message, details={"skus": existing, "error": message}) from None

        return [to_api(row) for row in self.writes.run(work)]

    def update(self, product_id, body):
        changes, expected_version = validate_patch(body)

        def work(tx: ProductTransaction):
            row = self._locked_row(tx, product_id)
            if expected_version is not None and row["version"] != expected_version:
                raise VersionConflict(
                    f"Product {product_id} is at version {row['version']}, not {expected_version}.",
                    product_id=product_id, current_version=row["version"],
                )
            tx.update([product_id], ", ".join(f"{column} = %s" for column in changes), list(changes.values()),
                      reindex=True)
            return tx.select([product_id])[product_id]

        return to_api(self.writes.run(work))

    def adjust_stock(self, product_id, body):
        delta = validate_delta(body)

        def work(tx: ProductTransaction):
            # A restock may not take stock above MAX_STOCK; a decrease is always allowed down to zero
            # (stock above the bound, returned by cancels, can still be taken down).
            changed = tx.update([product_id], "stock = stock + %s", [delta],
                                where="stock + %s >= 0 AND (%s < 0 OR stock + %s <= %s)",
                                where_params=[delta, delta, delta, MAX_STOCK], stock_delta={product_id: delta})
            row = tx.select([product_id]).get(product_id)
            if row is None:
                raise ProductNotFound(f"Product {product_id} does not exist.", product_id=product_id)
            if not changed and delta > 0:
                raise ValidationError(
                    f"Product {product_id} has {row['stock']} in stock; a change of {delta} would take it above "
                    f"the maximum of {MAX_STOCK}.", details={"field": "delta", "max_stock": MAX_STOCK},
                    product_id=product_id)
            if not changed:
                raise InsufficientStock(
                    f"Product {product_id} has {row['stock']} in stock; a change of {delta} would go below zero.",
                    product_id=product_id,
                )
            return row

        return to_api(self.writes.run(work))

    # --- reads --------------------------------------------------------------

    def load(self, product_id):
        """The product as the writer has it."""
        rows = self.reads.rows([product_id])
        if not rows:
            raise ProductNotFound(f"Product {product_id} does not exist.", product_id=product_id)
        return to_api(rows[0])

    def _read_rows(self, product_ids):
        """({id: row} of those that exist, whether the reader answered): one read, on the reader if usable."""
        if self.lagging is None:
            rows, on_reader = self.reads.rows(product_ids), False
        else:
            rows, on_reader = self.lagging.rows(product_ids), self.lagging.answered()
        return {row["id"]: row for row in rows}, on_reader

    def _load_and_cache(self, product_ids):
        """{id: product} of those of `product_ids` that exist, each cached unless the fence refuses
        it; a reader's copy the fence refuses, or a product the reader lacks, comes from the writer."""
        rows, on_reader = self._read_rows(product_ids)
        found, again = {}, [pid for pid in product_ids if pid not in rows] if on_reader else []
        for pid, row in rows.items():
            product = found[pid] = to_api(row)
            if not self.cache.put(product) and on_reader:
                again.append(pid)
        if again:
            self.lagging.fell_back("stale")
            for row in self.reads.rows(again):
                product = found[row["id"]] = to_api(row)
                self.cache.put(product)
        return found

    def get(self, product_id):
        """(product, X-Cache value)."""
        try:
            cached, fresh = self.cache.get(product_id)
        except CacheUnavailable:
            return self.load(product_id), "BYPASS"
        if cached is not None and fresh:
            return cached, "HIT"
        try:
            return self._load_through_cache(product_id), "MISS"
        except ServiceUnavailable:
            if cached is not None:
                return cached, "STALE"
            raise

    def get_many(self, product_ids):
        """{id: product} for those of `product_ids` that exist: the fresh cached
        copies (version-fenced, so never older than a committed write) and the
        rest in one MySQL read, which is then cached."""
        try:
            found = self.cache.get_many(product_ids)
        except CacheUnavailable:
            found, cache_up = {}, False
        else:
            cache_up = True
        missing = [pid for pid in product_ids if pid not in found]
        if missing and cache_up:
            try:
                found.update(self._load_and_cache(missing))
                return found
            except CacheUnavailable:
                pass   # down since the lookup: no fence to ask, so the writer answers
        if missing:
            found.update({row["id"]: to_api(row) for row in self.reads.rows(missing)})
        return found

    def _load_through_cache(self, product_id, wait_seconds=0.2):
        """One loader per hot key: others wait briefly for its copy, then load themselves."""
        try:
            leader = self.cache.acquire_loader(product_id)
        except CacheUnavailable:
            return self.load(product_id)
        if not leader:
            deadline = time.monotonic() + wait_seconds
            while time.monotonic() < deadline:
                time.sleep(0.01)
                try:
                    cached, fresh = self.cache.get(product_id)
                except CacheUnavailable:
                    break
                if cached is not None and fresh:
                    return cached
        try:
            try:
                product = self._load_and_cache([product_id]).get(product_id)
            except CacheUnavailable:
                return self.load(product_id)
            if product is None:
                raise ProductNotFound(f"Product {product_id} does not exist.", product_id=product_id)
            return product
        finally:
            if leader:
                try:
                    self.cache.release_loader(product_id)
                except CacheUnavailable:
                    pass

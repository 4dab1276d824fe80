"""A flash sale's life (docs/design.md section 10): an admin starts, reads and
stops a product's sale (MySQL's flash_sales row and the gate in Redis), and
reconcile compares the gate with MySQL and repairs it: a sale Redis lost is
rebuilt, a gate that offers more than MySQL can still sell is lowered (the
scheduled `flash_reconcile` function and `make flash-reconcile`)."""
import time
import uuid

from chalicelib.domain.errors import (
    CacheUnavailable,
    DuplicateKey,
    SaleConflict,
    SaleNotFound,
    ServiceUnavailable,
    StoreFull,
)
from chalicelib.domain.products import iso
from chalicelib.domain.sale_mode import check_offer, holdings, validate_sale, written_reservations
from chalicelib.ops.logs import logger
from chalicelib.service.flash_sales import SaleParts, report_swept

# Reservation records a rebuild writes per Redis call: a big sale's are not one long script.
RECORDS_PER_CALL = 500


class FlashSaleAdmin(SaleParts):
    def _to_api(self, row, live=None):
        sale = {"product_id": row["product_id"], "sale_id": row["sale_id"], "sale_stock": row["sale_stock"],
                "per_customer_limit": row["per_customer_limit"], "on_sale": True,
                "started_at": iso(row["started_at"])}
        # What the gate still offers; null when Redis cannot say.
        sale["remaining"] = live["remaining"] if live and live.get("sale_id") == row["sale_id"] else None
        return sale

    def start(self, product_id, body):
        """Put a product on sale: its sale stock may not exceed its stock now.
        MySQL records the sale first (so the API can refuse sale orders while Redis
        is down), then the gate opens; if Redis refuses, the record is removed."""
        sale_stock, limit = validate_sale(body)
        sale_id = uuid.uuid4().hex

        try:
            self.records.add(product_id, sale_id, sale_stock, limit,
                             lambda product: check_offer(product_id, product, sale_stock))
        except DuplicateKey:
            raise SaleConflict(f"Product {product_id} is already on sale; stop that sale first.",
                               product_id=product_id) from None
        self.on_record.changed()
        try:
            self.gate.start(product_id, sale_id, sale_stock, limit)
        except CacheUnavailable as exc:
            self.records.remove(product_id, sale_id)
            why = "The flash-sale store is full" if isinstance(exc, StoreFull) else "Redis is unavailable"
            raise ServiceUnavailable(f"{why}; the sale was not started.") from exc
        return self.get(product_id)

    def get(self, product_id):
        row = self.records.get(product_id)
        if row is None:
            raise SaleNotFound(f"Product {product_id} is not on sale.", product_id=product_id)
        try:
            live = self.gate.sale(product_id)
        except CacheUnavailable:
            live = None
        return self._to_api(row, live)

    def stop(self, product_id):
        """Close the gate first (no more admissions), then the record. Reservations
        already accepted are still written by the consumer."""
        sale = self.get(product_id)
        try:
            self.gate.stop(product_id)
        except CacheUnavailable as exc:
            raise ServiceUnavailable("Redis is unavailable; the sale was not stopped.") from exc
        self.records.remove(product_id)
        self.on_record.changed()
        return {**sale, "on_sale": False, "remaining": None}

    def reconcile_all(self):
        """Reconcile every running sale (the scheduled function and `make flash-reconcile`);
        one sale that fails is reported and the others go on."""
        found = []
        for product_id in self.records.product_ids():
            try:
                found.append(self.reconcile(product_id))
            except SaleNotFound:
                continue  # taken off sale since the list was read
        return found

    def reconcile(self, product_id):
        """Compare the gate with MySQL and repair it: a sale Redis lost (restart,
        failover) is rebuilt from MySQL (units sold in the sale, each customer's
        units) once the flash queue is empty; a gate that offers more than MySQL
        can still sell is lowered, and with nothing on its way it is set to
        exactly that. Expired leases are swept first. Returns what it found and did."""
        row = self.records.get(product_id)
        if row is None:
            raise SaleNotFound(f"Product {product_id} is not on sale.", product_id=product_id)
        swept = self.gate.sweep()
        report_swept(self.emit, swept)
        # Read before the snapshot: if its seq still holds when we write, nothing moved the sale in between.
        live = self.gate.sale(product_id)
        sale_id = row["sale_id"]
        # Nothing accepted is on its way when the queue is empty and no lease is open. Checked before the
        # snapshot: an order the consumer writes after the snapshot was leased or queued at this check
        # (it leaves the queue only after its commit). Checked after, it could be written and deleted in
        # between, missing from both, and its units offered again. Anything admitted after `live` was read
        # moves the sale's seq, and the resync below then refuses.
        try:
            depth = self.publisher.depth(self.queue_name)
        except Exception:  # SQS cannot say: assume something is on its way
            depth = None
        quiet = depth == 0 and self.gate.leases() == 0

        # One snapshot: the stock, the sale's orders and the newest order id agree.
        stock, watermark, lines = self.records.snapshot(product_id, sale_id)
        held, returned = holdings(lines)
        sold = sum(held.values())
        # What the gate may offer at most: reservations on their way (not yet written) come on top of `sold`.
        most = max(0, min(row["sale_stock"] - sold, stock))
        report = {"product_id": product_id, "sale_id": sale_id, "sale_stock": row["sale_stock"],
                  "sold": sold, "returned_orders": len(returned), "mysql_stock": stock, "swept": swept,
                  "queue_quiet": quiet}
        if live is None or live.get("sale_id") != sale_id:
            # Rebuild once nothing accepted can still arrive, or its units would be offered twice: the queue
            # empty, no lease open, and one lease since the loss was found (the leases of reservations an API
            # process was still handing to SQS went with Redis; the lease bounds how long that may take).
            waited = time.time() * 1000 - self.gate.lost_since(product_id)
            if not quiet or waited < self.gate.lease_ms:
                return {**report, "action": "waiting", "remaining": None}
            # The records of its written orders first, as the sale then reopens: Redis lost them with it, and
            # an order sent again must replay the order it became, not be admitted anew or refused as sold out.
            records = written_reservations(lines, self.gate.reservation_key)
            for start in range(0, len(records), RECORDS_PER_CALL):
                self.gate.settle(records[start:start + RECORDS_PER_CALL])
            self.gate.restore(product_id, sale_id, row["sale_stock"], row["per_customer_limit"], most, watermark,
                              held, [order_id for order_id, _, _ in returned])
            logger.warning("flash sale rebuilt from MySQL", extra=report)
            self.emit("FlashSalesRebuilt", 1)
            return {**report, "action": "rebuilt", "remaining_before": None, "remaining": most}
        if quiet:
            # Nothing on its way: the gate must offer exactly `most`; a cancel whose give-back never
            # reached Redis is counted here, once (also in its customer's units).
            before = self.gate.resync(product_id, sale_id, live.get("seq", 0), most, watermark, returned)
            if before is not None:
                report.update(remaining_before=before, remaining=most, in_flight=most - before)
                if before != most:
                    logger.warning("flash sale gate set to what MySQL can still sell", extra=report)
                    return {**report, "action": "repaired"}
                return {**report, "action": "ok"}
            # Moved meanwhile: not quiet after all; only lower it.
        removed = self.gate.cap(product_id, sale_id, most, live)
        if removed is None:
            # A cancel gave units back after the snapshot: `most` may not count them. The next reconcile decides.
            return {**report, "action": "moved", "remaining": None}
        remaining = most if removed else live["remaining"]
        # Units taken in Redis and not (yet) in MySQL: reservations on their way.
        report.update(remaining_before=live["remaining"], remaining=remaining, in_flight=most - live["remaining"])
        if removed:
            logger.warning("flash sale gate lowered to what MySQL can still sell", extra=report)
            return {**report, "action": "repaired"}
        return {**report, "action": "ok"}


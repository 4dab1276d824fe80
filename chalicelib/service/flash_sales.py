"""Flash sales (docs/design.md section 10): sale mode per product, admission
through the Redis gate, the hand-off through SQS, and the coalescing writer.

A sync order whose products are on sale never opens a MySQL transaction in
the API: one Lua call (adapters/flash_gate.py) accepts it (units taken in
Redis, reservation leased) or refuses it; the accepted reservations of a
batch go to the flash-order queue in one SendMessageBatch; the consumer
(`FlashWriter`) writes a whole SQS batch in one transaction: the product rows
locked once, each reservation decided in message order against MySQL's own
stock, one guarded UPDATE for every product, multi-row inserts, one commit.
MySQL's guard has the last word: what Redis admitted beyond MySQL's stock
fails INSUFFICIENT_STOCK, never oversells.
"""
import itertools
import json
import logging
import time
import uuid
from collections import Counter

import pymysql

from chalicelib.adapters.cache import CacheUnavailable, StoreFull
from chalicelib.adapters.db import DUPLICATE_KEY
from chalicelib.adapters.flash_gate import FlashGate, Settlement, customer_key, owner_key
from chalicelib.adapters.queues import CALL_SECONDS, SQS_BATCH
from chalicelib.domain import flash_message
from chalicelib.domain import order_lifecycle
from chalicelib.domain import validation as v
from chalicelib.domain.errors import (
    IdempotencyConflict,
    InsufficientStock,
    ProductNotFound,
    ReservationNotFound,
    SaleConflict,
    SaleLimitExceeded,
    SaleNotFound,
    ServiceUnavailable,
    ShopError,
    ValidationError,
)
from chalicelib.domain.flash_message import Reservation
from chalicelib.domain.orders import OrderRequest, OrderResult, failed
from chalicelib.domain.products import iso
from chalicelib.domain.sales import validate_sale
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit, emit_values
from chalicelib.service.unit_of_work import ProductTransaction, ProductWrites

log = logging.getLogger(__name__)

_ERRORS = {cls.code: cls for cls in (InsufficientStock, ProductNotFound, IdempotencyConflict, SaleLimitExceeded,
                                     ServiceUnavailable)}


SALES_REFRESH_SECONDS = 1.0  # how stale a process's copy of MySQL's sale list may be


# A confirm Redis refused is tried again after these pauses (the last repeats; past the Redis
# breaker's 1 s window) until this share of the first reservation's lease has gone: well before
# the lease ends, and inside API Gateway's 29 s with the default 30 s lease.
CONFIRM_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.0)
CONFIRM_WITHIN_LEASE = 0.8


class FlashSales:
    def __init__(self, db, gate: FlashGate, writes: ProductWrites, publisher, queue_name, metrics=emit):
        self._sales_cache = None  # (monotonic time, product ids on sale in MySQL)
        self.db = db
        self.gate = gate
        self.writes = writes
        self.publisher = publisher
        self.queue_name = queue_name
        self.emit = metrics

    # --- sale mode (admin) --------------------------------------------------

    def _to_api(self, row, live=None):
        sale = {"product_id": row["product_id"], "sale_id": row["sale_id"], "sale_stock": row["sale_stock"],
                "per_customer_limit": row["per_customer_limit"], "on_sale": True,
                "started_at": iso(row["started_at"])}
        # What the gate still offers; null when Redis cannot say.
        sale["remaining"] = live["remaining"] if live and live.get("sale_id") == row["sale_id"] else None
        return sale

    def _row(self, product_id):
        rows = self.db.query("SELECT product_id, sale_id, sale_stock, per_customer_limit, started_at "
                             "FROM flash_sales WHERE product_id = %s", (product_id,))
        return rows[0] if rows else None

    def start(self, product_id, body):
        """Put a product on sale: its sale stock may not exceed its stock now.
        MySQL records the sale first (so the API can refuse sale orders while Redis
        is down), then the gate opens; if Redis refuses, the record is removed."""
        sale_stock, limit = validate_sale(body)
        sale_id = uuid.uuid4().hex

        def work(cur):
            cur.execute("SELECT id, stock, status FROM products WHERE id = %s LOCK IN SHARE MODE", (product_id,))
            product = cur.fetchone()
            if product is None:
                raise ProductNotFound(f"Product {product_id} does not exist.", product_id=product_id)
            if product["stock"] < sale_stock:
                raise InsufficientStock(f"Product {product_id} has {product['stock']} in stock; a sale of "
                                        f"{sale_stock} cannot be offered.", product_id=product_id)
            try:
                cur.execute("INSERT INTO flash_sales (product_id, sale_id, sale_stock, per_customer_limit) "
                            "VALUES (%s, %s, %s, %s)", (product_id, sale_id, sale_stock, limit))
            except pymysql.err.IntegrityError:
                raise SaleConflict(f"Product {product_id} is already on sale; stop that sale first.",
                                   product_id=product_id) from None

        self.db.run(work)
        self._sales_cache = None
        try:
            self.gate.start(product_id, sale_id, sale_stock, limit)
        except CacheUnavailable as exc:
            self.db.run(lambda cur: cur.execute("DELETE FROM flash_sales WHERE product_id = %s AND sale_id = %s",
                                                (product_id, sale_id)))
            why = "The flash-sale store is full" if isinstance(exc, StoreFull) else "Redis is unavailable"
            raise ServiceUnavailable(f"{why}; the sale was not started.") from exc
        return self.get(product_id)

    def get(self, product_id):
        row = self._row(product_id)
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
        self.db.run(lambda cur: cur.execute("DELETE FROM flash_sales WHERE product_id = %s", (product_id,)))
        self._sales_cache = None
        return {**sale, "on_sale": False, "remaining": None}

    def reconcile_all(self):
        """Reconcile every running sale (the scheduled function and `make flash-reconcile`);
        one sale that fails is reported and the others go on."""
        found = []
        for row in self.db.query("SELECT product_id FROM flash_sales ORDER BY product_id"):
            try:
                found.append(self.reconcile(row["product_id"]))
            except SaleNotFound:
                continue  # taken off sale since the list was read
        return found

    def reconcile(self, product_id):
        """Compare the gate with MySQL and repair it: a sale Redis lost (restart,
        failover) is rebuilt from MySQL (units sold in the sale, each customer's
        units) once the flash queue is empty; a gate that offers more than MySQL
        can still sell is lowered, and with nothing on its way it is set to
        exactly that. Expired leases are swept first. Returns what it found and did."""
        row = self._row(product_id)
        if row is None:
            raise SaleNotFound(f"Product {product_id} is not on sale.", product_id=product_id)
        swept = self.gate.sweep()
        self._report_swept(swept)
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

        def read(cur):
            # One snapshot: the stock, the sale's orders and the newest order id agree.
            cur.execute("SELECT stock FROM products WHERE id = %s", (product_id,))
            stock = cur.fetchone()["stock"]
            cur.execute("SELECT COALESCE(MAX(id), 0) AS watermark FROM orders")
            watermark = int(cur.fetchone()["watermark"])
            cur.execute("SELECT o.client, o.customer_id, o.user_id, o.id, o.status, i.quantity FROM order_items i "
                        "JOIN orders o ON o.id = i.order_id WHERE i.flash_sale_id = %s AND i.product_id = %s",
                        (sale_id, product_id))
            held, returned = {}, []
            for r in cur.fetchall():
                customer = customer_key(r["client"], r["customer_id"], r["user_id"])
                if r["status"] == "cancelled":  # cancelled or expired: its units went back to the sale
                    returned.append((r["id"], customer, int(r["quantity"])))
                    continue
                held[customer] = held.get(customer, 0) + int(r["quantity"])
            return stock, watermark, held, returned

        stock, watermark, held, returned = self.db.run(read)
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

    def _report_swept(self, swept):
        """Expired leases given back: each one a reservation whose hand-off never
        confirmed (a process that died before SQS, or a confirm Redis kept refusing,
        whose message the consumer will then take the units again for)."""
        if swept:
            logger.warning("expired flash leases gave their units back", extra={"swept": swept})
            self.emit("FlashLeasesSwept", swept)

    def give_back(self, order, lines):
        """After a cancel or expiry committed (MySQL has its stock back): its sale lines'
        units back to the sale they were sold in, if it still runs, once per order. If
        Redis cannot take them now, reconcile does (it counts the order as returned)."""
        sale_lines = [(line.product_id, line.quantity, line.sale_id) for line in lines if line.sale_id]
        if not sale_lines:
            return 0
        try:
            units = self.gate.return_units(order.id, customer_key(order.client, order.customer_id, order.user_id),
                                           sale_lines)
        except CacheUnavailable:
            logger.warning("a closed sale order's units did not reach the gate; reconcile returns them",
                           extra={"order_id": order.id})
            return 0
        if units:
            self.emit("FlashUnitsReturned", units)
        return units

    # --- admission (sync orders) --------------------------------------------

    def _sales_in_mysql(self):
        """(product ids on sale per MySQL, read at most once a second per process;
        the ServiceUnavailable if MySQL could not be read)."""
        cached = self._sales_cache
        if cached is not None and time.monotonic() - cached[0] < SALES_REFRESH_SECONDS:
            return cached[1], None
        try:
            ids = {row["product_id"] for row in self.db.query("SELECT product_id FROM flash_sales")}
        except ServiceUnavailable as exc:
            # Sale orders need no MySQL: go on with what we knew (and what Redis says).
            return (cached[1] if cached is not None else set()), exc
        self._sales_cache = (time.monotonic(), ids)
        return ids, None

    def sale_products(self, product_ids):
        """(products on sale, whether the gate can be used, MySQL's outage if it could
        not be read). MySQL's record counts too, so a sale that Redis lost (restart,
        failover) or cannot answer for is refused (retryable) instead of slipping past the gate."""
        ids = set(product_ids)
        recorded, mysql_down = self._sales_in_mysql()
        recorded &= ids
        try:
            return self.gate.on_sale(ids) | recorded, True, mysql_down
        except CacheUnavailable:
            return recorded, False, mysql_down

    def take_sale_orders(self, orders, batch_id=None):
        """Split `orders` [(key, order)]: the sale orders are admitted through the gate
        and handed to SQS here; returns ({key: OrderResult} of sale orders, the other
        orders, the MySQL outage met on the way or None: the caller need not pay for it twice).
        Raises ServiceUnavailable (nothing taken) when the hand-off fails. `batch_id`:
        the async batch the orders came in (their rows record it)."""
        requests = [o for _, o in orders if isinstance(o, OrderRequest)]
        on_sale, gate_up, mysql_down = self.sale_products({pid for o in requests for pid in o.quantities})
        if not on_sale:
            return {}, orders, mysql_down
        results, rest, admitting = {}, [], []
        for key, order in orders:
            if not isinstance(order, OrderRequest) or not (set(order.quantities) & on_sale):
                rest.append((key, order))
                continue
            if not set(order.quantities) <= on_sale:
                results[key] = failed(order.client_order_id, ValidationError(
                    f"Products {sorted(set(order.quantities) & on_sale)} are on a flash sale: an order for them may "
                    f"hold only flash-sale products (send products {sorted(set(order.quantities) - on_sale)} "
                    "in another order).", details={"field": "items"}))
                continue
            if not gate_up:
                results[key] = _gate_down(order)
                continue
            admitting.append((key, order))
        accepted, replayed = [], set()
        owners = [owner_key(o.client, o.customer_id, o.user_id, o.client_order_id) for _, o in admitting]
        try:
            admissions = self.gate.admit_many([
                (owner, customer_key(o.client, o.customer_id, o.user_id), o.request_hash, o.quantities)
                for owner, (_, o) in zip(owners, admitting)])
        except StoreFull as exc:
            # Nothing was admitted; a per-order "unavailable" would read like Redis being down.
            raise ServiceUnavailable("The flash-sale store is full; the sale orders were not accepted and no "
                                     "order of the batch was placed. Retry shortly.",
                                     details={"reason": "state_store_full"}) from exc
        except CacheUnavailable:
            admissions = [None] * len(admitting)
        self._report_swept(sum(a.swept for a in admissions if a))
        # A replay answers from its recorded reservation: all of the batch's read in one round trip.
        replay_keys = [self.gate.reservation_key(owner) for owner, a in zip(owners, admissions)
                       if a and a.outcome == "REPLAY"]
        try:
            records = dict(zip(replay_keys, self.gate.records(replay_keys)))
        except CacheUnavailable:
            records = {}
        for (key, order), owner, admission in zip(admitting, owners, admissions):
            record = records.get(self.gate.reservation_key(owner))
            if admission is None or (admission.outcome == "REPLAY" and record is None):
                results[key] = _gate_down(order)   # Redis did not answer
                continue
            results[key] = self._answer(order, admission, record, accepted, replayed, batch_id)
        self._hand_off(accepted, replayed)
        return results, rest, mysql_down

    def _answer(self, order: OrderRequest, admission, record, accepted, replayed, batch_id=None):
        """The result of one order's admission (`record`: a replay's reservation record, read
        after the admission); an accepted one (or a replay of one that may never have been
        handed off) joins `accepted`."""
        coid = order.client_order_id

        def hand_off(lines, admitted_at):
            accepted.append(Reservation(admission.rid, order.client, order.customer_id, order.user_id, coid,
                                        order.request_hash, lines, admitted_at, batch_id, order.contact_email))

        if admission.outcome == "ACCEPTED":
            hand_off(admission.lines, admission.admitted_at)
            self.emit("FlashAdmitted", 1)
            return OrderResult(coid, status="pending", reservation_id=admission.rid)
        if admission.outcome == "REPLAY":
            if record.get("rid") != admission.rid:
                # Gone since the Lua call (the first request's hand-off failed and gave it back, its lease
                # expired, Redis lost it): nothing is held for this order now, so the client must try again.
                return failed(coid, ServiceUnavailable("This order's reservation was just given back; retry it.",
                                                       reservation_id=admission.rid))
            if record.get("state") == "leased":
                # Still leased: the first request may never hand it off (its caller gave up after Redis had
                # admitted it, its process died). Handed off again, "pending" holds: the consumer writes a
                # reservation once, however many of its messages arrive.
                # Its lease counts from the first admission (records older than the field: from now).
                hand_off(self.gate.lines(record["lines"]), int(record.get("admitted_ms", time.time() * 1000)) / 1000)
                replayed.add(admission.rid)
            return _result(coid, record, duplicate=True)
        if admission.outcome == "CONFLICT":
            return OrderResult(coid, error=IdempotencyConflict(
                f"client_order_id {coid!r} was already used by user {order.user_id} for different lines."),
                reservation_id=admission.rid)
        self.emit("FlashRefused", 1, reason=admission.outcome)
        pid = admission.product_id
        if admission.outcome == "SOLD_OUT":
            return failed(coid, InsufficientStock(
                f"Product {pid} has {admission.remaining} left in its flash sale; "
                f"{order.quantities[pid]} requested.", product_id=pid))
        if admission.outcome == "LIMIT":
            return failed(coid, SaleLimitExceeded(
                f"Product {pid} sells at most {admission.limit} per customer in this sale; this customer holds "
                f"{admission.held} and asked for {order.quantities[pid]}.", product_id=pid))
        # The sale ended between the batch's lookup and this order, or Redis lost it and it awaits its rebuild.
        return failed(coid, ServiceUnavailable(f"The flash sale of product {pid} is changing; retry shortly.",
                                               product_id=pid))

    def _hand_off(self, accepted, replayed=frozenset()):
        """One SendMessageBatch for the batch's accepted reservations. If SQS refuses,
        every new one is given back in Redis and the request answers 503: nothing
        half-taken. (A replayed one stays leased: its first request may have sent it.)

        The send must end inside the reservations' lease: once it is out, a sweep gives
        their units back, and a sale Redis lost is rebuilt one lease after, from MySQL
        and the queue, so a message still on its way would have its units offered twice
        (a buyer told "accepted" would later get INSUFFICIENT_STOCK). A hand-off whose
        AWS calls, at their bound, could end after the lease (a process stalled since
        the admission) gives the new units back and answers 503 instead of sending."""
        if not accepted:
            return
        bodies = flash_message.pack(accepted, time.time())
        handles = [(self.gate.reservation_key(owner_key(r.client, r.customer_id, r.user_id, r.client_order_id)),
                    r.rid) for r in accepted]
        lease = self.gate.lease_ms / 1000
        admitted = min(r.accepted_at for r in accepted)
        try:
            self.publisher.queue_url(self.queue_name)  # looked up once per process: the bound below is the sends'
            too_late = time.time() + -(-len(bodies) // SQS_BATCH) * CALL_SECONDS > admitted + lease
            if not too_late:
                self.publisher.send_batch(self.queue_name, bodies)
        except Exception as exc:
            self._give_back(handles, replayed, "flash-order hand-off failed", f"{type(exc).__name__}: {exc}")
            raise ServiceUnavailable("The flash-order queue is unavailable; the sale orders were not accepted. "
                                     "Retry shortly.") from exc
        if too_late:
            self.emit("FlashHandOffsTooLate", len(accepted))
            self._give_back(handles, replayed, "flash-order hand-off too late for its lease",
                            f"{time.time() - admitted:.1f} s after the admission")
            raise ServiceUnavailable("The sale orders waited too long to be queued and were not accepted. "
                                     "Retry shortly.")
        # The messages are on SQS now. An unconfirmed lease would give their units back (the next
        # admissions sweep expired leases) and another buyer could be sold them before the consumer
        # takes them again: that buyer's order would then fail. So a confirm that Redis refuses
        # (a blip, a busy pool, the breaker) is tried again until the first lease is near its end.
        deadline = admitted + CONFIRM_WITHIN_LEASE * lease
        for attempt in itertools.count():
            try:
                self.gate.confirm(handles)
                return
            except CacheUnavailable:
                pause = CONFIRM_PAUSES[min(attempt, len(CONFIRM_PAUSES) - 1)]
                if time.time() + pause > deadline:
                    log.warning("could not confirm %d queued reservation(s); their leases will expire and the "
                                "consumer takes their units again when it writes", len(handles))
                    self.emit("FlashConfirmsFailed", len(handles))
                    return
                time.sleep(pause)

    def _give_back(self, handles, replayed, what, why):
        """A hand-off that sent nothing: its new reservations' units back (a replayed one stays
        leased: its first request may have sent it)."""
        logger.warning(f"{what}; giving the reservations back", extra={"reservations": len(handles), "error": why})
        try:
            self.gate.release([h for h in handles if h[1] not in replayed])
        except CacheUnavailable:
            log.warning("could not give %d reservation(s) back; their leases will expire", len(handles))

    # --- polling ------------------------------------------------------------

    def reservation(self, rid, owner=None):
        """A reservation's state for its owner: pending until written, then created or failed."""
        if not (isinstance(rid, str) and len(rid) == 32 and all(c in "0123456789abcdef" for c in rid)):
            raise ReservationNotFound(f"Reservation {v.echo(str(rid), 64)} does not exist.",
                                      reservation_id=v.echo(str(rid), 64))
        try:
            record = self.gate.lookup(rid)
        except CacheUnavailable:
            record = None
        if record is None:
            # Redis lost it (or it expired): the order row, if one was written, still says.
            rows = self.db.query("SELECT id, client, customer_id, user_id, client_order_id, total_cents, status "
                                 "FROM orders WHERE flash_reservation = %s", (rid,))
            if not rows or (owner is not None and not owner.owns(rows[0]["client"], rows[0]["customer_id"])):
                raise ReservationNotFound(f"Reservation {rid} does not exist.", reservation_id=rid)
            row = rows[0]
            return {"reservation_id": rid, "client_order_id": row["client_order_id"], "user_id": row["user_id"],
                    "status": "created", "order_id": row["id"], "total_cents": row["total_cents"]}
        client, customer_id, user_id, coid = record["key"][len(self.gate.reservation_key("")):].split("|", 3)
        if owner is not None and not owner.owns(client, int(customer_id)):
            raise ReservationNotFound(f"Reservation {rid} does not exist.", reservation_id=rid)
        body = {"reservation_id": rid, "client_order_id": coid, "user_id": int(user_id)}
        return {**body, **{k: val for k, val in _result(coid, record).to_api().items()
                           if k in ("status", "order_id", "total_cents", "error")}}


    def resolve(self, pending):
        """{rid: (client_order_id, duplicate)} of results recorded `pending` (async
        batches) -> {rid: the API result now} for those written or failed since."""
        try:
            records = self.gate.lookup_many(pending)
        except CacheUnavailable:
            records = {}
        final = {}
        for rid, record in records.items():
            coid, duplicate = pending[rid]
            if record.get("state") in ("created", "failed"):
                final[rid] = _result(coid, record, duplicate).to_api()
        unknown = [rid for rid in pending if rid not in records]
        if unknown:
            # Redis lost it (or it expired): the order row, if one was written, still says.
            rows = self.db.query("SELECT id, total_cents, flash_reservation FROM orders WHERE flash_reservation IN "
                                 f"({','.join(['%s'] * len(unknown))})", unknown)
            for row in rows:
                rid = row["flash_reservation"]
                coid, duplicate = pending[rid]
                final[rid] = OrderResult(coid, row["id"], row["total_cents"], duplicate=duplicate,
                                         reservation_id=rid).to_api()
        return final


def _gate_down(order):
    return failed(order.client_order_id, ServiceUnavailable("The flash-sale gate is unavailable; retry shortly."))


def _result(coid, record, duplicate=False):
    """The OrderResult a reservation record stands for."""
    rid, state = record.get("rid"), record.get("state")
    if state == "created":
        return OrderResult(coid, int(record["order_id"]), int(record["total_cents"]), duplicate=duplicate,
                           reservation_id=rid)
    if state == "failed":
        product_id, _, message = record.get("detail", "").partition("|")
        extra = {"product_id": int(product_id)} if product_id else {}
        return OrderResult(coid, error=_ERRORS.get(record.get("code"), ShopError)(message, **extra),
                           reservation_id=rid)
    return OrderResult(coid, status="pending", duplicate=duplicate, reservation_id=rid)


# --- the consumer ---------------------------------------------------------------


class _Decision:
    __slots__ = ("reservation", "outcome", "took", "give_back", "order_id", "total", "error", "duplicate_of")

    def __init__(self, reservation, outcome, took=False, give_back=True, order_id=0, total=0, error=None,
                 duplicate_of=None):
        self.reservation = reservation
        self.outcome = outcome
        self.took = took
        self.give_back = give_back
        self.order_id = order_id
        self.total = total
        self.error = error
        self.duplicate_of = duplicate_of


class _NeedsLockedWrite(Exception):
    """The optimistic write met a change it cannot settle without the product rows locked."""


class FlashWriter:
    """Writes the reservations of one SQS batch in one transaction and settles them in Redis.

    The write is optimistic first: it decides from the rows as read, writes the orders, and
    locks the sale's product row only in the closing guarded UPDATE. The row lock is then held
    for that statement and the commit, not for the whole batch's inserts, so the consumer's
    concurrent environments overlap their writes instead of queueing on the hot row. When
    stock, status or an order key moved under it (the guard falls short, a line would fail, a
    duplicate key), the batch is written again with the rows locked first, as MySQL decides."""

    def __init__(self, gate: FlashGate, writes: ProductWrites, metrics=emit, payment_window=0,
                 metric_values=emit_values, customer_payment_window=order_lifecycle.DEFAULT_CUSTOMER_PAYMENT_WINDOW):
        self.gate = gate
        self.writes = writes
        self.emit = metrics
        self.emit_values = metric_values
        # As for ordinary orders (OrderService): a trusted server's window (0: paid at creation), a customer's.
        self.payment_windows = order_lifecycle.PaymentWindows(int(payment_window), int(customer_payment_window))

    def write(self, reservations):
        """Every reservation written or failed; raises (the messages are retried) when
        MySQL or Redis is unavailable. Safe to repeat: a written reservation finds its
        own order by `flash_reservation`."""
        with self.writes.session(enqueue=False) as session:
            try:
                decisions = session.run(lambda tx: self._write(tx, reservations, self.payment_windows, lock=False))
            except (_NeedsLockedWrite, pymysql.err.IntegrityError) as exc:
                if isinstance(exc, pymysql.err.IntegrityError) and exc.args[0] != DUPLICATE_KEY:
                    raise
                self.emit("FlashWritesLocked", 1)
                decisions = session.run(lambda tx: self._write(tx, reservations, self.payment_windows, lock=True))
        settlements = [self._settlement(d) for d in decisions]
        try:
            self.gate.settle(settlements)
        except CacheUnavailable as exc:
            raise ServiceUnavailable("Redis is unavailable; the flash orders are written but not settled.") from exc
        # One metric line per kind for the batch (a thousand orders must not print a thousand lines).
        now = time.time()
        created = [d for d in decisions if d.outcome == "created" and d.took]
        if created:
            self.emit("OrdersCreated", len(created))
        self.emit_values("FlashLatency", [max(0.0, (now - d.reservation.accepted_at) * 1000) for d in created
                                          if d.reservation.accepted_at], unit="Milliseconds")
        for code, count in Counter(d.error.code for d in decisions if d.outcome == "failed").items():
            self.emit("OrdersFailed", count, code=code)
        return decisions

    def _settlement(self, d: _Decision):
        r = d.reservation
        detail = ""
        if d.error is not None:
            detail = f"{d.error.extra.get('product_id', '')}|{d.error.message}"
        return Settlement(self.gate.reservation_key(owner_key(r.client, r.customer_id, r.user_id, r.client_order_id)),
                          r.rid, r.packed_lines, customer_key(r.client, r.customer_id, r.user_id), d.outcome,
                          d.took, d.give_back, d.order_id, d.total, d.error.code if d.error else "", detail)

    @staticmethod
    def _write(tx: ProductTransaction, reservations, windows: order_lifecycle.PaymentWindows, lock=True):
        cur = tx.cursor
        product_ids = sorted({pid for r in reservations for pid in r.quantities})
        # With `lock`, the rows first (id order): the reads below then see every order committed before us.
        rows = tx.select(product_ids, "id, stock, low_stock_threshold, status, price_cents", lock=lock)
        keys = sorted({(r.client, r.customer_id, r.user_id, r.client_order_id) for r in reservations})
        cur.execute("SELECT id, client, customer_id, user_id, client_order_id, request_hash, total_cents, "
                    "flash_reservation FROM orders WHERE (client, customer_id, user_id, client_order_id) IN ("
                    + ",".join(["(%s, %s, %s, %s)"] * len(keys)) + ")", [x for k in keys for x in k])
        existing = {(o["client"], o["customer_id"], o["user_id"], o["client_order_id"]): o for o in cur.fetchall()}
        left = {pid: row["stock"] for pid, row in rows.items()}
        decisions, new, first_of_key = [], [], {}
        for r in reservations:
            key = (r.client, r.customer_id, r.user_id, r.client_order_id)
            found = existing.get(key)
            if found is not None:
                if found["flash_reservation"] == r.rid:  # written by an earlier delivery of this message
                    decisions.append(_Decision(r, "created", took=True, order_id=found["id"],
                                               total=found["total_cents"]))
                elif found["request_hash"] == r.request_hash:
                    decisions.append(_Decision(r, "created", order_id=found["id"], total=found["total_cents"]))
                else:
                    decisions.append(_Decision(r, "failed", error=IdempotencyConflict(
                        f"client_order_id {r.client_order_id!r} was already used by user {r.user_id} "
                        "for different lines.")))
                continue
            if key in first_of_key:  # the same key twice in this batch (a replay after a swept lease)
                decisions.append(_Decision(r, "created", duplicate_of=first_of_key[key]))
                continue
            decision = _decide(r, rows, left)
            if not lock and decision.outcome == "failed":
                raise _NeedsLockedWrite()  # the rows as read may be stale: only locked rows may fail a line
            decisions.append(decision)
            if decision.took:
                first_of_key[key] = decision
                new.append(decision)
        if new:
            window = {d.reservation.rid: windows.for_order(d.reservation.customer_id) for d in new}
            state = {rid: order_lifecycle.PENDING if seconds else order_lifecycle.PAID
                     for rid, seconds in window.items()}
            # executemany sends one multi-row INSERT only when VALUES holds nothing but placeholders.
            cur.executemany(
                "INSERT INTO orders (client, customer_id, user_id, client_order_id, request_hash, total_cents, "
                "flash_reservation, batch_id, lifecycle, contact_email) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(d.reservation.client, d.reservation.customer_id, d.reservation.user_id,
                  d.reservation.client_order_id, d.reservation.request_hash, d.total, d.reservation.rid,
                  d.reservation.batch_id, state[d.reservation.rid], d.reservation.contact_email) for d in new])
            rids = [d.reservation.rid for d in new]
            in_rids = f"({','.join(['%s'] * len(rids))})"
            # The payment windows by the database's clock, as OrderRepository.add sets them: one UPDATE per
            # window (a trusted server's and a customer's).
            for seconds in sorted(set(window.values()) - {0}):
                waiting = [rid for rid in rids if window[rid] == seconds]
                cur.execute("UPDATE orders SET expires_at = CURRENT_TIMESTAMP(6) + INTERVAL %s SECOND "
                            f"WHERE flash_reservation IN ({','.join(['%s'] * len(waiting))})", [seconds, *waiting])
            cur.execute(f"SELECT id, flash_reservation FROM orders WHERE flash_reservation IN {in_rids}", rids)
            ids = {row["flash_reservation"]: row["id"] for row in cur.fetchall()}
            for d in new:
                d.order_id = ids[d.reservation.rid]
            # Each line records its sale: a cancel gives the units back to it, reconcile counts them in it.
            cur.executemany(
                "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents, flash_sale_id) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(d.order_id, pid, qty, rows[pid]["price_cents"], sale_id) for d in new
                 for pid, qty, sale_id in d.reservation.lines])
            # The outbox rows, in the same transaction as the orders (as OrderService writes them).
            cur.executemany(
                "INSERT INTO order_events (event_id, order_id, sequence, type, payload) VALUES (%s, %s, %s, %s, %s)",
                [(str(uuid.uuid4()), d.order_id, 1, order_lifecycle.CREATED, json.dumps({
                    "order_id": d.order_id, "client_order_id": d.reservation.client_order_id,
                    "user_id": d.reservation.user_id, "total_cents": d.total, "lifecycle": state[d.reservation.rid],
                    "items": [{"product_id": pid, "quantity": qty} for pid, qty in d.reservation.quantities.items()],
                    "reservation_id": d.reservation.rid}, ensure_ascii=False)) for d in new])
        taken = {pid: rows[pid]["stock"] - left[pid] for pid in left if rows[pid]["stock"] != left[pid]}
        if taken:
            ids = sorted(taken)
            case = f"CASE id {' '.join(['WHEN %s THEN %s'] * len(ids))} END"
            params = [x for pid in ids for x in (pid, taken[pid])]
            # The guard stays even on locked rows: MySQL is the last word on stock.
            changed = tx.update(ids, f"stock = stock - {case}", params, where=f"stock >= {case} AND status = 'active'",
                                where_params=params, stock_delta={pid: -taken[pid] for pid in ids})
            if changed != len(ids):
                if not lock:
                    raise _NeedsLockedWrite()
                raise AssertionError(f"guarded update of locked products {ids} fell short")
        for d in decisions:
            if d.duplicate_of is not None:
                d.order_id, d.total = d.duplicate_of.order_id, d.duplicate_of.total
        return decisions


def _decide(r: Reservation, rows, left):
    """Take the reservation's lines from what MySQL has left, or say why not."""
    for pid, qty in r.quantities.items():
        row = rows.get(pid)
        if row is None or row["status"] != "active":
            return _Decision(r, "failed", error=ProductNotFound(
                f"Product {pid} does not exist or is not for sale.", product_id=pid))
        if left[pid] < qty:
            # Redis admitted more than MySQL has: MySQL wins; the units stay gone from the sale too.
            return _Decision(r, "failed", give_back=False, error=InsufficientStock(
                f"Product {pid} has {left[pid]} in stock; {qty} requested.", product_id=pid))
    total = 0
    for pid, qty in r.quantities.items():
        left[pid] -= qty
        total += qty * rows[pid]["price_cents"]
    return _Decision(r, "created", took=True, total=total)

"""Flash-sale orders (docs/design.md section 10): admission through the Redis
gate, the hand-off through SQS, the reservations' polling, and the units a
closed order gives back to its sale.

A sync order whose products are on sale never opens a MySQL transaction in
the API: one Lua call (adapters/flash_gate.py) accepts it (units taken in
Redis, reservation leased) or refuses it; the accepted reservations of a
batch go to the flash-order queue in one SendMessageBatch; the consumer
(service/flash_writer.py) writes a whole SQS batch in one transaction.
Sale mode itself (start, stop, reconcile) is service/flash_admin.py.
"""
import itertools
import logging
import time

from chalicelib.domain import flash_message
from chalicelib.domain import validation as v
from chalicelib.domain.errors import (
    CacheUnavailable,
    IdempotencyConflict,
    InsufficientStock,
    NothingSent,
    ProductNotFound,
    ReservationNotFound,
    SaleLimitExceeded,
    ServiceUnavailable,
    ShopError,
    StoreFull,
    ValidationError,
)
from chalicelib.domain.flash_message import Reservation
from chalicelib.domain.orders import OrderRequest, OrderResult, failed, idempotency_conflict
from chalicelib.domain.reservations import customer_key, owner_key
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit
from chalicelib.service.ports import FlashGate, SaleRecords

log = logging.getLogger(__name__)

_ERRORS = {cls.code: cls for cls in (InsufficientStock, ProductNotFound, IdempotencyConflict, SaleLimitExceeded,
                                     ServiceUnavailable)}


SALES_REFRESH_SECONDS = 1.0  # how stale a process's copy of MySQL's sale list may be


# A confirm Redis refused is tried again after these pauses (the last repeats; past the Redis
# breaker's 1 s window) until this share of the first reservation's lease has gone: well before
# the lease ends, and inside API Gateway's 29 s with the default 30 s lease.
CONFIRM_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.0)
CONFIRM_WITHIN_LEASE = 0.8


class SalesOnRecord:
    """The products MySQL records on sale, as one process sees them: the admission
    reads them (FlashSales.sale_products), sale mode (FlashSaleAdmin) says when
    this process changed them."""

    def __init__(self, records: SaleRecords):
        self._sales_cache = None  # (monotonic time, product ids on sale in MySQL)
        self.records = records

    def ids(self):
        """(product ids on sale per MySQL, read at most once a second per process;
        the ServiceUnavailable if MySQL could not be read)."""
        cached = self._sales_cache
        if cached is not None and time.monotonic() - cached[0] < SALES_REFRESH_SECONDS:
            return cached[1], None
        try:
            # Frozen: callers narrow it for a batch, and the copy must stay whole for the next one.
            ids = frozenset(self.records.product_ids())
        except ServiceUnavailable as exc:
            # Sale orders need no MySQL: go on with what we knew (and what Redis says).
            return (cached[1] if cached is not None else frozenset()), exc
        self._sales_cache = (time.monotonic(), ids)
        return ids, None

    def changed(self):
        self._sales_cache = None


def report_swept(emit_metric, swept):
    """Expired leases given back: each one a reservation whose hand-off never
    confirmed (a process that died before SQS, or a confirm Redis kept refusing,
    whose message the consumer will then take the units again for)."""
    if swept:
        logger.warning("expired flash leases gave their units back", extra={"swept": swept})
        emit_metric("FlashLeasesSwept", swept)


class SaleParts:
    """What the order path and the admin of flash sales both work with: MySQL's record of
    the sales, the gate in Redis, the sales on record, and the flash-order queue."""

    def __init__(self, records: SaleRecords, gate: FlashGate, on_record: SalesOnRecord, publisher, queue_name,
                 metrics=emit):
        self.records = records
        self.gate = gate
        self.on_record = on_record
        self.publisher = publisher
        self.queue_name = queue_name
        self.emit = metrics


class FlashSales(SaleParts):

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

    def sale_products(self, product_ids):
        """(products on sale, whether the gate can be used, MySQL's outage if it could
        not be read). MySQL's record counts too, so a sale that Redis lost (restart,
        failover) or cannot answer for is refused (retryable) instead of slipping past the gate."""
        ids = set(product_ids)
        recorded, mysql_down = self.on_record.ids()
        recorded = set(recorded & ids)
        try:
            return self.gate.on_sale(ids) | recorded, True, mysql_down
        except CacheUnavailable:
            return recorded, False, mysql_down

    def take_sale_orders(self, orders, batch_of=lambda key: None):
        """Split `orders` [(key, order)]: the sale orders are admitted through the gate
        and handed to SQS here; returns ({key: OrderResult} of sale orders, the other
        orders, the MySQL outage met on the way or None: the caller need not pay for it twice).
        Raises ServiceUnavailable (nothing taken) when the hand-off fails. `batch_of(key)`:
        the async batch the order came in (its row records it)."""
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
        report_swept(self.emit, sum(a.swept for a in admissions if a))
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
            results[key] = self._answer(order, admission, record, accepted, replayed, batch_of(key))
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
            return OrderResult(coid, error=idempotency_conflict(coid, order.user_id), reservation_id=admission.rid)
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
            calls = -(-len(bodies) // self.publisher.batch_size)
            too_late = time.time() + calls * self.publisher.call_seconds > admitted + lease
            if not too_late:
                self.publisher.send_batch(self.queue_name, bodies)
        except NothingSent as exc:
            self._give_back(handles, replayed, "flash-order hand-off failed", f"{type(exc).__name__}: {exc}")
            raise ServiceUnavailable("The flash-order queue is unavailable; the sale orders were not accepted. "
                                     "Retry shortly.") from exc
        except Exception as exc:
            # It may have reached SQS (an answer lost, a timeout; botocore's last error hides the earlier
            # attempts): given back, the units could be sold to another buyer while this order is written
            # after all, and its buyer's retry refused as sold out. Kept leased, a retry with the same key
            # replays it and hands it off again (the consumer writes a key once); the lease returns the
            # units of one nobody retries, and the consumer takes them again if its message did arrive.
            logger.warning("flash-order hand-off failed after it may have reached SQS; the reservations stay "
                           "leased", extra={"reservations": len(handles), "error": f"{type(exc).__name__}: {exc}"})
            self.emit("FlashHandOffsUnknown", len(handles))
            raise ServiceUnavailable("The flash-order queue did not confirm the sale orders; retry them with the "
                                     "same client_order_id to learn their outcome.") from exc
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
            rows = self.records.orders_of([rid])
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
            for row in self.records.orders_of(unknown):
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

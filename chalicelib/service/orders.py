"""The order service: places batches of orders (each all-or-nothing, the batch
partial, exactly once per (client, user_id, client_order_id)) and cancels them.
Reads and cancels see only the caller's own orders (`owner`; None: any)."""
import time
from collections import Counter
from dataclasses import replace
from typing import Callable, Iterable, Optional, Union

from chalicelib.domain import order_lifecycle as lifecycle
from chalicelib.domain.customer_limits import CustomerLimits
from chalicelib.domain.errors import (
    ConcurrencyExhausted,
    DuplicateKey,
    OrderNotFound,
    PaymentReferenceUsed,
    ServiceUnavailable,
    ShopError,
)
from chalicelib.domain.in_flight import InFlightLimit
from chalicelib.domain.order_records import OrderLine, StoredOrder
from chalicelib.domain.orders import (
    BatchOutcome,
    InvalidOrder,
    K,
    OrderRequest,
    OrderResult,
    failed,
    idempotency_conflict,
    summarize,
)
from chalicelib.domain.products import iso
from chalicelib.ops.metrics import emit, emit_values
from chalicelib.service.ports import (
    InventoryStrategy,
    OrderRepository,
    ProductTransaction,
    ProductWrites,
    Reserver,
    WriteSession,
)


class _Replayed(Exception):
    """The order's key was used before: the transaction rolls back and the caller answers `result`."""

    def __init__(self, result: OrderResult):
        super().__init__(result.client_order_id)
        self.result = result


class OrderService:
    def __init__(self, db, strategy: InventoryStrategy, writes: ProductWrites,
                 repository: Callable[[object], OrderRepository], max_in_flight=16,
                 metrics=emit, payment_window=0, customer_payment_window=lifecycle.DEFAULT_CUSTOMER_PAYMENT_WINDOW,
                 flash=None, customer_limits=CustomerLimits(), batch_writer=None, metric_values=emit_values):
        self.db = db
        # A customer's caps; the line cap applies at parse (domain/orders.parse_batch), the unpaid one here.
        self.customer_limits = customer_limits
        # Seconds a new order waits for payment (pending_payment) before it expires: a trusted server's
        # payment_window (0: paid at creation), a customer token's customer_payment_window (never 0).
        self.payment_windows = lifecycle.PaymentWindows(int(payment_window), int(customer_payment_window))
        # FlashSales (service/flash_sales.py): sync orders for products on sale go through its gate.
        self.flash = flash
        self.emit = metrics
        self.emit_values = metric_values
        self.strategy = strategy
        self.writes = writes
        self.repository = repository  # the OrderRepository inside a transaction's cursor
        # service/batch_writer.py: two or more orders in one transaction (None: each in its own).
        self.batch_writer = batch_writer
        # Admission control: at most this many batches are being worked on in a
        # process; the rest wait asleep. Hundreds of runnable threads fighting
        # for the GIL (and for Redis/MySQL connections) collapse throughput;
        # this keeps it flat as clients grow, as RDS Proxy plus a bounded
        # Lambda concurrency would.
        self._admission = InFlightLimit(max_in_flight)

    def place_all(self, orders: Iterable[tuple[K, Union[OrderRequest, InvalidOrder]]],
                  batch_of: Callable[[K], Optional[str]] = lambda key: None,
                  recorded: Optional[Callable[[object, list], set]] = None) -> BatchOutcome[K]:
        """The one batch loop (sync batches and SQS ingestion; `batch_of(key)`: the async batch
        an order came in, which its row records; `recorded(cursor, keys)`, asked first in every
        order transaction: the keys another delivery has answered, left out of this run and of
        its results). Orders for products on
        a flash sale are admitted through its gate and handed to SQS first (results
        `pending`; a failed hand-off raises ServiceUnavailable with nothing taken or
        placed); the others are placed each on its own, in order. The products of
        every committed order are invalidated once at the end, also when an outage
        stops the run half-way."""
        orders = list(orders)
        sale, mysql_down = {}, None
        if self.flash is not None:
            sale, orders, mysql_down = self.flash.take_sale_orders(orders, batch_of)
        if mysql_down is not None and any(isinstance(o, OrderRequest) for _, o in orders):
            # MySQL just failed us: the ordinary orders would only pay for the outage a second time.
            return BatchOutcome(sale, mysql_down)
        results = dict(sale)
        with self._admission, self.writes.session(enqueue=False) as session:
            try:
                placed = self._place_together(session, orders, batch_of, recorded)
                for key, order in orders:
                    if isinstance(order, InvalidOrder):
                        results[key] = failed(order.client_order_id, order.error)
                        continue
                    result = placed[key] if key in placed else self.place(
                        session, order, batch_of(key), recorded and (lambda cursor, key=key: recorded(cursor, [key])))
                    if result is not None:
                        results[key] = result
            except ServiceUnavailable as exc:
                return BatchOutcome(results, exc)
        return BatchOutcome(results)

    def _place_together(self, session, orders, batch_of, recorded=None):
        """{key: result, or None when another delivery answered it} of the valid orders placed
        in one transaction, or {} (none placed)."""
        valid = [(key, order) for key, order in orders if isinstance(order, OrderRequest)]
        if self.batch_writer is None or len(valid) < 2:
            return {}
        started = time.perf_counter()
        placed = self.batch_writer.write(session, valid, batch_of, recorded)
        if placed is None:
            self.emit("BatchesPlacedOneByOne", 1)
            return {}
        created = sum(1 for r in placed.values() if r is not None and r.created and not r.duplicate)
        if created:
            self.emit("OrdersCreated", created)
            # Every order of the batch committed with the batch: each one's latency is the batch's.
            latency = (time.perf_counter() - started) * 1000
            self.emit_values("OrderLatency", [latency] * created, unit="Milliseconds")
        for code, count in Counter(r.error.code for r in placed.values() if r is not None and not r.created).items():
            self.emit("OrdersFailed", count, code=code)
        return placed

    def place_batch(self, parsed):
        """A sync batch: results in request order, or a 503 that says which orders committed."""
        outcome = self.place_all(enumerate(parsed))
        if outcome.interrupted is not None:
            exc = outcome.interrupted
            # Accepted sale orders (pending) are on SQS: a retry of the batch returns them as replays too.
            committed = outcome.committed_client_order_ids()
            if committed:
                # The client's retry of the batch finds these as duplicates.
                exc.extra["details"] = {"committed_client_order_ids": committed}
                exc.message = exc.message + (" Orders listed in details were committed before the failure;"
                                             " retrying the batch returns them as duplicates.")
            raise exc
        results = [outcome.results[i].to_api() for i in range(len(parsed))]
        return {"results": results, "summary": summarize(results)}

    def place(self, session: WriteSession, order: OrderRequest, batch_id=None,
              answered: Optional[Callable[[object], bool]] = None) -> Optional[OrderResult]:
        """One order in its own transaction of `session`; None if `answered(cursor)`, asked
        first in the transaction, says another delivery has answered it. Business failures
        are results; infrastructure failures (ServiceUnavailable) propagate so the caller
        can answer 503 or retry."""
        started = time.perf_counter()
        try:
            result = self.strategy.transact(session, order.quantities,
                                            lambda tx, reserver: self._place(tx, reserver, order, batch_id, answered))
        except _Replayed as replayed:
            result = replayed.result
        except ConcurrencyExhausted as exc:
            # Contention, not an outage: this order fails retryably, the batch goes on.
            result = failed(order.client_order_id, exc)
        except ServiceUnavailable:
            raise
        except ShopError as exc:
            result = failed(order.client_order_id, exc)
        if result is None:
            return None
        if result.created and not result.duplicate:
            self.emit("OrdersCreated", 1)
            self.emit("OrderLatency", (time.perf_counter() - started) * 1000, unit="Milliseconds")
        elif not result.created:
            self.emit("OrdersFailed", 1, code=result.error.code)
        return result

    def _place(self, tx: ProductTransaction, reserver: Reserver, order: OrderRequest, batch_id,
               answered=None) -> Optional[OrderResult]:
        if answered is not None and answered(tx.cursor):
            return None
        orders = self.repository(tx.cursor)
        if order.customer_id:
            # The customer's orders one at a time (the customer row, before the product and order rows), so
            # two concurrent batches of theirs, through any client, cannot together pass the unpaid cap.
            orders.lock_customer(order.customer_id)
        window = self.payment_windows.for_order(order.customer_id)
        try:
            if order.customer_id:
                self.customer_limits.check_unpaid(orders.unpaid_units(order.customer_id),
                                                  sum(order.quantities.values()))
            prices = reserver.reserve(tx, order.quantities)
        except ServiceUnavailable:
            raise
        except ShopError:
            # A key used before is answered as a replay, whatever its order could get now.
            self._raise_if_used(orders, order)
            raise
        # The stock is taken and the prices known: the order row goes in with its total (no second write).
        total = sum(qty * prices[pid] for pid, qty in order.quantities.items())
        order_id = orders.add(order.client, order.customer_id, order.user_id, order.client_order_id,
                              order.request_hash, total, batch_id, window, order.contact_email)
        if order_id is None:
            self._raise_if_used(orders, order)
            raise ConcurrencyExhausted("The order's key was taken and released again meanwhile; retry.")
        orders.add_lines(order_id, {pid: OrderLine(pid, qty, prices[pid]) for pid, qty in order.quantities.items()})
        orders.add_event(order_id, lifecycle.CREATED, lifecycle.created_event(
            order_id, order.client_order_id, order.user_id, total, lifecycle.PENDING if window else lifecycle.PAID,
            order.quantities), first=True)
        return OrderResult(order.client_order_id, order_id, total)

    def _raise_if_used(self, orders: OrderRepository, order: OrderRequest):
        """Roll the transaction back (the stock it took goes back) with the replay of the order
        that holds this key, or an idempotency conflict; nothing if no order holds it."""
        existing = orders.find(order.client, order.customer_id, order.user_id, order.client_order_id)
        if existing is not None:
            raise _Replayed(self._replay(existing, order))

    @staticmethod
    def _replay(existing: StoredOrder, order: OrderRequest) -> OrderResult:
        if existing.request_hash != order.request_hash:
            raise idempotency_conflict(order.client_order_id, order.user_id)
        return OrderResult(order.client_order_id, existing.id, existing.total_cents, duplicate=True,
                           status=existing.status)

    # --- reads and cancel ---------------------------------------------------

    @staticmethod
    def _to_api(order: StoredOrder, lines):
        return {"order_id": order.id, "client_order_id": order.client_order_id, "user_id": order.user_id,
                "status": order.status, "lifecycle": order.lifecycle, "total_cents": order.total_cents,
                "expires_at": iso(order.expires_at) if order.expires_at else None,
                "payment_reference": order.payment_reference, "contact_email": order.contact_email,
                "items": [{"product_id": line.product_id, "quantity": line.quantity,
                           "unit_price_cents": line.unit_price_cents} for line in lines],
                "created_at": iso(order.created_at)}

    @staticmethod
    def _owned(loaded, owner):
        """The order if `owner` may see it; someone else's order is as unknown as a missing one."""
        order, _ = loaded
        if owner is not None and not owner.owns(order.client, order.customer_id):
            raise OrderNotFound(f"Order {order.id} does not exist.", order_id=order.id)
        return loaded

    def _require_owner(self, order_id, owner):
        """404 unless `owner` may change the order, read without a lock before any
        transaction locks it: a caller never waits on, nor holds, a row that is not
        theirs. (An order's client and customer never change, so the check holds.)"""
        if owner is None:
            return
        client, customer_id = self.db.run(lambda cur: self.repository(cur).owner_of(order_id))
        if not owner.owns(client, customer_id):
            raise OrderNotFound(f"Order {order_id} does not exist.", order_id=order_id)

    def get(self, order_id, owner=None):
        return self.db.run(lambda cur: self._to_api(*self._owned(self.repository(cur).load(order_id), owner)))

    def cancel(self, order_id, owner=None):
        """Return the stock exactly once: the order row lock serialises cancels
        (and payments, expiry), and only the one that finds it open restocks."""
        return self._close(order_id, owner, lifecycle.CANCELLED)

    def expire(self, order_id):
        """Expire a pending order past its window and return its stock, exactly
        once: a payment or cancel that took the row lock first wins. True if it expired."""
        return self._close(order_id, None, lifecycle.EXPIRED) is not None

    def _close(self, order_id, owner, to_state):
        self._require_owner(order_id, owner)

        def work(tx: ProductTransaction):
            orders = self.repository(tx.cursor)
            order, lines = orders.load(order_id, lock=True)
            if to_state == lifecycle.EXPIRED:
                if not orders.is_due(order_id):
                    return order, lines, False
            elif lifecycle.cancel(order_id, order.lifecycle) == lifecycle.ALREADY:
                return order, lines, False
            self.strategy.release(tx, {line.product_id: line.quantity for line in lines})
            orders.mark_cancelled(order_id, to_state)
            orders.add_event(order_id, f"order.{to_state}", {"order_id": order_id, "lifecycle": to_state})
            return replace(order, status="cancelled", lifecycle=to_state), lines, True

        order, lines, closed = self.writes.run(work, enqueue=False)
        if closed and self.flash is not None:
            # Committed, so exactly once (the row lock let one close through): the sale gets its units back.
            self.flash.give_back(order, lines)
        if to_state == lifecycle.EXPIRED:
            if closed:
                self.emit("OrdersExpired", 1)
            return self._to_api(order, lines) if closed else None
        if closed:
            self.emit("OrdersCancelled", 1)
        return self._to_api(order, lines)

    def pay(self, order_id, payment_reference, owner=None):
        """pending_payment -> paid, idempotent on the payment reference (unique per client)."""
        self._require_owner(order_id, owner)

        def work(cur):
            orders = self.repository(cur)
            order, lines = orders.load(order_id, lock=True)
            if lifecycle.pay(order_id, order.lifecycle, order.payment_reference, payment_reference) == lifecycle.ALREADY:
                return order, lines
            try:
                orders.set_lifecycle(order_id, lifecycle.PAID, payment_reference)
            except DuplicateKey:
                raise PaymentReferenceUsed("This payment reference already paid another order.",
                                           order_id=order_id) from None
            orders.add_event(order_id, lifecycle.EVENT_PAID, {"order_id": order_id, "lifecycle": lifecycle.PAID,
                                                              "payment_reference": payment_reference})
            return replace(order, lifecycle=lifecycle.PAID, payment_reference=payment_reference), lines

        return self._to_api(*self.db.run(work))

    def fulfil(self, order_id, owner=None):
        """paid -> fulfilled (shipped); asked again, it answers the fulfilled order."""
        self._require_owner(order_id, owner)

        def work(cur):
            orders = self.repository(cur)
            order, lines = orders.load(order_id, lock=True)
            if lifecycle.fulfil(order_id, order.lifecycle) == lifecycle.ALREADY:
                return order, lines
            orders.set_lifecycle(order_id, lifecycle.FULFILLED)
            orders.add_event(order_id, lifecycle.EVENT_FULFILLED, {"order_id": order_id,
                                                                   "lifecycle": lifecycle.FULFILLED})
            return replace(order, lifecycle=lifecycle.FULFILLED), lines

        return self._to_api(*self.db.run(work))

    def events(self, order_id, owner=None):
        """The order's history from its outbox rows, oldest first."""
        def work(cur):
            orders = self.repository(cur)
            self._owned(orders.load(order_id), owner)
            return orders.events(order_id)

        return [{"event_id": e.event_id, "sequence": e.sequence, "type": e.type, "data": e.data,
                 "occurred_at": iso(e.created_at)} for e in self.db.run(work)]

"""The flash-order consumer's writer (docs/design.md section 10): a whole SQS
batch of reservations the gate admitted (service/flash_sales.py) written in
one transaction, each decided in message order against MySQL's own stock,
one guarded UPDATE for every product, multi-row inserts, one commit, then
settled in Redis. MySQL's guard has the last word: what Redis admitted
beyond MySQL's stock fails INSUFFICIENT_STOCK, never oversells.
"""
import time
from collections import Counter
from typing import Callable

from chalicelib.domain import order_lifecycle
from chalicelib.domain.errors import CacheUnavailable, DuplicateOrderKey, InsufficientStock, ServiceUnavailable
from chalicelib.domain.flash_message import Reservation
from chalicelib.domain.order_records import NewOrder, OrderLine
from chalicelib.domain.orders import idempotency_conflict
from chalicelib.domain.products import unsellable
from chalicelib.domain.reservations import Settlement, customer_key, owner_key
from chalicelib.ops.metrics import emit, emit_values
from chalicelib.service.ports import FlashGate, OrderRepository, ProductTransaction, ProductWrites


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

    def __init__(self, gate: FlashGate, writes: ProductWrites, repository: Callable[[object], OrderRepository],
                 metrics=emit, payment_window=0,
                 metric_values=emit_values, customer_payment_window=order_lifecycle.DEFAULT_CUSTOMER_PAYMENT_WINDOW):
        self.gate = gate
        self.writes = writes
        self.repository = repository  # the OrderRepository inside a transaction's cursor
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
            except (_NeedsLockedWrite, DuplicateOrderKey):
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
                          d.took, d.give_back, d.order_id, d.total, d.error.code if d.error else "", detail,
                          r.request_hash)

    def _write(self, tx: ProductTransaction, reservations, windows: order_lifecycle.PaymentWindows, lock=True):
        repo = self.repository(tx.cursor)
        product_ids = sorted({pid for r in reservations for pid in r.quantities})
        # With `lock`, the rows first (id order): the reads below then see every order committed before us.
        rows = tx.select(product_ids, "id, stock, low_stock_threshold, status, price_cents", lock=lock)
        existing = repo.find_many([_key(r) for r in reservations])
        left = {pid: row["stock"] for pid, row in rows.items()}
        decisions, new, first_of_key = [], [], {}
        for r in reservations:
            key = _key(r)
            found = existing.get(key)
            if found is not None:
                if found.flash_reservation == r.rid:  # written by an earlier delivery of this message
                    decisions.append(_Decision(r, "created", took=True, order_id=found.id, total=found.total_cents))
                elif found.request_hash == r.request_hash:
                    decisions.append(_Decision(r, "created", order_id=found.id, total=found.total_cents))
                else:
                    decisions.append(_Decision(r, "failed", error=idempotency_conflict(r.client_order_id, r.user_id)))
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
            # Each line records its sale: a cancel gives the units back to it, reconcile counts them in it.
            ids = repo.add_many([NewOrder(
                d.reservation.client, d.reservation.customer_id, d.reservation.user_id, d.reservation.client_order_id,
                d.reservation.request_hash, d.total,
                [OrderLine(pid, qty, rows[pid]["price_cents"], sale_id) for pid, qty, sale_id in d.reservation.lines],
                windows.for_order(d.reservation.customer_id), d.reservation.batch_id, d.reservation.contact_email,
                d.reservation.rid) for d in new])
            for d, order_id in zip(new, ids):
                d.order_id = order_id
        taken = {pid: rows[pid]["stock"] - left[pid] for pid in left if rows[pid]["stock"] != left[pid]}
        # The guard stays even on locked rows: MySQL is the last word on stock.
        if taken and tx.take_stock(taken) != len(taken):
            if not lock:
                raise _NeedsLockedWrite()
            raise AssertionError(f"guarded update of locked products {sorted(taken)} fell short")
        for d in decisions:
            if d.duplicate_of is not None:
                d.order_id, d.total = d.duplicate_of.order_id, d.duplicate_of.total
        return decisions


def _key(r: Reservation):
    return r.client, r.customer_id, r.user_id, r.client_order_id


def _decide(r: Reservation, rows, left):
    """Take the reservation's lines from what MySQL has left, or say why not."""
    for pid, qty in r.quantities.items():
        error = unsellable(pid, rows.get(pid), qty, left.get(pid))
        if error is not None:
            # Redis admitted more than MySQL has: MySQL wins; the units stay gone from the sale too.
            return _Decision(r, "failed", give_back=not isinstance(error, InsufficientStock), error=error)
    total = 0
    for pid, qty in r.quantities.items():
        left[pid] -= qty
        total += qty * rows[pid]["price_cents"]
    return _Decision(r, "created", took=True, total=total)

"""Order lifecycle rules (pure): which transition an order in a state may
take. pending_payment -> paid -> fulfilled, or -> cancelled / expired. A
transition asked for again is answered as done (idempotent); one that the
state forbids is a 409 with a code that says why."""
from dataclasses import dataclass

from chalicelib.domain.errors import (
    AlreadyPaid,
    OrderCancelled,
    OrderExpired,
    OrderFulfilled,
    OrderNotPaid,
)

PENDING, PAID, FULFILLED, CANCELLED, EXPIRED = "pending_payment", "paid", "fulfilled", "cancelled", "expired"
STATES = (PENDING, PAID, FULFILLED, CANCELLED, EXPIRED)
MAX_PAYMENT_REFERENCE = 128
# Event types the outbox carries (order.* per transition).
CREATED, EVENT_PAID, EVENT_FULFILLED, EVENT_CANCELLED, EVENT_EXPIRED = (
    "order.created", "order.paid", "order.fulfilled", "order.cancelled", "order.expired")

APPLY, ALREADY = "apply", "already"

DEFAULT_CUSTOMER_PAYMENT_WINDOW = 900


@dataclass(frozen=True)
class PaymentWindows:
    """Seconds a new order waits for payment before it expires, by who placed it. A
    trusted server's order waits `trusted` (0: final, paid at creation); an order
    placed with a customer token always waits `customer` (at least 1, settings.py
    refuses less), so stock an unpaid customer holds comes back."""
    trusted: int = 0
    customer: int = DEFAULT_CUSTOMER_PAYMENT_WINDOW

    def for_order(self, customer_id):
        return self.customer if customer_id else self.trusted


def created_event(order_id, client_order_id, user_id, total_cents, state, quantities, reservation_id=None):
    """The payload of an order's first outbox row (order.created), whichever writer placed it."""
    data = {"order_id": order_id, "client_order_id": client_order_id, "user_id": user_id,
            "total_cents": total_cents, "lifecycle": state,
            "items": [{"product_id": pid, "quantity": qty} for pid, qty in quantities.items()]}
    if reservation_id is not None:
        data["reservation_id"] = reservation_id
    return data


def _closed(order_id, state):
    if state == EXPIRED:
        return OrderExpired(f"Order {order_id} expired before it was paid.", order_id=order_id)
    return OrderCancelled(f"Order {order_id} is cancelled.", order_id=order_id)


def pay(order_id, state, current_reference, reference):
    if state == PENDING:
        return APPLY
    if state in (PAID, FULFILLED):
        if current_reference == reference:
            return ALREADY
        raise AlreadyPaid(f"Order {order_id} is already paid" + (" with another payment reference." if
                                                                 current_reference else " (final at creation)."),
                          order_id=order_id)
    raise _closed(order_id, state)


def fulfil(order_id, state):
    if state == PAID:
        return APPLY
    if state == FULFILLED:
        return ALREADY
    if state == PENDING:
        raise OrderNotPaid(f"Order {order_id} is not paid yet.", order_id=order_id)
    raise _closed(order_id, state)


def cancel(order_id, state):
    """Cancel returns the stock; an order already closed answers as it is."""
    if state in (PENDING, PAID):
        return APPLY
    if state in (CANCELLED, EXPIRED):
        return ALREADY
    raise OrderFulfilled(f"Order {order_id} is fulfilled; it can no longer be cancelled.", order_id=order_id)


def due_to_expire(state, expires_at, now):
    return state == PENDING and expires_at is not None and expires_at <= now

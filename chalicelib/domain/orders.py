"""Batch orders: each order all-or-nothing, each batch partial, exactly-once
effect per (client, user_id, client_order_id), enforced by a unique key inside
the order's own transaction. `client` is the API client placing the order
(chalicelib/domain/clients.py); it owns the order."""
import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Generic, Optional, TypeVar

from chalicelib.domain import customer_limits
from chalicelib.domain import validation as v
from chalicelib.domain.errors import (
    IdempotencyConflict,
    PayloadTooLarge,
    QuantityLimitExceeded,
    ServiceUnavailable,
    ShopError,
    ValidationError,
)

MAX_ORDERS_PER_BATCH = 100
MAX_LINES_PER_ORDER = 50
MAX_QUANTITY = 1000
ORDER_FIELDS = ("client_order_id", "user_id", "items")
OPTIONAL_ORDER_FIELDS = ("contact_email",)
MAX_EMAIL = 254
# One address, no display name: local@domain.tld, no spaces or control characters (RFC 5321's lengths).
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+")
LINE_FIELDS = ("product_id", "quantity")


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    user_id: int
    quantities: dict  # product_id -> merged quantity, ascending product id (the global lock order)
    client: str = ""  # the owner; not part of the request hash (it is the idempotency namespace)
    customer_id: int = 0  # the customer whose token placed it (customers.id); 0: a trusted server's order
    contact_email: Optional[str] = None  # where the order's emails go; not part of the request hash

    @property
    def request_hash(self):
        canonical = json.dumps(sorted(self.quantities.items()), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Owner:
    """Whose orders a caller sees: one client's, or one customer's (whichever
    client they came through). A caller that may see every order has no Owner."""
    client: Optional[str] = None
    customer_id: Optional[int] = None

    def owns(self, client, customer_id):
        if self.customer_id is not None:
            return customer_id == self.customer_id
        return client == self.client


@dataclass(frozen=True)
class InvalidOrder:
    """An order that fails before it is placed: VALIDATION_ERROR, or a customer's past a per-order cap."""
    client_order_id: object
    error: ShopError


def parse_batch(body, client="", customer_id=0, limits=customer_limits.CustomerLimits(), customer_email=None):
    """Whole-request problems raise; per-order problems become InvalidOrder entries.
    Every order is placed on behalf of `client`; with `customer_id` (a customer
    token) for that customer, whose id is the orders' user_id: an order naming
    a user_id or a contact_email fails, the customer's caps (`limits`) apply, and
    the orders' emails go to `customer_email` (the token's verified email; None: none)."""
    v.require_object(body)
    v.reject_unknown(body, ("orders", "batch_id"))
    orders = body.get("orders")
    if not isinstance(orders, list) or not orders:
        raise ValidationError("'orders' must be a non-empty list of orders.", details={"field": "orders"})
    most = customer_limits.MAX_ORDERS_PER_BATCH if customer_id else MAX_ORDERS_PER_BATCH
    if len(orders) > most:
        raise PayloadTooLarge(f"At most {most} orders per batch; got {len(orders)}.")
    if customer_id:
        return [_for_customer(raw, i, client, customer_id, limits, customer_email) for i, raw in enumerate(orders)]
    return [parse_order(raw, i, client) for i, raw in enumerate(orders)]


# Fields a customer's order takes from the token, never the body: who orders, and where the
# emails go (from the body, anyone who signs up could have the shop mail any address).
_FROM_THE_TOKEN = ("user_id", "contact_email")


def _for_customer(raw, index, client, customer_id, limits, email):
    for field in _FROM_THE_TOKEN:
        if isinstance(raw, dict) and field in raw:
            coid = raw.get("client_order_id")
            return InvalidOrder(coid if isinstance(coid, str) else None, ValidationError(
                f"orders[{index}]: '{field}' comes from the customer token, not the body.",
                details={"field": field}))
    order = parse_order({**raw, "user_id": customer_id} if isinstance(raw, dict) else raw, index, client)
    if not isinstance(order, OrderRequest):
        return order
    try:
        limits.check_lines(order.quantities)
    except QuantityLimitExceeded as exc:
        return InvalidOrder(order.client_order_id, exc)
    return replace(order, customer_id=customer_id, contact_email=email)


def contact_email(value):
    """An order's optional contact address (the recipient of its emails)."""
    email = v.string(value, "contact_email", 3, MAX_EMAIL)
    if not _EMAIL.fullmatch(email):
        raise ValidationError("'contact_email' must be one email address such as name@example.com.",
                              details={"field": "contact_email"})
    return email


def parse_order(raw, index=0, client=""):
    client_order_id = raw.get("client_order_id") if isinstance(raw, dict) else None
    try:
        v.require_object(raw, f"orders[{index}]")
        v.reject_unknown(raw, ORDER_FIELDS + OPTIONAL_ORDER_FIELDS, f"orders[{index}]")
        for field in ORDER_FIELDS:
            if field not in raw:
                raise ValidationError(f"'{field}' is required.", details={"field": field})
        coid = raw["client_order_id"]
        if not isinstance(coid, str) or not 1 <= len(coid) <= 64 or not coid.isprintable():
            raise ValidationError("'client_order_id' must be a string of 1 to 64 printable characters.",
                                  details={"field": "client_order_id"})
        user_id = v.integer(raw["user_id"], "user_id", 1)
        items = raw["items"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_LINES_PER_ORDER:
            raise ValidationError(f"'items' must be a list of 1 to {MAX_LINES_PER_ORDER} lines.",
                                  details={"field": "items"})
        quantities = {}
        for n, line in enumerate(items):
            v.require_object(line, f"items[{n}]")
            v.reject_unknown(line, LINE_FIELDS, f"items[{n}]")
            for field in LINE_FIELDS:
                if field not in line:
                    raise ValidationError(f"'items[{n}].{field}' is required.", details={"field": field})
            pid = v.integer(line["product_id"], "product_id", 1)
            qty = v.integer(line["quantity"], "quantity", 1, MAX_QUANTITY)
            # Duplicate lines of one product are merged: one lock, one update per product.
            quantities[pid] = quantities.get(pid, 0) + qty
        contact = contact_email(raw["contact_email"]) if "contact_email" in raw else None
        return OrderRequest(coid, user_id, dict(sorted(quantities.items())), client, contact_email=contact)
    except ValidationError as exc:
        return InvalidOrder(client_order_id if isinstance(client_order_id, str) else None, exc)


MAX_CLIENT_ORDER_ID = 64
# Results are stored in batch_results.result (TEXT, 64 KiB): every echoed part is bounded.
MAX_RESULT_MESSAGE = 1000


@dataclass(frozen=True)
class OrderResult:
    """What became of one order of a batch (the API's per-order result).
    `status` is the order's own: a replay of a cancelled order is "cancelled"."""
    client_order_id: Optional[str]
    order_id: Optional[int] = None
    total_cents: Optional[int] = None
    duplicate: bool = False
    error: Optional[ShopError] = None
    status: str = "created"  # or "pending": a flash-sale order accepted by the gate, not written yet
    reservation_id: Optional[str] = None  # flash-sale orders: what GET /reservations/{id} polls

    @property
    def created(self) -> bool:
        return self.error is None

    @property
    def transient(self) -> bool:
        """Failed for a reason that a retry can cure (contention outlived its retries)."""
        return isinstance(self.error, ServiceUnavailable)

    def to_api(self) -> dict:
        # An invalid client_order_id may be anything the client sent: echo it cut to the contract's 64.
        coid = v.echo(self.client_order_id, MAX_CLIENT_ORDER_ID) if isinstance(self.client_order_id, str) else None
        sale = {"reservation_id": self.reservation_id} if self.reservation_id else {}
        if self.status == "pending":
            return {"client_order_id": coid, "status": "pending", "duplicate": self.duplicate, **sale}
        if self.created:
            return {"client_order_id": coid, "status": self.status, "order_id": self.order_id,
                    "total_cents": self.total_cents, "duplicate": self.duplicate, **sale}
        error = {"code": self.error.code, "message": v.echo(self.error.message, MAX_RESULT_MESSAGE)}
        if "product_id" in self.error.extra:
            error["product_id"] = self.error.extra["product_id"]
        if isinstance(self.error, QuantityLimitExceeded):
            error["details"] = self.error.extra["details"]  # the limit the order went past
        return {"client_order_id": coid, "status": "failed", "error": error, **sale}


def summarize(results) -> dict:
    """The batch summary of API results; `cancelled` only when a replay found its order cancelled,
    `pending` only when flash-sale orders were accepted and are not written yet."""
    counts = {"created": 0, "failed": 0, "cancelled": 0, "pending": 0}
    for result in results:
        counts[result["status"]] += 1
    for optional in ("cancelled", "pending"):
        if not counts[optional]:
            del counts[optional]
    return counts


def idempotency_conflict(client_order_id, user_id) -> IdempotencyConflict:
    """A key already used for other lines (every order writer answers with these words)."""
    return IdempotencyConflict(f"client_order_id {client_order_id!r} was already used by user {user_id} "
                               "for different lines.")


def failed(client_order_id, exc: ShopError) -> OrderResult:
    return OrderResult(client_order_id, error=exc)


K = TypeVar("K")


@dataclass
class BatchOutcome(Generic[K]):
    """The results of a run of orders, keyed as given, in the order they were placed.
    `interrupted` is the outage that stopped the run; `results` then hold what
    happened before it (committed orders included)."""
    results: dict
    interrupted: Optional[ServiceUnavailable] = None

    def committed_client_order_ids(self) -> list:
        return [r.client_order_id for r in self.results.values() if r.created]

""""Bought together" rules (pure): which order events change co-purchase
counts and by how much, which pairs one order contributes, and the route's
parameters.

An order counts once while it holds (or held and kept) its stock:
`order.created` adds 1 to every pair of distinct products in it,
`order.cancelled` and `order.expired` take the same 1 back. Adding and taking
back commute, so the counts are right whatever order SQS delivers the events
in (a cancel applied before its creation leaves a pair at -1 for a moment;
reads only show pairs above 0). Counting only paid orders would need the lines
on `order.paid` and would leave pending orders invisible for the payment
window; with the default setting every order is paid at creation anyway."""
import json
from dataclasses import dataclass, field

from chalicelib.domain.errors import ValidationError
from chalicelib.domain.orders import MAX_LINES_PER_ORDER
from chalicelib.domain.validation import query_int

# Event type -> what it does to the counts of the order's pairs.
COUNTED = {"order.created": 1, "order.cancelled": -1, "order.expired": -1}
# Lines of one order that make pairs: at most 20 * 19 = 380 pair rows per event,
# whatever the order's size (the contract allows 50 lines: 2,450 rows).
MAX_LINES = 20
MAX_EVENT_ID = 64
MAX_ID = 2**63 - 1
DEFAULT_LIMIT, MAX_LIMIT = 10, 50
# Ranked partners kept per product, more than MAX_LIMIT so that some going out
# of stock between two rankings still leaves a full answer.
CANDIDATES = 100
PARAMETERS = ("limit",)


@dataclass(frozen=True)
class OrderEvent:
    event_id: str
    type: str
    order_id: int = 0
    change: int = 0  # +1, -1, or 0 for an event that counts nothing
    quantities: dict = field(default_factory=dict)  # product id -> quantity (order.created only)


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise ValueError(f"{what} must be a positive integer")
    return value


def decode(body) -> OrderEvent:
    """An order event as the outbox relay publishes it (raw SNS delivery); ValueError if it is not one."""
    try:
        message = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    event_id, event_type = message.get("event_id"), message.get("type")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_EVENT_ID or not event_id.isascii() \
            or not event_id.isprintable():
        raise ValueError(f"event_id must be 1..{MAX_EVENT_ID} printable ASCII characters")
    if not isinstance(event_type, str):
        raise ValueError("type must be a string")
    change = COUNTED.get(event_type, 0)
    if not change:
        return OrderEvent(event_id, event_type)
    order_id = _positive_int(message.get("order_id"), "order_id")
    if change < 0:
        return OrderEvent(event_id, event_type, order_id, change)
    data = message.get("data")
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_LINES_PER_ORDER:
        raise ValueError(f"data.items must be a list of 1..{MAX_LINES_PER_ORDER} lines")
    quantities = {}
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each item must be an object")
        product_id = _positive_int(item.get("product_id"), "product_id")
        quantities[product_id] = quantities.get(product_id, 0) + _positive_int(item.get("quantity"), "quantity")
    return OrderEvent(event_id, event_type, order_id, change, quantities)


def considered(quantities):
    """The products of an order that make pairs, ascending: all of them, or the
    MAX_LINES bought in the largest quantities (ties: lower id). Deterministic, so
    a cancel takes back exactly the pairs its creation added."""
    ranked = sorted(quantities, key=lambda pid: (-quantities[pid], pid))[:MAX_LINES]
    return sorted(ranked)


def pair_rows(quantities):
    """Both directions of every pair, sorted by (product_id, other_id): every
    consumer locks pair rows in this one order, so concurrent events cannot deadlock."""
    ids = considered(quantities)
    return [(a, b) for a in ids for b in ids if a != b]


def limit_param(params):
    """The route's query parameters: only `limit` (1..MAX_LIMIT, default DEFAULT_LIMIT)."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValidationError(f"Unknown parameter(s): {', '.join(name[:64] for name in unknown[:20])}.",
                              details={"unknown_fields": [name[:64] for name in unknown[:20]],
                                       "allowed": list(PARAMETERS)})
    return query_int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)

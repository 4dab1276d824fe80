"""Notification emails (docs/api.md, "Notifications"): which events are mailed,
the shape a consumed event must have, and the text of each email. Pure: no I/O.

An email holds no text a caller chose: the shop's own words, the order id, the
items by their catalog names (an admin writes those) and totals. A caller's
`client_order_id` would otherwise let anyone who can place an order write the
subject of a mail from the shop's verified sender."""
import json
import re
from dataclasses import dataclass
from typing import Optional

from chalicelib.domain.errors import ValidationError

CUSTOMER_EVENTS = ("order.created", "order.paid", "order.cancelled", "order.expired")
OPERATOR_EVENTS = ("stock.low",)
MAILED_EVENTS = CUSTOMER_EVENTS + OPERATOR_EVENTS
_EVENT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_MAX_ID = 10**18


@dataclass(frozen=True)
class Event:
    event_id: str
    type: str
    order_id: Optional[int]
    product_id: Optional[int]
    data: dict

    @property
    def mailed(self):
        return self.type in MAILED_EVENTS


def _positive_id(value, field):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < _MAX_ID:
        raise ValidationError(f"'{field}' must be a positive integer.", details={"field": field})
    return value


def parse_event(body):
    """An order-events message (the relay's shape, raw SNS delivery) or ValidationError.
    Types this consumer does not mail are valid events too (`mailed` is False)."""
    try:
        event = json.loads(body)
    except (TypeError, ValueError):
        raise ValidationError("The message is not JSON.") from None
    if not isinstance(event, dict):
        raise ValidationError("The message is not a JSON object.")
    event_id, event_type, data = event.get("event_id"), event.get("type"), event.get("data")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise ValidationError("'event_id' must be a UUID.", details={"field": "event_id"})
    if not isinstance(event_type, str) or not 1 <= len(event_type) <= 32:
        raise ValidationError("'type' must be a string of 1 to 32 characters.", details={"field": "type"})
    if not isinstance(data, dict):
        raise ValidationError("'data' must be an object.", details={"field": "data"})
    order_id = product_id = None
    if event_type in CUSTOMER_EVENTS:
        order_id = _positive_id(event.get("order_id"), "order_id")
    elif event_type in OPERATOR_EVENTS:
        product_id = _positive_id(event.get("product_id"), "product_id")
        for field in ("stock", "low_stock_threshold"):
            value = data.get(field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValidationError(f"'data.{field}' must be an integer >= 0.", details={"field": field})
    return Event(event_id, event_type, order_id, product_id, data)


def _money(cents):
    return f"{cents // 100}.{cents % 100:02d}"


_ORDER_TEXT = {
    "order.created": ("Your order {ref} is placed", "We have your order {ref} ({total})."),
    "order.paid": ("Your order {ref} is paid", "Thank you: we received the payment for order {ref} ({total})."),
    "order.cancelled": ("Your order {ref} is cancelled", "Order {ref} is cancelled. Nothing will be charged for it."),
    "order.expired": ("Your order {ref} expired", "Order {ref} was not paid in time, so it expired and its items "
                                                  "went back on sale."),
}


def _item_line(item):
    name = item["name"] if item.get("name") is not None else "(no longer in the catalog)"
    return (f"  {item['quantity']} x {name} (product {item['product_id']}) at "
            f"{_money(item['unit_price_cents'])}")


def order_email(event: Event, order: dict, items: list):
    """(subject, text) of the customer's email; `order`: total_cents; `items`: product_id, quantity,
    unit_price_cents and the product's catalog `name` (None: no longer in the catalog)."""
    subject, text = _ORDER_TEXT[event.type]
    values = {"ref": f"#{event.order_id}", "total": _money(order["total_cents"])}
    lines = "\n".join(_item_line(item) for item in items)
    return subject.format(**values), (text.format(**values) + f"\n\n{lines}\n\nOrder number: {event.order_id}\n")


def stock_low_email(event: Event, product: Optional[dict]):
    """(subject, text) of the operator's email; `product`: sku, name (None: deleted since)."""
    name = f"{product['name']} (sku {product['sku']})" if product else "(no longer in the catalog)"
    subject = f"Low stock: product {event.product_id}"
    text = (f"Product {event.product_id} {name} is down to {event.data['stock']} in stock, below its "
            f"low-stock threshold of {event.data['low_stock_threshold']}.\n")
    return subject, text

"""The order-ingest message: how a batch is cut into SQS messages and how a
message body is decoded (a bad body is a permanent failure to record, never
an exception). Pure: no I/O. The contract is in service/async_orders.py."""
import json
import time

from chalicelib.domain.errors import PayloadTooLarge, ValidationError
from chalicelib.domain.validation import parse_json

ORDERS_PER_MESSAGE = 10
# SQS takes 256 KiB per message (and per SendMessageBatch call); keep a margin.
MAX_MESSAGE_BYTES = 200_000
# `client`: the API client that owns the orders (set by POST /orders/batch?mode=async;
# a producer writing to the queue directly may name one; absent: admin-only orders).
MESSAGE_FIELDS = ("batch_id", "orders", "positions", "order_count", "enqueued_at", "client")


def chunk_messages(batch_id, orders, enqueued_at=None, client=""):
    """Message bodies of <= 10 orders (and <= MAX_MESSAGE_BYTES) each, in batch order."""
    enqueued_at = time.time() if enqueued_at is None else enqueued_at
    messages, current, positions = [], [], []

    def flush():
        if current:
            messages.append({"batch_id": batch_id, "orders": list(current), "positions": list(positions),
                             "order_count": len(orders), "enqueued_at": enqueued_at, "client": client})
            current.clear()
            positions.clear()

    size = 0
    for position, order in enumerate(orders):
        order_bytes = len(json.dumps(order, ensure_ascii=False).encode())
        if order_bytes > MAX_MESSAGE_BYTES - 1000:
            raise PayloadTooLarge(f"orders[{position}] is {order_bytes} bytes; an async order must stay below "
                                  f"{MAX_MESSAGE_BYTES - 1000} bytes.")
        if current and (len(current) == ORDERS_PER_MESSAGE or size + order_bytes > MAX_MESSAGE_BYTES - 1000):
            flush()
            size = 0
        current.append(order)
        positions.append(position)
        size += order_bytes + 8
    flush()
    return messages


class IngestMessage:
    """A decoded message: batch id, order count and (position, raw order) pairs.
    `error` is set when the body is not a usable batch (a permanent failure)."""

    def __init__(self, batch_id, order_count, positions, orders, enqueued_at=None, error=None, client=""):
        self.batch_id = batch_id
        self.client = client
        self.order_count = order_count
        self.positions = positions
        self.orders = orders
        self.enqueued_at = enqueued_at
        self.error = error


def _int_list(value, what):
    if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in value):
        raise ValidationError(f"'{what}' must be a list of non-negative integers.", details={"field": what})
    return value


def decode_message(body, message_id):
    """Parse a message body; never raises (a bad body is a permanent failure to record)."""
    fallback_id = f"sqs-{message_id}"
    try:
        # Lone surrogates are left to the per-order checks, so valid sibling orders still go through.
        data = parse_json(body, "message body", allow_surrogates=True)
    except ValidationError as exc:
        return IngestMessage(fallback_id, 1, [0], [], error=exc)
    except TypeError as exc:
        return IngestMessage(fallback_id, 1, [0], [], error=ValidationError(f"The message body is not valid JSON: {exc}."))
    if not isinstance(data, dict):
        return IngestMessage(fallback_id, 1, [0], [], error=ValidationError("The message body must be a JSON object."))
    batch_id = data.get("batch_id", None)
    if batch_id is not None and not (isinstance(batch_id, str) and 1 <= len(batch_id) <= 64 and batch_id.isprintable()):
        return IngestMessage(fallback_id, 1, [0], [],
                             error=ValidationError("'batch_id' must be a string of 1 to 64 printable characters."))
    batch_id = batch_id or fallback_id
    client = data.get("client") or ""
    client_ok = isinstance(client, str) and len(client) <= 64 and client.isprintable()
    if not client_ok:
        client = ""  # a malformed owner owns nothing: the failure below is recorded admin-only
    orders = data.get("orders")
    try:
        unknown = sorted(set(data) - set(MESSAGE_FIELDS))
        if unknown:
            raise ValidationError(f"Unknown field(s) in the message: {', '.join(unknown)}.", details={"fields": unknown})
        if not client_ok:
            raise ValidationError("'client' must be a string of at most 64 printable characters.",
                                  details={"field": "client"})
        if not isinstance(orders, list):
            raise ValidationError("'orders' must be a non-empty list of orders.", details={"field": "orders"})
        positions = _int_list(data["positions"], "positions") if "positions" in data else list(range(len(orders)))
        if len(positions) != len(orders) or len(set(positions)) != len(positions):
            raise ValidationError("'positions' must give one distinct position per order.", details={"field": "positions"})
        order_count = data.get("order_count", len(orders))
        if not isinstance(order_count, int) or isinstance(order_count, bool) or order_count < 1 \
                or (positions and max(positions) >= order_count):
            raise ValidationError("'order_count' must be an integer above every position.", details={"field": "order_count"})
    except ValidationError as exc:
        # Record the failure on the positions the message claims if they make sense, else on position 0.
        positions = data.get("positions") if isinstance(data.get("positions"), list) else None
        order_count = data.get("order_count")
        if not (positions and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 100_000 for p in positions)
                and isinstance(order_count, int) and max(positions) < order_count):
            batch_id, positions, order_count = fallback_id, [0], 1
        return IngestMessage(batch_id, order_count, sorted(set(positions)), [], error=exc, client=client)
    enqueued_at = data.get("enqueued_at") if isinstance(data.get("enqueued_at"), (int, float)) else None
    return IngestMessage(batch_id, order_count, positions, orders, enqueued_at, client=client)

"""The flash-order message (docs/api.md, "SQS messages"): many accepted
reservations per SQS message, so the hand-off costs one SQS call per sync
batch, not per order. Pure: no I/O.

    {"reservations": [{"rid": str(32 hex), "client": str, "customer_id": int, "user_id": int,
                       "client_order_id": str, "request_hash": str(64 hex),
                       "lines": [[product_id, quantity, sale_id], ...], "accepted_at": float,
                       "batch_id"?: str(1..64), "contact_email"?: str}, ...],
     "sent_at": float}

`batch_id`: the async batch (or `sqs-<messageId>`) the order came in; the written
order row records it, as an ordinary async order's does. `contact_email`: where the
order's emails go, as the order gave it (an ordinary order's row records it too).
"""
import json
import re
from dataclasses import asdict, dataclass
from typing import Optional

from chalicelib.domain.errors import ValidationError
from chalicelib.domain.orders import contact_email

# SQS takes 256 KiB per message; keep a margin as the ingest messages do.
MAX_MESSAGE_BYTES = 200_000
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reservation:
    rid: str
    client: str
    customer_id: int
    user_id: int
    client_order_id: str
    request_hash: str
    lines: tuple  # ((product_id, quantity, sale_id), ...) ascending product id
    accepted_at: float = 0.0
    batch_id: Optional[str] = None
    contact_email: Optional[str] = None

    @property
    def quantities(self):
        return {pid: qty for pid, qty, _ in self.lines}

    @property
    def packed_lines(self):
        """The gate's form of the lines: "pid:qty:sale_id,..."."""
        return ",".join(f"{pid}:{qty}:{sale}" for pid, qty, sale in self.lines)

    def to_json(self):
        data = asdict(self)
        data["lines"] = [list(line) for line in self.lines]
        for optional in ("batch_id", "contact_email"):
            if data[optional] is None:
                del data[optional]
        return data


def pack(reservations, sent_at):
    """Message bodies of at most MAX_MESSAGE_BYTES each, reservations in order."""
    bodies, current, size = [], [], 0
    for reservation in reservations:
        item = reservation.to_json()
        item_bytes = len(json.dumps(item, ensure_ascii=False).encode()) + 2
        if current and size + item_bytes > MAX_MESSAGE_BYTES:
            bodies.append({"reservations": current, "sent_at": sent_at})
            current, size = [], 0
        current.append(item)
        size += item_bytes
    if current:
        bodies.append({"reservations": current, "sent_at": sent_at})
    return bodies


def _is_int(value, low=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _reservation(item):
    if not isinstance(item, dict):
        raise ValueError("a reservation must be an object")
    rid, hash_ = item.get("rid"), item.get("request_hash")
    if not (isinstance(rid, str) and _HEX32.match(rid) and isinstance(hash_, str) and _HEX64.match(hash_)):
        raise ValueError("'rid' and 'request_hash' must be hex digests")
    client, coid = item.get("client"), item.get("client_order_id")
    if not (isinstance(client, str) and len(client) <= 64 and isinstance(coid, str) and 1 <= len(coid) <= 64):
        raise ValueError("'client' and 'client_order_id' must be short strings")
    if not (_is_int(item.get("customer_id")) and _is_int(item.get("user_id"), 1)):
        raise ValueError("'customer_id' and 'user_id' must be integers")
    lines = item.get("lines")
    if not isinstance(lines, list) or not lines:
        raise ValueError("'lines' must be a non-empty list")
    parsed = []
    for line in lines:
        if not (isinstance(line, list) and len(line) == 3 and _is_int(line[0], 1) and _is_int(line[1], 1)
                and isinstance(line[2], str) and _HEX32.match(line[2])):
            raise ValueError("each line is [product_id, quantity, sale_id]")
        parsed.append((line[0], line[1], line[2]))
    if len({pid for pid, _, _ in parsed}) != len(parsed):
        raise ValueError("a product appears twice in one reservation")
    batch_id = item.get("batch_id")
    if batch_id is not None and not (isinstance(batch_id, str) and 1 <= len(batch_id) <= 64):
        raise ValueError("'batch_id' must be a string of 1 to 64 characters")
    contact = item.get("contact_email")
    if contact is not None:
        try:
            contact = contact_email(contact)
        except ValidationError as exc:
            raise ValueError(exc.message) from None
    accepted_at = item.get("accepted_at", 0.0)
    return Reservation(rid, client, item["customer_id"], item["user_id"], coid, hash_, tuple(sorted(parsed)),
                       float(accepted_at) if isinstance(accepted_at, (int, float)) else 0.0, batch_id, contact)


def decode(body):
    """The reservations of a message body; ValueError when it is not one (a
    permanent failure: nothing in it was ever accepted by this code)."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("reservations"), list) or not data["reservations"]:
        raise ValueError("the body must be an object with a non-empty 'reservations' list")
    return [_reservation(item) for item in data["reservations"]]

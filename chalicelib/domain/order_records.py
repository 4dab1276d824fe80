"""An order as the order repository stores and returns it. Pure: no I/O."""
from dataclasses import dataclass
from datetime import datetime
from typing import Optional


@dataclass(frozen=True)
class StoredOrder:
    id: int
    client: str            # the API client that owns it ('' for orders from before clients)
    customer_id: int       # the customer whose token placed it; 0 for a trusted server's order
    client_order_id: str
    user_id: int
    status: str            # "created" | "cancelled"
    total_cents: int
    request_hash: str
    created_at: datetime
    lifecycle: str = "paid"            # chalicelib/domain/order_lifecycle.py
    expires_at: Optional[datetime] = None
    payment_reference: Optional[str] = None
    contact_email: Optional[str] = None


@dataclass(frozen=True)
class OrderEvent:
    event_id: str
    order_id: int
    sequence: int
    type: str
    data: dict
    created_at: datetime


@dataclass(frozen=True)
class OrderLine:
    product_id: int
    quantity: int
    unit_price_cents: int
    sale_id: Optional[str] = None  # the flash sale the line was sold in (None: an ordinary line)

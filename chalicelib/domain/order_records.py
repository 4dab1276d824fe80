"""An order as the order repository stores and returns it. Pure: no I/O."""
from dataclasses import dataclass
from datetime import datetime
from typing import Optional, Sequence

from chalicelib.domain import order_lifecycle


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
    flash_reservation: Optional[str] = None  # the flash-sale reservation it was written for


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


Key = tuple  # (client, customer_id, user_id, client_order_id): an order's idempotency key


@dataclass(frozen=True)
class NewOrder:
    """An order decided in full before it is written (OrderRepository.add_many)."""
    client: str
    customer_id: int
    user_id: int
    client_order_id: str
    request_hash: str
    total_cents: int
    lines: Sequence[OrderLine]     # ascending product id, merged
    payment_window: int = 0        # seconds until it expires unpaid (0: paid at creation)
    batch_id: Optional[str] = None
    contact_email: Optional[str] = None
    flash_reservation: Optional[str] = None

    @property
    def key(self) -> Key:
        return self.client, self.customer_id, self.user_id, self.client_order_id

    @property
    def lifecycle(self):
        return order_lifecycle.PENDING if self.payment_window else order_lifecycle.PAID

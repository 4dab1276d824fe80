"""A flash-sale reservation's identities and the gate's answers about it. Pure: no I/O.

`owner_key` names a reservation by its idempotency key; `customer_key` names whose
units a sale's per-customer limit counts. The gate (adapters/flash_gate.py) keeps
its records under them and answers an admission with an `Admission`; the flash
writer tells it how each reservation ended with a `Settlement`."""
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Admission:
    outcome: str            # ACCEPTED | REPLAY | CONFLICT | NOT_ON_SALE | SOLD_OUT | LIMIT
    rid: Optional[str] = None
    lines: tuple = ()       # ACCEPTED: ((product_id, quantity, sale_id), ...)
    product_id: Optional[int] = None
    remaining: Optional[int] = None
    held: Optional[int] = None
    limit: Optional[int] = None
    swept: int = 0          # expired leases the call gave back on its way
    admitted_at: float = 0  # ACCEPTED: the clock (s) its lease counts from


@dataclass(frozen=True)
class Settlement:
    key: str
    rid: str
    lines: str
    customer: str
    outcome: str            # created | failed
    took: bool              # MySQL took the units for this reservation
    give_back: bool = True  # (not took) return the units to the sale
    order_id: int = 0
    total_cents: int = 0
    code: str = ""
    detail: str = ""
    request_hash: str = ""  # kept in a record Redis lost: a replay of the key answers from it, not CONFLICT


def owner_key(client, customer_id, user_id, client_order_id):
    return f"{client}|{customer_id}|{user_id}|{client_order_id}"


def customer_key(client, customer_id, user_id):
    """Whose units a sale's per-customer limit counts. A customer with a token is one
    person whichever client's app they use (customers.id); a trusted server's user is
    that client's (client, user_id). (`:` never occurs in a client name.)"""
    if customer_id:
        return f"customer:{customer_id}"
    return f"{client}|0|{user_id}"

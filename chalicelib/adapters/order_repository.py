"""Where orders live: the `OrderRepository` seam and its MySQL implementation.

The order service talks to orders only through this interface, inside the
transaction it is given (`cursor`), so its logic can run against an in-memory
fake (tests/unit/fakes.py) and against MySQL with the same code."""
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Optional, Protocol

import pymysql

from chalicelib.adapters.db import DUPLICATE_KEY
from chalicelib.domain.errors import OrderNotFound


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


@dataclass(frozen=True)
class OrderLine:
    product_id: int
    quantity: int
    unit_price_cents: int


class OrderRepository(Protocol):
    def add(self, client: str, customer_id: int, user_id: int, client_order_id: str, request_hash: str,
            batch_id: Optional[str]) -> Optional[int]:
        """A new order's id, or None if (client, customer_id, user_id, client_order_id)
        exists. A concurrent duplicate waits until the first one commits or rolls back."""

    def find(self, client: str, customer_id: int, user_id: int, client_order_id: str) -> StoredOrder:
        """The order with this idempotency key (it exists)."""

    def add_lines(self, order_id: int, lines: Mapping[int, OrderLine]) -> None: ...

    def set_total(self, order_id: int, total_cents: int) -> None: ...

    def load(self, order_id: int, lock: bool = False) -> tuple[StoredOrder, list[OrderLine]]:
        """The order and its lines (ascending product id); OrderNotFound if unknown.
        `lock` holds the order row until the transaction ends."""

    def mark_cancelled(self, order_id: int) -> None: ...


_ORDER_COLUMNS = "id, client, customer_id, client_order_id, user_id, status, total_cents, request_hash, created_at"


class MySQLOrderRepository:
    def __init__(self, cursor):
        self.cur = cursor

    def add(self, client, customer_id, user_id, client_order_id, request_hash, batch_id):
        try:
            # The unique key makes a concurrent duplicate wait here until we commit
            # or roll back, before either of us touches stock.
            self.cur.execute(
                "INSERT INTO orders (client, customer_id, user_id, client_order_id, request_hash, total_cents, "
                "batch_id) VALUES (%s, %s, %s, %s, %s, 0, %s)",
                (client, customer_id, user_id, client_order_id, request_hash, batch_id))
        except pymysql.err.IntegrityError as exc:
            if exc.args[0] != DUPLICATE_KEY:
                raise
            return None
        return self.cur.lastrowid

    def find(self, client, customer_id, user_id, client_order_id):
        self.cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE client = %s AND customer_id = %s "
                         "AND user_id = %s AND client_order_id = %s", (client, customer_id, user_id, client_order_id))
        return StoredOrder(**self.cur.fetchone())

    def add_lines(self, order_id, lines):
        self.cur.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) VALUES (%s, %s, %s, %s)",
            [(order_id, line.product_id, line.quantity, line.unit_price_cents) for line in lines.values()])

    def set_total(self, order_id, total_cents):
        self.cur.execute("UPDATE orders SET total_cents = %s WHERE id = %s", (total_cents, order_id))

    def load(self, order_id, lock=False):
        self.cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                         (order_id,))
        row = self.cur.fetchone()
        if row is None:
            raise OrderNotFound(f"Order {order_id} does not exist.", order_id=order_id)
        self.cur.execute("SELECT product_id, quantity, unit_price_cents FROM order_items WHERE order_id = %s "
                         "ORDER BY product_id", (order_id,))
        return StoredOrder(**row), [OrderLine(**item) for item in self.cur.fetchall()]

    def mark_cancelled(self, order_id):
        self.cur.execute("UPDATE orders SET status = 'cancelled', cancelled_at = CURRENT_TIMESTAMP(6) WHERE id = %s",
                         (order_id,))

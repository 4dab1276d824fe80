"""Where orders live: the `OrderRepository` seam and its MySQL implementation.

The order service talks to orders only through this interface, inside the
transaction it is given (`cursor`), so its logic can run against an in-memory
fake (tests/unit/fakes.py) and against MySQL with the same code."""
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping, Optional, Protocol, Sequence

import json
import uuid

import pymysql

from chalicelib.adapters.db import DUPLICATE_KEY
from chalicelib.domain import order_lifecycle
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


class DuplicateOrderKey(Exception):
    """add_many met an idempotency key another transaction committed after the caller looked."""


class OrderRepository(Protocol):
    def add(self, client: str, customer_id: int, user_id: int, client_order_id: str, request_hash: str,
            batch_id: Optional[str], payment_window: int = 0, contact_email: Optional[str] = None) -> Optional[int]:
        """A new order's id, or None if (client, customer_id, user_id, client_order_id)
        exists. A concurrent duplicate waits until the first one commits or rolls back."""

    def find(self, client: str, customer_id: int, user_id: int, client_order_id: str) -> StoredOrder:
        """The order with this idempotency key (it exists)."""

    def lock_customer(self, customer_id: int) -> None:
        """Hold the customer's row (customers.id) until the transaction ends: their
        orders are placed one at a time. Must be the transaction's first statement."""

    def unpaid_units(self, customer_id: int) -> int:
        """Units the customer's orders waiting for payment hold, through every client."""

    def add_lines(self, order_id: int, lines: Mapping[int, OrderLine]) -> None: ...

    def lock_customers(self, customer_ids: Sequence[int]) -> None:
        """lock_customer for several, in ascending id order (first statements of the transaction)."""

    def find_many(self, keys: Sequence[Key]) -> dict[Key, StoredOrder]:
        """The orders that exist among these idempotency keys."""

    def unpaid_units_many(self, customer_ids: Sequence[int]) -> dict[int, int]:
        """unpaid_units of several customers."""

    def add_many(self, orders: Sequence[NewOrder]) -> list[int]:
        """Write the orders, their lines and their order.created outbox rows in a few
        multi-row statements; their ids in the given order. DuplicateOrderKey if a key exists."""

    def set_total(self, order_id: int, total_cents: int) -> None: ...

    def load(self, order_id: int, lock: bool = False) -> tuple[StoredOrder, list[OrderLine]]:
        """The order and its lines (ascending product id); OrderNotFound if unknown.
        `lock` holds the order row until the transaction ends."""

    def owner_of(self, order_id: int) -> tuple[str, int]:
        """(client, customer_id) of the order, read without a lock; OrderNotFound if unknown."""

    def mark_cancelled(self, order_id: int, lifecycle: str = "cancelled") -> None:
        """The order gave its stock back: status cancelled, lifecycle cancelled or expired."""

    def set_lifecycle(self, order_id: int, lifecycle: str, payment_reference: Optional[str] = None) -> None: ...

    def add_event(self, order_id: int, event_type: str, data: dict, first: bool = False) -> OrderEvent:
        """The outbox row of a state change, in the change's transaction (next sequence of the order)."""

    def events(self, order_id: int) -> list[OrderEvent]: ...


_ORDER_COLUMNS = ("id, client, customer_id, client_order_id, user_id, status, total_cents, request_hash, created_at, "
                  "lifecycle, expires_at, payment_reference, contact_email, flash_reservation")


_KEY_COLUMNS = ("client", "customer_id", "user_id", "client_order_id")  # uq_orders_owner, the idempotency key
_KEY = ", ".join(_KEY_COLUMNS)


def _marks(n):
    return ",".join(["%s"] * n)


def _key_marks(n):
    return ",".join(["(%s, %s, %s, %s)"] * n)


class MySQLOrderRepository:
    def __init__(self, cursor):
        self.cur = cursor

    def add(self, client, customer_id, user_id, client_order_id, request_hash, batch_id, payment_window=0,
            contact_email=None):
        """payment_window (seconds): the order waits for payment until then (pending_payment); 0: paid at once."""
        try:
            # The unique key makes a concurrent duplicate wait here until we commit
            # or roll back, before either of us touches stock.
            self.cur.execute(
                "INSERT INTO orders (client, customer_id, user_id, client_order_id, request_hash, total_cents, "
                "batch_id, lifecycle, expires_at, contact_email) VALUES (%s, %s, %s, %s, %s, 0, %s, %s, "
                "IF(%s > 0, CURRENT_TIMESTAMP(6) + INTERVAL %s SECOND, NULL), %s)",
                (client, customer_id, user_id, client_order_id, request_hash, batch_id,
                 "pending_payment" if payment_window else "paid", payment_window, payment_window, contact_email))
        except pymysql.err.IntegrityError as exc:
            if exc.args[0] != DUPLICATE_KEY:
                raise
            return None
        return self.cur.lastrowid

    def find(self, client, customer_id, user_id, client_order_id):
        self.cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE client = %s AND customer_id = %s "
                         "AND user_id = %s AND client_order_id = %s", (client, customer_id, user_id, client_order_id))
        return StoredOrder(**self.cur.fetchone())

    def lock_customer(self, customer_id):
        # First in the transaction, so its first consistent read (unpaid_units) is taken after this
        # lock and sees every order of the customer committed before it. No other path locks a
        # customer row, and this one comes before any order or product row: no deadlock.
        if not self.cur.execute("SELECT id FROM customers WHERE id = %s FOR UPDATE", (customer_id,)):
            # A missing row would only take a gap lock, which two transactions can hold at once.
            raise LookupError(f"customer {customer_id} is not in customers")

    def unpaid_units(self, customer_id):
        self.cur.execute("SELECT COALESCE(SUM(i.quantity), 0) AS units FROM orders o "
                         "JOIN order_items i ON i.order_id = o.id "
                         "WHERE o.customer_id = %s AND o.lifecycle = 'pending_payment'", (customer_id,))
        return int(self.cur.fetchone()["units"])

    def add_lines(self, order_id, lines):
        self.cur.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) VALUES (%s, %s, %s, %s)",
            [(order_id, line.product_id, line.quantity, line.unit_price_cents) for line in lines.values()])

    def lock_customers(self, customer_ids):
        ids = sorted(set(customer_ids))
        if not ids:
            return
        # Ascending ids: two transactions that lock the same customers cannot deadlock on them.
        if self.cur.execute(f"SELECT id FROM customers WHERE id IN ({_marks(len(ids))}) ORDER BY id FOR UPDATE",
                            ids) != len(ids):
            raise LookupError(f"some of customers {ids} are not in customers")

    def find_many(self, keys):
        keys = sorted(set(keys))
        if not keys:
            return {}
        self.cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE ({_KEY}) IN ({_key_marks(len(keys))})",
                         [x for key in keys for x in key])
        return {tuple(r[c] for c in _KEY_COLUMNS): StoredOrder(**r) for r in self.cur.fetchall()}

    def unpaid_units_many(self, customer_ids):
        ids = sorted(set(customer_ids))
        if not ids:
            return {}
        self.cur.execute("SELECT o.customer_id, COALESCE(SUM(i.quantity), 0) AS units FROM orders o "
                         "JOIN order_items i ON i.order_id = o.id "
                         f"WHERE o.customer_id IN ({_marks(len(ids))}) AND o.lifecycle = 'pending_payment' "
                         "GROUP BY o.customer_id", ids)
        units = {row["customer_id"]: int(row["units"]) for row in self.cur.fetchall()}
        return {cid: units.get(cid, 0) for cid in ids}

    def add_many(self, orders):
        if not orders:
            return []
        # Multi-row statements built here: executemany folds rows into one INSERT only when
        # VALUES holds nothing but placeholders, and expires_at is computed by the database's clock.
        try:
            self.cur.execute(
                "INSERT INTO orders (client, customer_id, user_id, client_order_id, request_hash, total_cents, "
                "batch_id, lifecycle, expires_at, contact_email, flash_reservation) VALUES " + ",".join(
                    ["(%s, %s, %s, %s, %s, %s, %s, %s, IF(%s > 0, CURRENT_TIMESTAMP(6) + INTERVAL %s SECOND, NULL), "
                     "%s, %s)"] * len(orders)),
                [x for o in orders for x in (o.client, o.customer_id, o.user_id, o.client_order_id, o.request_hash,
                                             o.total_cents, o.batch_id, o.lifecycle, o.payment_window,
                                             o.payment_window, o.contact_email, o.flash_reservation)])
        except pymysql.err.IntegrityError as exc:
            if exc.args[0] != DUPLICATE_KEY:
                raise
            raise DuplicateOrderKey(str(exc)) from None
        # Read the ids back by key: consecutive auto-increment values are not promised everywhere
        # (interleaved lock mode, an auto_increment_increment above 1).
        keys = sorted(o.key for o in orders)
        self.cur.execute(f"SELECT id, {_KEY} FROM orders WHERE ({_KEY}) IN ({_key_marks(len(keys))})",
                         [x for key in keys for x in key])
        ids = {tuple(r[c] for c in _KEY_COLUMNS): r["id"] for r in self.cur.fetchall()}
        order_ids = [ids[o.key] for o in orders]
        lines = [(order_id, line) for order_id, o in zip(order_ids, orders) for line in o.lines]
        self.cur.execute("INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents, flash_sale_id) "
                         "VALUES " + ",".join(["(%s, %s, %s, %s, %s)"] * len(lines)),
                         [x for order_id, line in lines for x in (order_id, line.product_id, line.quantity,
                                                                  line.unit_price_cents, line.sale_id)])
        self.cur.execute("INSERT INTO order_events (event_id, order_id, sequence, type, payload) VALUES "
                         + ",".join(["(%s, %s, 1, %s, %s)"] * len(orders)),
                         [x for order_id, o in zip(order_ids, orders) for x in (
                             str(uuid.uuid4()), order_id, order_lifecycle.CREATED, json.dumps(
                                 order_lifecycle.created_event(
                                     order_id, o.client_order_id, o.user_id, o.total_cents, o.lifecycle,
                                     {line.product_id: line.quantity for line in o.lines}, o.flash_reservation),
                                 ensure_ascii=False))])
        return order_ids

    def set_total(self, order_id, total_cents):
        self.cur.execute("UPDATE orders SET total_cents = %s WHERE id = %s", (total_cents, order_id))

    def load(self, order_id, lock=False):
        self.cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = %s" + (" FOR UPDATE" if lock else ""),
                         (order_id,))
        row = self.cur.fetchone()
        if row is None:
            raise OrderNotFound(f"Order {order_id} does not exist.", order_id=order_id)
        self.cur.execute("SELECT product_id, quantity, unit_price_cents, flash_sale_id AS sale_id FROM order_items "
                         "WHERE order_id = %s ORDER BY product_id", (order_id,))
        return StoredOrder(**row), [OrderLine(**item) for item in self.cur.fetchall()]

    def owner_of(self, order_id):
        self.cur.execute("SELECT client, customer_id FROM orders WHERE id = %s", (order_id,))
        row = self.cur.fetchone()
        if row is None:
            raise OrderNotFound(f"Order {order_id} does not exist.", order_id=order_id)
        return row["client"], row["customer_id"]

    def mark_cancelled(self, order_id, lifecycle="cancelled"):
        self.cur.execute("UPDATE orders SET status = 'cancelled', lifecycle = %s, cancelled_at = CURRENT_TIMESTAMP(6) "
                         "WHERE id = %s", (lifecycle, order_id))

    def set_lifecycle(self, order_id, lifecycle, payment_reference=None):
        self.cur.execute("UPDATE orders SET lifecycle = %s, payment_reference = COALESCE(%s, payment_reference) "
                         "WHERE id = %s", (lifecycle, payment_reference, order_id))

    def is_due(self, order_id):
        """Is the (locked) order pending past its expires_at, by the database's clock?"""
        self.cur.execute("SELECT lifecycle = 'pending_payment' AND expires_at <= CURRENT_TIMESTAMP(6) AS due "
                         "FROM orders WHERE id = %s", (order_id,))
        row = self.cur.fetchone()
        return bool(row and row["due"])

    def add_event(self, order_id, event_type, data, first=False):
        # The order row is locked (or new) in this transaction: the next sequence is ours.
        # An order's first event (its creation) needs no lookup: one statement on the hot path.
        if first:
            sequence = 1
        else:
            self.cur.execute("SELECT COALESCE(MAX(sequence), 0) + 1 AS next FROM order_events WHERE order_id = %s",
                             (order_id,))
            sequence = self.cur.fetchone()["next"]
        event_id = str(uuid.uuid4())
        self.cur.execute("INSERT INTO order_events (event_id, order_id, sequence, type, payload) "
                         "VALUES (%s, %s, %s, %s, %s)",
                         (event_id, order_id, sequence, event_type, json.dumps(data, ensure_ascii=False)))
        return OrderEvent(event_id, order_id, sequence, event_type, data, None)

    def events(self, order_id):
        self.cur.execute("SELECT event_id, order_id, sequence, type, payload, created_at FROM order_events "
                         "WHERE order_id = %s ORDER BY sequence", (order_id,))
        return [OrderEvent(r["event_id"], r["order_id"], r["sequence"], r["type"], json.loads(r["payload"]),
                           r["created_at"]) for r in self.cur.fetchall()]


class StockLowEvents:
    """Writes `stock.low` rows into the outbox the relay publishes (the unit of work's
    `StockLowOutbox`). A product's event belongs to no order: order_id NULL, sequence 0."""

    STOCK_LOW = "stock.low"

    @staticmethod
    def add_stock_low(cur, product_id, stock, threshold):
        cur.execute("INSERT INTO order_events (event_id, order_id, product_id, sequence, type, payload) "
                    "VALUES (%s, NULL, %s, 0, %s, %s)",
                    (str(uuid.uuid4()), product_id, StockLowEvents.STOCK_LOW,
                     json.dumps({"product_id": product_id, "stock": stock, "low_stock_threshold": threshold})))


def orders_due_for_expiry(db, limit=200):
    """Ids of pending orders past their window, oldest first (ix_orders_expiry)."""
    rows = db.query("SELECT id FROM orders WHERE lifecycle = 'pending_payment' AND expires_at <= CURRENT_TIMESTAMP(6) "
                    "ORDER BY expires_at LIMIT %s", (limit,))
    return [row["id"] for row in rows]


def seconds_to_expiry(db, order_ids):
    """{order id: seconds until its window closes, by the database's clock} for
    those of `order_ids` still pending payment (<= 0: due now)."""
    if not order_ids:
        return {}
    rows = db.query("SELECT id, TIMESTAMPDIFF(MICROSECOND, CURRENT_TIMESTAMP(6), expires_at) AS us FROM orders "
                    f"WHERE lifecycle = 'pending_payment' AND id IN ({','.join(['%s'] * len(order_ids))})",
                    list(order_ids))
    return {row["id"]: row["us"] / 1e6 for row in rows}

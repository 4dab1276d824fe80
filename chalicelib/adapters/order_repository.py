"""Where orders live: MySQL's implementation of the `OrderRepository` port
(service/ports.py), used inside the transaction it is given (`cursor`), and
the stock.low outbox rows."""
import json
import uuid

from chalicelib.domain import order_lifecycle
from chalicelib.domain.errors import DuplicateKey, DuplicateOrderKey, OrderNotFound
from chalicelib.domain.order_records import OrderEvent, OrderLine, StoredOrder
from chalicelib.adapters.db import placeholders

_ORDER_COLUMNS = ("id, client, customer_id, client_order_id, user_id, status, total_cents, request_hash, created_at, "
                  "lifecycle, expires_at, payment_reference, contact_email, flash_reservation")


_KEY_COLUMNS = ("client", "customer_id", "user_id", "client_order_id")  # uq_orders_owner, the idempotency key
_KEY = ", ".join(_KEY_COLUMNS)



def _with_keys(keys):
    """`WHERE` for the orders of these idempotency keys (distinct, sorted), and its parameters."""
    return (f"WHERE ({_KEY}) IN ({','.join(['(%s, %s, %s, %s)'] * len(keys))})",
            [x for key in keys for x in key])


class MySQLOrderRepository:
    def __init__(self, cursor):
        self.cur = cursor

    def add(self, client, customer_id, user_id, client_order_id, request_hash, total_cents, batch_id,
            payment_window=0, contact_email=None):
        """payment_window (seconds): the order waits for payment until then (pending_payment); 0: paid at once."""
        try:
            # The unique key makes a concurrent duplicate wait here until we commit or roll back.
            self.cur.execute(
                "INSERT INTO orders (client, customer_id, user_id, client_order_id, request_hash, total_cents, "
                "batch_id, lifecycle, expires_at, contact_email) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                "IF(%s > 0, CURRENT_TIMESTAMP(6) + INTERVAL %s SECOND, NULL), %s)",
                (client, customer_id, user_id, client_order_id, request_hash, total_cents, batch_id,
                 "pending_payment" if payment_window else "paid", payment_window, payment_window, contact_email))
        except DuplicateKey:
            return None
        return self.cur.lastrowid

    def find(self, client, customer_id, user_id, client_order_id):
        self.cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE client = %s AND customer_id = %s "
                         "AND user_id = %s AND client_order_id = %s LOCK IN SHARE MODE",
                         (client, customer_id, user_id, client_order_id))
        row = self.cur.fetchone()
        return StoredOrder(**row) if row else None

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
        if self.cur.execute(f"SELECT id FROM customers WHERE id IN ({placeholders(len(ids))}) ORDER BY id FOR UPDATE",
                            ids) != len(ids):
            raise LookupError(f"some of customers {ids} are not in customers")

    def find_many(self, keys):
        keys = sorted(set(keys))
        if not keys:
            return {}
        where, params = _with_keys(keys)
        self.cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders {where}", params)
        return {tuple(r[c] for c in _KEY_COLUMNS): StoredOrder(**r) for r in self.cur.fetchall()}

    def unpaid_units_many(self, customer_ids):
        ids = sorted(set(customer_ids))
        if not ids:
            return {}
        self.cur.execute("SELECT o.customer_id, COALESCE(SUM(i.quantity), 0) AS units FROM orders o "
                         "JOIN order_items i ON i.order_id = o.id "
                         f"WHERE o.customer_id IN ({placeholders(len(ids))}) AND o.lifecycle = 'pending_payment' "
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
        except DuplicateKey as exc:
            raise DuplicateOrderKey(str(exc)) from None
        order_ids = self._ids_of_inserted(orders)
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

    def _ids_of_inserted(self, orders):
        """The ids of `orders`, just inserted by one statement, in their order. Within one statement
        each row's id is above the one before it (every auto-increment lock mode), so the ids in
        ascending order are the rows' in order. They are consecutive too, almost always but not
        everywhere (interleaved lock mode, an auto_increment_increment above 1): one aggregate row
        says when they are, before the rows themselves are read."""
        where, params = _with_keys(sorted(o.key for o in orders))
        self.cur.execute(f"SELECT COUNT(*) AS n, MIN(id) AS first, MAX(id) AS last FROM orders {where}", params)
        span = self.cur.fetchone()
        if span["n"] == len(orders) and span["last"] - span["first"] == len(orders) - 1:
            return list(range(span["first"], span["last"] + 1))
        self.cur.execute(f"SELECT id FROM orders {where} ORDER BY id", params)
        ids = [r["id"] for r in self.cur.fetchall()]
        if len(ids) != len(orders):
            raise AssertionError(f"{len(orders)} orders inserted, {len(ids)} found by their keys")
        return ids

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
        if payment_reference is not None:
            # Unique per client (migration 0019): DuplicateKey when another of the client's orders has it.
            self.cur.execute("INSERT INTO payment_references (client, reference, order_id) "
                             "SELECT client, %s, id FROM orders WHERE id = %s", (payment_reference, order_id))
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

"""In-memory stand-ins for the order service's seams (InventoryStrategy,
ProductWrites/WriteSession, OrderRepository, Database reads, BatchStore):
the order and batch logic runs against them with no MariaDB and no Redis.
Each transaction works on a copy of the store that replaces it only on success,
as a rolled-back MySQL transaction would leave nothing behind."""
import copy
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone

from chalicelib.domain.errors import (
    ConcurrencyExhausted,
    DuplicateKey,
    InsufficientStock,
    OrderNotFound,
    ProductNotFound,
    ServiceUnavailable,
)
from chalicelib.domain.order_records import StoredOrder
from chalicelib.service.orders import OrderService


class Store:
    def __init__(self, products):
        # product id -> {"stock", "price_cents", "status", "version"}
        self.products = {pid: {"status": "active", "version": 1, **p} for pid, p in products.items()}
        self.orders = {}        # id -> StoredOrder
        self.lines = {}         # id -> [OrderLine]
        self.next_id = 1
        self.events = []        # (order id, type, data): the outbox


class FakeTransaction:
    """Stands in for ProductTransaction: `cursor` is the store the repository sees."""

    def __init__(self, store):
        self.cursor = store
        self.versions = {}


class FakeSession:
    def __init__(self, world):
        self.world = world
        self.versions = {}

    def run(self, work):
        self.world.transactions += 1
        if self.world.transactions in self.world.outage_at:
            raise ServiceUnavailable("simulated outage")
        draft = copy.deepcopy(self.world.store)
        tx = FakeTransaction(draft)
        result = work(tx)
        self.world.store = draft  # commit
        for pid, version in tx.versions.items():
            self.versions[pid] = max(self.versions.get(pid, 0), version)
        return result


class World:
    """The fakes share one store; `outage_at` names transactions (1-based) that fail with a 503."""

    def __init__(self, products, outage_at=()):
        self.store = Store(products)
        self.outage_at = set(outage_at)
        self.transactions = 0
        self.invalidations = []   # one {product_id: version} per write session that changed anything

    # ProductWrites
    @contextmanager
    def session(self, enqueue=True):
        session = FakeSession(self)
        try:
            yield session
        finally:
            if session.versions:
                self.invalidations.append(session.versions)

    def run(self, work, enqueue=True):
        with self.session(enqueue) as session:
            return session.run(work)

    # Database (reads)
    def read(self, work):
        return work(self.store)


class FakeDatabase:
    def __init__(self, world):
        self.run = world.read


class FakeInventory:
    """An InventoryStrategy over the store; `contended` product ids run out of retries."""
    name = "fake"

    def __init__(self, contended=()):
        self.contended = set(contended)

    def transact(self, session, quantities, work):
        if self.contended & set(quantities):
            raise ConcurrencyExhausted("Too much contention; retry shortly.")
        return session.run(lambda tx: work(tx, self))

    def reserve(self, tx, quantities):
        products = tx.cursor.products
        for pid, qty in quantities.items():
            row = products.get(pid)
            if row is None or row["status"] != "active":
                raise ProductNotFound(f"Product {pid} does not exist or is not for sale.", product_id=pid)
            if row["stock"] < qty:
                raise InsufficientStock(f"Product {pid} has {row['stock']} in stock.", product_id=pid)
        for pid, qty in quantities.items():
            self._change(tx, pid, -qty)
        return {pid: products[pid]["price_cents"] for pid in quantities}

    def release(self, tx, quantities):
        for pid, qty in quantities.items():
            self._change(tx, pid, qty)

    @staticmethod
    def _change(tx, pid, delta):
        row = tx.cursor.products[pid]
        row["stock"] += delta
        row["version"] += 1
        tx.versions[pid] = row["version"]


class FakeOrders:
    """OrderRepository over the store."""

    def __init__(self, store):
        self.store = store

    @staticmethod
    def _key(o):
        return o.client, o.customer_id, o.user_id, o.client_order_id

    def add(self, client, customer_id, user_id, client_order_id, request_hash, total_cents, batch_id,
            payment_window=0, contact_email=None):
        if any(self._key(o) == (client, customer_id, user_id, client_order_id) for o in self.store.orders.values()):
            return None
        order_id = self.store.next_id
        self.store.next_id += 1
        self.store.orders[order_id] = StoredOrder(order_id, client, customer_id, client_order_id, user_id, "created",
                                                  total_cents, request_hash, datetime.now(timezone.utc),
                                                  "pending_payment" if payment_window else "paid",
                                                  contact_email=contact_email)
        return order_id

    def find(self, client, customer_id, user_id, client_order_id):
        key = (client, customer_id, user_id, client_order_id)
        return next((o for o in self.store.orders.values() if self._key(o) == key), None)

    def lock_customer(self, customer_id):
        """One transaction at a time here: nothing to hold."""

    def unpaid_units(self, customer_id):
        return sum(line.quantity for order in self.store.orders.values()
                   if order.customer_id == customer_id and order.lifecycle == "pending_payment"
                   for line in self.store.lines.get(order.id, []))

    def add_lines(self, order_id, lines):
        self.store.lines[order_id] = sorted(lines.values(), key=lambda line: line.product_id)

    def load(self, order_id, lock=False):
        if order_id not in self.store.orders:
            raise OrderNotFound(f"Order {order_id} does not exist.", order_id=order_id)
        return self.store.orders[order_id], list(self.store.lines.get(order_id, []))

    def owner_of(self, order_id):
        order, _ = self.load(order_id)
        return order.client, order.customer_id

    def mark_cancelled(self, order_id, lifecycle="cancelled"):
        self.store.orders[order_id] = replace(self.store.orders[order_id], status="cancelled", lifecycle=lifecycle)

    def set_lifecycle(self, order_id, lifecycle, payment_reference=None):
        client = self.store.orders[order_id].client
        if payment_reference is not None and any(  # MySQL's payment_references (client, reference)
                o.id != order_id and (o.client, o.payment_reference) == (client, payment_reference)
                for o in self.store.orders.values()):
            raise DuplicateKey("payment_references.PRIMARY")
        self.store.orders[order_id] = replace(self.store.orders[order_id], lifecycle=lifecycle,
                                              payment_reference=payment_reference)

    def add_event(self, order_id, event_type, data, first=False):
        self.store.events.append((order_id, event_type, data))

    def events(self, order_id):
        return [e for e in self.store.events if e[0] == order_id]


class Metrics:
    """Records what the service would emit (no metrics window in Redis)."""

    def __init__(self):
        self.emitted = []

    def __call__(self, name, value, unit=None, **dimensions):
        self.emitted.append((name, dimensions))

    def count(self, name, **dimensions):
        return sum(1 for n, d in self.emitted if n == name and all(d.get(k) == v for k, v in dimensions.items()))


class FakeBatches:
    """BatchStore: {batch_id: {position: OrderResult}}."""

    def __init__(self):
        self.results = {}

    def recorded_positions(self, wanted):
        return {b: set(self.results.get(b, {})) & set(positions) for b, positions in wanted.items()}

    def record(self, batch_id, order_count, results, client=""):
        recorded = self.results.setdefault(batch_id, {})
        for position, result in results.items():
            recorded.setdefault(position, result)
        return "done" if len(recorded) >= order_count else "processing"

    def recorded_in(self, cursor, keys):
        return {(b, p) for b, p in keys if p in self.results.get(b, {})}

    def record_many(self, batches, settle=None):
        # One delivery at a time here: nothing for `settle` to find.
        return {b: self.record(b, count, results, client) for b, (count, results, client) in batches.items()}


def order_service(world, inventory=None, metrics=None, payment_window=0):
    return OrderService(FakeDatabase(world), inventory or FakeInventory(), world, repository=FakeOrders,
                        metrics=metrics or Metrics(), payment_window=payment_window)

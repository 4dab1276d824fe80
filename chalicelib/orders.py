"""Batch orders: each order all-or-nothing, each batch partial, exactly-once
effect per (user_id, client_order_id), enforced by a unique key inside the
order's own transaction."""
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Generic, Iterable, Optional, TypeVar, Union

from . import validation as v
from .admission import InFlightLimit
from .catalog import iso
from .errors import (ConcurrencyExhausted, IdempotencyConflict, OrderNotFound, PayloadTooLarge, ServiceUnavailable, ShopError,
                     ValidationError)
from .inventory import InventoryStrategy, Reserver
from .observability import emit
from .order_repository import MySQLOrderRepository, OrderLine, OrderRepository, StoredOrder
from .unit_of_work import ProductTransaction, ProductWrites, WriteSession

log = logging.getLogger(__name__)

MAX_ORDERS_PER_BATCH = 100
MAX_LINES_PER_ORDER = 50
MAX_QUANTITY = 1000
ORDER_FIELDS = ("client_order_id", "user_id", "items")
LINE_FIELDS = ("product_id", "quantity")


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    user_id: int
    quantities: dict  # product_id -> merged quantity, ascending product id (the global lock order)

    @property
    def request_hash(self):
        canonical = json.dumps(sorted(self.quantities.items()), separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class InvalidOrder:
    client_order_id: object
    error: ValidationError


def parse_batch(body):
    """Whole-request problems raise; per-order problems become InvalidOrder entries."""
    v.require_object(body)
    v.reject_unknown(body, ("orders", "batch_id"))
    orders = body.get("orders")
    if not isinstance(orders, list) or not orders:
        raise ValidationError("'orders' must be a non-empty list of orders.", details={"field": "orders"})
    if len(orders) > MAX_ORDERS_PER_BATCH:
        raise PayloadTooLarge(f"At most {MAX_ORDERS_PER_BATCH} orders per batch; got {len(orders)}.")
    return [parse_order(raw, i) for i, raw in enumerate(orders)]


def parse_order(raw, index=0):
    client_order_id = raw.get("client_order_id") if isinstance(raw, dict) else None
    try:
        v.require_object(raw, f"orders[{index}]")
        v.reject_unknown(raw, ORDER_FIELDS, f"orders[{index}]")
        for field in ORDER_FIELDS:
            if field not in raw:
                raise ValidationError(f"'{field}' is required.", details={"field": field})
        coid = raw["client_order_id"]
        if not isinstance(coid, str) or not 1 <= len(coid) <= 64 or not coid.isprintable():
            raise ValidationError("'client_order_id' must be a string of 1 to 64 printable characters.",
                                  details={"field": "client_order_id"})
        user_id = v.integer(raw["user_id"], "user_id", 1)
        items = raw["items"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_LINES_PER_ORDER:
            raise ValidationError(f"'items' must be a list of 1 to {MAX_LINES_PER_ORDER} lines.",
                                  details={"field": "items"})
        quantities = {}
        for n, line in enumerate(items):
            v.require_object(line, f"items[{n}]")
            v.reject_unknown(line, LINE_FIELDS, f"items[{n}]")
            for field in LINE_FIELDS:
                if field not in line:
                    raise ValidationError(f"'items[{n}].{field}' is required.", details={"field": field})
            pid = v.integer(line["product_id"], "product_id", 1)
            qty = v.integer(line["quantity"], "quantity", 1, MAX_QUANTITY)
            # Duplicate lines of one product are merged: one lock, one update per product.
            quantities[pid] = quantities.get(pid, 0) + qty
        return OrderRequest(coid, user_id, dict(sorted(quantities.items())))
    except ValidationError as exc:
        return InvalidOrder(client_order_id if isinstance(client_order_id, str) else None, exc)


@dataclass(frozen=True)
class OrderResult:
    """What became of one order of a batch (the API's per-order result)."""
    client_order_id: Optional[str]
    order_id: Optional[int] = None
    total_cents: Optional[int] = None
    duplicate: bool = False
    error: Optional[ShopError] = None

    @property
    def created(self) -> bool:
        return self.error is None

    @property
    def transient(self) -> bool:
        """Failed for a reason that a retry can cure (contention outlived its retries)."""
        return isinstance(self.error, ServiceUnavailable)

    def to_api(self) -> dict:
        if self.created:
            return {"client_order_id": self.client_order_id, "status": "created", "order_id": self.order_id,
                    "total_cents": self.total_cents, "duplicate": self.duplicate}
        error = {"code": self.error.code, "message": self.error.message}
        if "product_id" in self.error.extra:
            error["product_id"] = self.error.extra["product_id"]
        return {"client_order_id": self.client_order_id, "status": "failed", "error": error}


def failed(client_order_id, exc: ShopError) -> OrderResult:
    return OrderResult(client_order_id, error=exc)


K = TypeVar("K")


@dataclass
class BatchOutcome(Generic[K]):
    """The results of a run of orders, keyed as given, in the order they were placed.
    `interrupted` is the outage that stopped the run; `results` then hold what
    happened before it (committed orders included)."""
    results: dict
    interrupted: Optional[ServiceUnavailable] = None

    def committed_client_order_ids(self) -> list:
        return [r.client_order_id for r in self.results.values() if r.created]


class OrderService:
    def __init__(self, db, strategy: InventoryStrategy, writes: ProductWrites,
                 repository: Callable[[object], OrderRepository] = MySQLOrderRepository, max_in_flight=16,
                 metrics=emit):
        self.db = db
        self.emit = metrics
        self.strategy = strategy
        self.writes = writes
        self.repository = repository  # the OrderRepository inside a transaction's cursor
        # Admission control: at most this many batches are being worked on in a
        # process; the rest wait asleep. Hundreds of runnable threads fighting
        # for the GIL (and for Redis/MySQL connections) collapse throughput;
        # this keeps it flat as clients grow, as RDS Proxy plus a bounded
        # Lambda concurrency would.
        self._admission = InFlightLimit(max_in_flight)

    def place_all(self, orders: Iterable[tuple[K, Union[OrderRequest, InvalidOrder]]],
                  batch_id=None) -> BatchOutcome[K]:
        """The one batch loop (sync batches and SQS ingestion): each order on its
        own, in order. The products of every committed order are invalidated once
        at the end, also when an outage stops the run half-way."""
        results = {}
        with self._admission, self.writes.session(enqueue=False) as session:
            try:
                for key, order in orders:
                    if isinstance(order, InvalidOrder):
                        results[key] = failed(order.client_order_id, order.error)
                    else:
                        results[key] = self.place(session, order, batch_id)
            except ServiceUnavailable as exc:
                return BatchOutcome(results, exc)
        return BatchOutcome(results)

    def place_batch(self, parsed, batch_id=None):
        """A sync batch: results in request order, or a 503 that says which orders committed."""
        outcome = self.place_all(enumerate(parsed), batch_id)
        if outcome.interrupted is not None:
            exc = outcome.interrupted
            committed = outcome.committed_client_order_ids()
            if committed:
                # The client's retry of the batch finds these as duplicates.
                exc.extra["details"] = {"committed_client_order_ids": committed}
                exc.message = exc.message + (" Orders listed in details were committed before the failure;"
                                             " retrying the batch returns them as duplicates.")
            raise exc
        results = [r.to_api() for r in outcome.results.values()]
        created = sum(1 for r in outcome.results.values() if r.created)
        return {"results": results, "summary": {"created": created, "failed": len(results) - created}}

    def place(self, session: WriteSession, order: OrderRequest, batch_id=None) -> OrderResult:
        """One order in its own transaction of `session`. Business failures are
        results; infrastructure failures (ServiceUnavailable) propagate so the
        caller can answer 503 or retry."""
        started = time.perf_counter()
        try:
            result = self.strategy.transact(session, order.quantities,
                                            lambda tx, reserver: self._place(tx, reserver, order, batch_id))
        except ConcurrencyExhausted as exc:
            # Contention, not an outage: this order fails retryably, the batch goes on.
            result = failed(order.client_order_id, exc)
        except ServiceUnavailable:
            raise
        except ShopError as exc:
            result = failed(order.client_order_id, exc)
        if result.created and not result.duplicate:
            self.emit("OrdersCreated", 1)
            self.emit("OrderLatency", (time.perf_counter() - started) * 1000, unit="Milliseconds")
        elif not result.created:
            self.emit("OrdersFailed", 1, code=result.error.code)
        return result

    def _place(self, tx: ProductTransaction, reserver: Reserver, order: OrderRequest, batch_id) -> OrderResult:
        orders = self.repository(tx.cursor)
        order_id = orders.add(order.user_id, order.client_order_id, order.request_hash, batch_id)
        if order_id is None:
            return self._replay(orders.find(order.user_id, order.client_order_id), order)
        prices = reserver.reserve(tx, order.quantities)
        orders.add_lines(order_id, {pid: OrderLine(pid, qty, prices[pid]) for pid, qty in order.quantities.items()})
        total = sum(qty * prices[pid] for pid, qty in order.quantities.items())
        orders.set_total(order_id, total)
        return OrderResult(order.client_order_id, order_id, total)

    @staticmethod
    def _replay(existing: StoredOrder, order: OrderRequest) -> OrderResult:
        if existing.request_hash != order.request_hash:
            raise IdempotencyConflict(
                f"client_order_id {order.client_order_id!r} was already used by user {order.user_id} "
                "for different lines."
            )
        return OrderResult(order.client_order_id, existing.id, existing.total_cents, duplicate=True)

    # --- reads and cancel ---------------------------------------------------

    @staticmethod
    def _to_api(order: StoredOrder, lines):
        return {"order_id": order.id, "client_order_id": order.client_order_id, "user_id": order.user_id,
                "status": order.status, "total_cents": order.total_cents,
                "items": [{"product_id": line.product_id, "quantity": line.quantity,
                           "unit_price_cents": line.unit_price_cents} for line in lines],
                "created_at": iso(order.created_at)}

    def get(self, order_id):
        return self.db.run(lambda cur: self._to_api(*self.repository(cur).load(order_id)))

    def cancel(self, order_id):
        """Return the stock exactly once: the order row lock serialises cancels,
        and only the one that sees status 'created' restocks."""

        def work(tx: ProductTransaction):
            orders = self.repository(tx.cursor)
            order, lines = orders.load(order_id, lock=True)
            if order.status == "cancelled":
                return order, lines, False
            self.strategy.release(tx, {line.product_id: line.quantity for line in lines})
            orders.mark_cancelled(order_id)
            return replace(order, status="cancelled"), lines, True

        order, lines, restocked = self.writes.run(work, enqueue=False)
        if restocked:
            self.emit("OrdersCancelled", 1)
        return self._to_api(order, lines)

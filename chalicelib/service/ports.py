"""The ports: what the services need from the outside world, declared once.

Services and the domain name only these; adapters/ implements them (MySQL,
Redis, SQS/SNS) and bootstrap.py plugs the implementations in. A port method
raises the domain's errors (domain/errors.py: DuplicateKey, CacheUnavailable,
StoreFull, ServiceUnavailable), never a driver's."""
from __future__ import annotations

from typing import Callable, ContextManager, Iterable, Mapping, Optional, Protocol, Sequence, TypeVar

from chalicelib.domain.order_records import Key, NewOrder, OrderEvent, OrderLine, StoredOrder
from chalicelib.domain.reservations import Admission, Settlement
from chalicelib.domain.search_query import SearchPage, SearchQuery

T = TypeVar("T")
Quantities = Mapping[int, int]  # product id -> merged quantity, ascending id


# --- product writes (adapters/product_writes.py) ---------------------------

class SearchIndex(Protocol):
    def index(self, cur, rows: Sequence[Mapping]) -> None:
        """(Re)index full product rows inside the product write transaction `cur`."""

    def set_in_stock(self, cur, in_stock: Mapping[int, bool]) -> None:
        """{product id: in stock now} of products whose stock `cur` took to zero or back from it."""


class SearchBackend(SearchIndex, Protocol):
    def search(self, query: SearchQuery) -> SearchPage:
        """One page of active products matching `query`; raises ServiceUnavailable."""


class ProductReads(Protocol):
    """Product reads outside a write transaction (adapters/product_reads.py)."""

    def rows(self, ids: Iterable[int]) -> list[dict]:
        """Full rows of those that exist, in any order."""

    def versions(self, ids: Iterable[int]) -> dict[int, int]: ...

    def best_sellers(self, n: int, recent_orders: int) -> list[int]: ...

    def newest_active(self, n: int) -> list[int]: ...


class CacheInvalidator(Protocol):
    def after_commit(self, versions: Mapping[int, int], search: bool = True, enqueue: bool = True) -> None:
        """Invalidate the cached copies older than `versions`; never raises."""


class StockLowOutbox(Protocol):
    def add_stock_low(self, cur, product_id: int, stock: int, threshold: int) -> None:
        """Write the `stock.low` outbox row inside the product write transaction `cur`."""


class ProductTransaction(Protocol):
    """The product writes of one transaction; `cursor` is for everything else."""
    cursor: object
    versions: dict[int, int]

    def select(self, ids: Iterable[int], columns: str = ..., lock: bool = False) -> dict[int, dict]: ...

    def taken_skus(self, skus: Sequence[str]) -> list[str]:
        """Those of `skus` a product has (as the sku column's collation compares)."""

    def insert(self, products: Sequence[Mapping]) -> list[dict]:
        """The new products' full rows; DuplicateKey on a taken sku."""

    def update(self, ids: Iterable[int], assignments: str, params: Sequence = (), where: str = "",
               where_params: Sequence = (), reindex: bool = False,
               stock_delta: Optional[Mapping[int, int]] = None) -> int: ...

    def take_stock(self, quantities: Quantities, prices: Optional[Mapping[int, int]] = None) -> int:
        """Take every line whose row is active with enough stock (and, with `prices`, still at
        that unit price) in one guarded statement; the number of rows taken."""

    def compare_and_set(self, product_id: int, version: int, assignments: str, params: Sequence = (),
                        where: str = "", where_params: Sequence = (), stock_delta: Optional[int] = None) -> bool: ...


class WriteSession(Protocol):
    def run(self, work: Callable[[ProductTransaction], T]) -> T:
        """`work(tx)` in one transaction; its product versions are invalidated when the session ends."""


class ProductWrites(Protocol):
    def session(self, enqueue: bool = True) -> ContextManager[WriteSession]: ...

    def run(self, work: Callable[[ProductTransaction], T], enqueue: bool = True) -> T: ...


# --- stock (adapters/inventory.py) -------------------------------------------

class Reserver(Protocol):
    def reserve(self, tx: ProductTransaction, quantities: Quantities) -> dict[int, int]:
        """Take the stock of every line or none; {product_id: unit price in cents}."""


class InventoryStrategy(Protocol):
    name: str

    def transact(self, session: WriteSession, quantities: Quantities,
                 work: Callable[[ProductTransaction, Reserver], T]) -> T:
        """Run `work(tx, reserver)` in a transaction of `session` (retrying as the strategy needs)."""

    def release(self, tx: ProductTransaction, quantities: Quantities) -> None:
        """Give the stock of a cancelled order back, inside `tx`."""


# --- orders (adapters/order_repository.py, adapters/batch_store.py) ---------

class OrderRepository(Protocol):
    def add(self, client: str, customer_id: int, user_id: int, client_order_id: str, request_hash: str,
            total_cents: int, batch_id: Optional[str], payment_window: int = 0,
            contact_email: Optional[str] = None) -> Optional[int]:
        """A new order's id, or None if (client, customer_id, user_id, client_order_id)
        exists. A concurrent duplicate waits until the first one commits or rolls back."""

    def find(self, client: str, customer_id: int, user_id: int, client_order_id: str) -> Optional[StoredOrder]:
        """The order with this idempotency key, or None. A locking read: it sees an order
        committed after the transaction's snapshot, and waits for one still being written."""

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


class Outbox(Protocol):
    """The events the relay publishes, the consumers' dedupe records, and the orders
    waiting for payment by the database's clock (the expiry sweep and timers)."""

    def unpublished(self, limit: int) -> list[dict]:
        """The oldest unpublished event rows, in id order."""

    def mark_published(self, ids: Sequence[int]) -> None: ...

    def oldest_unpublished_seconds(self) -> float: ...

    def dedupe_consumers(self) -> list[str]: ...

    def prune_dedupe(self, table: str, older_than_days: int, limit: int) -> int: ...

    def due(self, limit: int = 200) -> list[int]:
        """Ids of pending orders past their window, oldest first."""

    def seconds_left(self, order_ids: Sequence[int]) -> dict[int, float]:
        """{order id: seconds until its window closes (<= 0: due now)} of those still pending."""


class BatchStore(Protocol):
    def ensure(self, batch_id: str, order_count: int, client: str = "") -> None: ...

    def recorded_positions(self, wanted: Mapping[str, Sequence[int]]) -> dict[str, set[int]]:
        """{batch_id: those of its `wanted` positions that have a result}."""

    def record(self, batch_id: str, order_count: int, results: Mapping, client: str = "") -> str:
        """Record {position: OrderResult} and bring the batch's status up to date; the status."""

    def recorded_in(self, cursor, keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Inside an order transaction: the (batch_id, position) of `keys` already answered, the
        batches' rows held shared until it ends."""

    def record_many(self, batches: Mapping[str, tuple[int, Mapping, str]],
                    settle: Optional[Callable[[object, Mapping], Mapping]] = None) -> dict[str, str]:
        """record() of {batch_id: (order_count, results, client)} in one transaction, the batches'
        rows held; `settle(cursor, {(batch_id, position): result})` may replace results first.
        {batch_id: status}."""

    def get(self, batch_id, owner=None, resolve=None) -> dict: ...


class NotificationLog(Protocol):
    """The events mailed, once each (adapters/notification_log.py), and what an email says."""

    def recorded(self, event_ids: list[str]) -> set[str]:
        """Those of `event_ids` mailed already."""

    def products(self, product_ids: list[int]) -> dict[int, dict]:
        """{id: {sku, name}} of those that exist."""

    def orders(self, order_ids: list[int]) -> dict[int, dict]:
        """{id: {total_cents, contact_email}} of those that exist."""

    def order_items(self, order_ids: list[int]) -> dict[int, list[dict]]:
        """{order_id: [{product_id, quantity, unit_price_cents, name}] in product order}."""

    def record_and_send(self, entries: list[tuple[str, str, Optional[str]]],
                        send_all: Callable[[list[str]], dict]) -> dict:
        """Record each (event_id, type, recipient) and call `send_all(event ids recorded now)` in one
        transaction; {event_id: True | False (recorded already) | the exception its send raised}."""


class SaleRecords(Protocol):
    """MySQL's record of the flash sales (adapters/sale_records.py)."""

    def product_ids(self) -> list[int]: ...

    def get(self, product_id: int) -> Optional[dict]:
        """{product_id, sale_id, sale_stock, per_customer_limit, started_at}, or None."""

    def add(self, product_id: int, sale_id: str, sale_stock: int, limit: Optional[int],
            admit: Callable[[Optional[dict]], None]) -> None:
        """Record the sale if `admit(product)` passes with the product held; DuplicateKey if on sale."""

    def remove(self, product_id: int, sale_id: Optional[str] = None) -> None: ...

    def orders_of(self, reservation_ids: Sequence[str]) -> list[dict]:
        """The orders written for those flash reservations."""

    def snapshot(self, product_id: int, sale_id: str) -> tuple[int, int, list[dict]]:
        """(stock, newest order id, the sale's order lines), read together."""


class PairCountingTransaction(Protocol):
    def first_time(self, event_id: str) -> bool:
        """Record the event as counted; False if it already was."""

    def order_lines(self, order_ids: Sequence[int]) -> dict[int, dict[int, int]]: ...

    def add(self, rows: Sequence[tuple[tuple[int, int], int]]) -> None:
        """Add each ((product_id, other_id), change), in the order given (the lock order)."""


class PairCounts(Protocol):
    """Co-purchase counts (adapters/pair_counts.py)."""

    def counting(self, work: Callable[[PairCountingTransaction], T]) -> T:
        """`work(tx)` in one transaction."""

    def product_exists(self, product_id: int) -> bool: ...

    def ranking(self, product_id: int, limit: int) -> list[tuple[int, int]]:
        """[(partner id, orders)] best first, of partners active and in stock now."""


# --- queues (adapters/queues.py) ---------------------------------------------

class QueuePublisher(Protocol):
    batch_size: int       # the most messages one SendMessageBatch call takes
    call_seconds: float   # the longest one call may take, its retries included

    def queue_url(self, name: str) -> str:
        """Looked up once per process; NothingSent if the lookup fails."""

    def send(self, queue_name: str, body: dict) -> str: ...

    def send_batch(self, queue_name: str, bodies: Sequence[dict], delays: Optional[Sequence[int]] = None) -> None:
        """Raises if any message was refused: NothingSent when none can be on the queue."""

    def depth(self, queue_name: str) -> int: ...


# --- the flash-sale gate (adapters/flash_gate.py) ----------------------------

class FlashGate(Protocol):
    """Every call raises CacheUnavailable when the state Redis is, StoreFull when it is full
    and the call would have added to it."""
    lease_ms: int

    def reservation_key(self, owner: str) -> str: ...

    def start(self, product_id: int, sale_id: str, sale_stock: int, limit: Optional[int]) -> None: ...

    def stop(self, product_id: int) -> None: ...

    def restore(self, product_id, sale_id, sale_stock, limit, remaining, watermark, held, returned=()) -> None: ...

    def lost_since(self, product_id: int, now_ms: Optional[int] = None) -> int: ...

    def resync(self, product_id, sale_id, seq, remaining, watermark, returned=()) -> Optional[int]: ...

    def cap(self, product_id, sale_id, most, seen) -> Optional[int]: ...

    def return_units(self, order_id: int, customer: str, lines) -> int: ...

    def leases(self) -> int: ...

    def on_sale(self, product_ids: Iterable[int]) -> set[int]: ...

    def sale(self, product_id: int) -> Optional[dict]: ...

    def admit_many(self, orders, now_ms: Optional[int] = None) -> list[Admission]: ...

    @staticmethod
    def lines(packed: str) -> tuple: ...

    def records(self, keys: Iterable[str]) -> list[dict]: ...

    def lookup(self, rid: str) -> Optional[dict]: ...

    def lookup_many(self, rids: Iterable[str]) -> dict[str, dict]: ...

    def confirm(self, reservations) -> None: ...

    def release(self, reservations) -> int: ...

    def sweep(self, now_ms: Optional[int] = None, max_records: int = 1000) -> int: ...

    def settle(self, settlements: Sequence[Settlement]) -> None: ...

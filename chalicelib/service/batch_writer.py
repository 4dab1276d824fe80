"""The ordinary orders of one batch (a sync batch, an SQS message of the ingest
consumer) written in one transaction (docs/design.md, "Batches in bulk").

Each order is decided in request order against the stock as the batch leaves it,
and fails alone with the code the per-order path would give it (OrderService.place):
a key used before replays or conflicts (also a key used twice in the batch), a
customer's unpaid units are capped, an unsellable line fails the whole order. Then
the orders, their lines and their order.created rows go in multi-row inserts, the
stock of every product in one guarded UPDATE (rows locked in ascending id order),
and the batch commits once.

The write is optimistic first, as the flash writer's (service/flash_writer.py):
decided from the product rows as read, the rows locked only by the closing
guarded UPDATE, so a hot row is held for that statement and the commit. When a
line would fail on the rows as read, or the guard falls short (stock, status or
price moved), the batch is decided again with its rows locked first. A
concurrent request that commits one of the batch's keys first (a replay racing
its first request) or contention that outlives the retries hands the batch
back: the caller places its orders one by one.
"""
from typing import Callable, Optional, Sequence

from chalicelib.domain import order_lifecycle as lifecycle
from chalicelib.domain.customer_limits import CustomerLimits
from chalicelib.domain.errors import ConcurrencyExhausted, DuplicateOrderKey, QuantityLimitExceeded
from chalicelib.domain.order_records import NewOrder, OrderLine
from chalicelib.domain.orders import K, OrderRequest, OrderResult, failed, idempotency_conflict
from chalicelib.domain.products import unsellable
from chalicelib.service.ports import OrderRepository, ProductTransaction, WriteSession


class _NeedsLockedWrite(Exception):
    """The rows as read cannot settle the batch: decide it again with them locked."""


def key_of(order: OrderRequest):
    return order.client, order.customer_id, order.user_id, order.client_order_id


class BatchWriter:
    def __init__(self, repository: Callable[[object], OrderRepository], customer_limits=CustomerLimits(),
                 payment_windows=lifecycle.PaymentWindows(), lock_first=False):
        self.repository = repository  # the OrderRepository inside a transaction's cursor
        self.customer_limits = customer_limits
        self.payment_windows = payment_windows
        # Lock every product row before deciding (the measured alternative; docs/design.md).
        self.lock_first = lock_first

    def write(self, session: WriteSession, orders: Sequence[tuple[K, OrderRequest]],
              batch_of: Callable[[K], Optional[str]] = lambda key: None,
              recorded: Optional[Callable[[object, list], set]] = None) -> Optional[dict[K, OrderResult]]:
        """{key: result} of every order, committed together (None for a key `recorded(cursor,
        keys)`, asked first in the transaction, says another delivery answered); None when the
        batch must be placed order by order (nothing of it was written). `batch_of(key)`: the
        async batch the order came in. ServiceUnavailable propagates."""
        try:
            try:
                return session.run(lambda tx: self._write(tx, orders, batch_of, recorded, lock=self.lock_first))
            except _NeedsLockedWrite:
                return session.run(lambda tx: self._write(tx, orders, batch_of, recorded, lock=True))
        except (DuplicateOrderKey, ConcurrencyExhausted):
            return None

    def _write(self, tx: ProductTransaction, orders, batch_of, recorded, lock):
        # Before any other row: what a concurrent delivery answered is its to answer.
        answered = recorded(tx.cursor, [k for k, _ in orders]) if recorded is not None else set()
        orders = [(k, order) for k, order in orders if k not in answered]
        repo = self.repository(tx.cursor)
        customers = sorted({order.customer_id for _, order in orders if order.customer_id})
        # Customer rows first, then product rows, each in ascending id order: the per-order path's order too.
        repo.lock_customers(customers)
        rows = tx.select({pid for _, order in orders for pid in order.quantities},
                         "id, stock, low_stock_threshold, status, price_cents", lock=lock)
        # Consistent reads after the locks: they see every order committed before them.
        existing = repo.find_many([key_of(order) for _, order in orders])
        held = repo.unpaid_units_many(customers)
        left = {pid: row["stock"] for pid, row in rows.items()}
        results, new, first_of_key = dict.fromkeys(answered), [], {}
        for k, order in orders:
            key = key_of(order)
            if key in existing or key in first_of_key:
                results[k] = self.replay(existing.get(key) or first_of_key[key], order)
                continue
            units = sum(order.quantities.values())
            window = self.payment_windows.for_order(order.customer_id)
            try:
                if order.customer_id:
                    self.customer_limits.check_unpaid(held[order.customer_id], units)
            except QuantityLimitExceeded as exc:  # the customer row is locked: this answer is final
                results[k] = failed(order.client_order_id, exc)
                continue
            error = next(filter(None, (unsellable(pid, rows.get(pid), qty, left.get(pid))
                                       for pid, qty in order.quantities.items())), None)
            if error is not None:
                if not lock:
                    raise _NeedsLockedWrite()  # rows read without a lock may be stale: only locked ones fail a line
                results[k] = failed(order.client_order_id, error)
                continue
            for pid, qty in order.quantities.items():
                left[pid] -= qty
            if order.customer_id and window:
                held[order.customer_id] += units
            lines = [OrderLine(pid, qty, rows[pid]["price_cents"]) for pid, qty in order.quantities.items()]
            first_of_key[key] = NewOrder(order.client, order.customer_id, order.user_id, order.client_order_id,
                                         order.request_hash, sum(qty * rows[pid]["price_cents"]
                                                                 for pid, qty in order.quantities.items()),
                                         lines, window, batch_of(k), order.contact_email)
            new.append((k, first_of_key[key]))
        if not new:
            return results
        ids = dict(zip([o.key for _, o in new], repo.add_many([o for _, o in new])))
        taken = {pid: rows[pid]["stock"] - left[pid] for pid in left if left[pid] != rows[pid]["stock"]}
        # The one statement that locks the products when the rows were read without: last, held until commit.
        if tx.take_stock(taken, {pid: rows[pid]["price_cents"] for pid in taken}) != len(taken):
            if not lock:
                raise _NeedsLockedWrite()
            raise AssertionError(f"guarded update of locked products {sorted(taken)} fell short")
        for k, o in new:
            results[k] = OrderResult(o.client_order_id, ids[o.key], o.total_cents)
        for k, order in orders:  # a key's second use in the batch replays its first, now written
            result = results[k]
            if result.order_id is None and result.created:
                results[k] = OrderResult(order.client_order_id, ids[key_of(order)], result.total_cents,
                                         duplicate=True)
        return results

    @staticmethod
    def replay(earlier, order: OrderRequest) -> OrderResult:
        """The answer to a key used before: by a committed order (StoredOrder) or earlier in this batch (NewOrder)."""
        if earlier.request_hash != order.request_hash:
            return failed(order.client_order_id, idempotency_conflict(order.client_order_id, order.user_id))
        return OrderResult(order.client_order_id, getattr(earlier, "id", None), earlier.total_cents, duplicate=True,
                           status=getattr(earlier, "status", "created"))

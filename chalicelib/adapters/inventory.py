"""Stock reservation strategies, selected by INVENTORY_STRATEGY.

Every strategy reserves the merged lines of one order in product-id order
(one global lock order: no deadlock between orders), inside the order's
transaction, and every one keeps a MySQL guard (`stock >= q` or a version
compare) so stock can never go negative whatever happens around it.

Each implements the `InventoryStrategy` port (service/ports.py):
`transact(session, quantities, work)` runs `work(tx, reserver)` in a
transaction of the write session (product_writes.py); `work` calls
`reserver.reserve(tx, quantities)`, which returns {product_id: unit price}
or raises ProductNotFound / InsufficientStock.
"""
import logging
import random
import time
import uuid

from chalicelib.adapters.product_writes import ProductTransaction, quantity_case
from chalicelib.domain.errors import CacheUnavailable, ConcurrencyExhausted
from chalicelib.domain.products import unsellable

log = logging.getLogger(__name__)


class _ReleasesStock:
    @staticmethod
    def release(tx, quantities):
        """One statement for every line; a restock cannot oversell, so no strategy needs more."""
        case, params = quantity_case(quantities)
        tx.update(quantities, f"stock = stock + {case}", params, stock_delta=quantities)


def _read_sellable(tx: ProductTransaction, quantities, lock):
    """The order's product rows (locked FOR UPDATE in id order if `lock`),
    or the business error that stops the order."""
    rows = tx.select(quantities, "id, stock, low_stock_threshold, status, price_cents, version", lock=lock)
    for pid in quantities:
        error = unsellable(pid, rows.get(pid), quantities[pid])
        if error is not None:
            raise error
    return rows


def _prices(tx: ProductTransaction, quantities):
    """Unit prices of rows this transaction has just updated (its own writes; records their versions,
    and their new stock and threshold, which is all a low-stock check needs: no extra round trip)."""
    return {pid: row["price_cents"]
            for pid, row in tx.select(quantities, "price_cents, stock, low_stock_threshold").items()}


class _PartlyTaken(Exception):
    """A multi-line guarded UPDATE took some lines but not all."""


class GuardedStrategy(_ReleasesStock):
    """The simplest correct baseline: one guarded UPDATE takes every line of the
    order (`stock >= q` per row, rows locked in id order by the IN range scan).

    An order that cannot be sold fails on the update itself, without a lock
    taken first. The rare order whose lines were taken only in part (another
    line ran out or went inactive) starts over in a new transaction with its
    rows locked first, so the update that follows cannot fall short again."""

    name = "guarded"

    def transact(self, session, quantities, work):
        try:
            return session.run(lambda tx: work(tx, self))
        except _PartlyTaken:
            return session.run(lambda tx: work(tx, _LockedFirst))

    def reserve(self, tx, quantities):
        taken = tx.take_stock(quantities)
        if taken == 0:
            # Raises why the order cannot be sold; if it can after all (restocked
            # between the two statements), we now hold the row locks and retake.
            _read_sellable(tx, quantities, lock=True)
            taken = tx.take_stock(quantities)
        if taken != len(quantities):
            raise _PartlyTaken()
        return _prices(tx, quantities)


class _LockedFirst:
    @staticmethod
    def reserve(tx, quantities):
        _read_sellable(tx, quantities, lock=True)
        if tx.take_stock(quantities) != len(quantities):
            raise AssertionError(f"guarded update of locked products {sorted(quantities)} fell short")
        return _prices(tx, quantities)


class PessimisticStrategy(_ReleasesStock):
    """SELECT ... FOR UPDATE on the order's products in id order, check, update."""

    name = "pessimistic"

    def transact(self, session, quantities, work):
        return session.run(lambda tx: work(tx, self))

    def reserve(self, tx, quantities):
        rows = _read_sellable(tx, quantities, lock=True)
        for pid, qty in quantities.items():
            tx.update([pid], "stock = stock - %s", [qty], stock_delta={pid: -qty})
        return {pid: rows[pid]["price_cents"] for pid in quantities}


class OptimisticConflict(Exception):
    """A version compare-and-set lost a race; the whole order is retried."""


class OptimisticStrategy(_ReleasesStock):
    """Read stock and version without locks, then compare-and-set each row.

    A lost race retries the whole order in a NEW transaction (under REPEATABLE
    READ a retry inside the old one would re-read its old snapshot)."""

    name = "optimistic"

    def __init__(self, max_attempts=40, base_delay=0.002, max_delay=0.05):
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay

    def transact(self, session, quantities, work):
        for attempt in range(1, self.max_attempts + 1):
            try:
                return session.run(lambda tx: work(tx, self))
            except OptimisticConflict:
                time.sleep(random.uniform(0, min(self.max_delay, self.base_delay * 2 ** min(attempt, 10))))
        raise ConcurrencyExhausted(
            f"Gave up after {self.max_attempts} optimistic attempts on a contended product; retry shortly."
        )

    def reserve(self, tx, quantities):
        rows = _read_sellable(tx, quantities, lock=False)
        for pid, qty in quantities.items():
            if not tx.compare_and_set(pid, rows[pid]["version"], "stock = stock - %s", [qty],
                                      where="stock >= %s", where_params=[qty], stock_delta=-qty):
                raise OptimisticConflict(pid)
        return {pid: rows[pid]["price_cents"] for pid in quantities}


# KEYS: lock keys. ARGV[1]: token. Deletes only locks still holding our token.
_RELEASE = """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
"""


class RedisLockStrategy(_ReleasesStock):
    """Per-product Redis locks (id order, random token, lease, compare-and-delete
    release) in front of the guarded UPDATE. A lease can expire, so the MySQL
    guard stays underneath; if Redis is unavailable it falls back to row locks."""

    name = "redis_lock"

    def __init__(self, gateway, lease_ms=5000, wait_seconds=5.0):
        self.gateway = gateway
        self.lease_ms = lease_ms
        self.wait_seconds = wait_seconds
        self._guarded = GuardedStrategy()
        self._fallback = PessimisticStrategy()

    def _lock_key(self, pid):
        return self.gateway.key(f"lock:product:{pid}", tag=pid)

    def _acquire(self, keys, token):
        acquired = []
        deadline = time.monotonic() + self.wait_seconds
        try:
            for key in keys:
                delay = 0.001
                while not self.gateway.call(lambda r: r.set(key, token, nx=True, px=self.lease_ms), key=key):
                    if time.monotonic() > deadline:
                        raise ConcurrencyExhausted("Timed out waiting for a product lock; retry shortly.")
                    time.sleep(random.uniform(0, delay))
                    delay = min(delay * 2, 0.02)
                acquired.append(key)
        except BaseException:
            self._release(acquired, token)
            raise
        return acquired

    def _release(self, keys, token):
        if not keys:
            return
        script = self.gateway.script(_RELEASE)
        # Each product's lock is in its own slot of a cluster: one call per slot, pipelined per master.
        by_slot = {}
        for key in keys:
            by_slot.setdefault(self.gateway.slot(key), []).append(key)
        commands = [(group[0], lambda pipe, group=group: script(keys=group, args=[token], client=pipe))
                    for group in by_slot.values()]
        try:
            failed = [r for r in self.gateway.per_master(commands) if isinstance(r, CacheUnavailable)]
            if failed:
                raise failed[0]
        except CacheUnavailable:
            log.warning("could not release %d product lock(s); their lease will expire", len(keys))

    def transact(self, session, quantities, work):
        token = uuid.uuid4().hex
        keys = [self._lock_key(pid) for pid in quantities]
        try:
            held = self._acquire(keys, token)
        except CacheUnavailable as exc:
            log.warning("redis_lock: Redis unavailable (%s); falling back to MySQL row locks", exc)
            return self._fallback.transact(session, quantities, work)
        try:
            return self._guarded.transact(session, quantities, work)
        finally:
            self._release(held, token)


STRATEGIES = ("guarded", "pessimistic", "optimistic", "redis_lock")


def make_strategy(name, redis_gateway=None):
    if name == "guarded":
        return GuardedStrategy()
    if name == "pessimistic":
        return PessimisticStrategy()
    if name == "optimistic":
        return OptimisticStrategy()
    if name == "redis_lock":
        return RedisLockStrategy(redis_gateway)
    raise ValueError(f"unknown INVENTORY_STRATEGY {name!r}; choose one of {', '.join(STRATEGIES)}")

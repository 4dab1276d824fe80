"""Order load and reconciliation for fault tests and bench/faults.

`OrderLoad` runs buyer threads that place single-order batches through
`bootstrap.orders()` in-process, as well-behaved clients: a 503
(ServiceUnavailable, raised or as a per-order result) is retried later with
the SAME client_order_id; every attempt is logged (time, outcome, latency).
`drain()` retries every order whose last answer was a 503 once the
dependencies are back, so each order ends created or failed for a business
reason. `reconcile()` then checks the database against what clients were told.
"""
import itertools
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from chalicelib import bootstrap
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.orders import parse_batch

BUSINESS_FAILURES = {"INSUFFICIENT_STOCK"}


@dataclass
class Attempt:
    started: float
    seconds: float
    outcome: str  # created | duplicate | <error code> | exception:<type>


@dataclass
class OrderState:
    order: dict
    attempts: list = field(default_factory=list)
    result: dict = None  # the last answer that was not a 503
    unavailable: int = 0  # 503s received

    @property
    def pending(self):
        return self.result is None


class OrderLoad:
    def __init__(self, product_ids, threads=6, max_lines=3, seed=1, pause=0.0, strategy=None, prefix="o"):
        self.product_ids = list(product_ids)
        self.threads = threads
        self.max_lines = max_lines
        self.pause = pause
        self.strategy = strategy
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.orders = []  # OrderState, in creation order
        self.unexpected = []  # exceptions / codes that are neither business failures nor 503
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._workers = []
        self.t0 = None

    # --- orders -------------------------------------------------------------

    def _new_order(self, rng):
        n = next(self._counter)
        pids = rng.sample(self.product_ids, rng.randint(1, min(self.max_lines, len(self.product_ids))))
        items = [{"product_id": pid, "quantity": rng.randint(1, 3)} for pid in pids]
        state = OrderState({"client_order_id": f"{self.prefix}-{n}", "user_id": 1 + n % 7, "items": items})
        with self._lock:
            self.orders.append(state)
        return state

    def attempt(self, state):
        """One client request for `state`; True once it has a final answer."""
        service = bootstrap.orders(self.strategy)
        started = time.perf_counter()
        try:
            result = service.place_batch(parse_batch({"orders": [state.order]}))["results"][0]
            outcome = ("duplicate" if result["duplicate"] else "created") if result["status"] == "created" \
                else result["error"]["code"]
        except ServiceUnavailable as exc:
            result, outcome = None, exc.code
        except Exception as exc:  # a bug: never a 500 for a dependency failure
            result, outcome = None, f"exception:{type(exc).__name__}:{exc}"
            self.unexpected.append(outcome)
        elapsed = time.perf_counter() - started
        state.attempts.append(Attempt(started, elapsed, outcome))
        if outcome == "SERVICE_UNAVAILABLE" or result is None:
            state.unavailable += 1
            return False
        if result["status"] == "failed" and outcome not in BUSINESS_FAILURES:
            self.unexpected.append(outcome)
        state.result = result
        return True

    def _buyer(self, seed):
        rng = random.Random(seed)
        retry = []
        while not self._stop.is_set():
            if retry and rng.random() < 0.5:
                state = retry.pop(0)
            else:
                state = self._new_order(rng)
            if not self.attempt(state):
                retry.append(state)
                time.sleep(0.005)  # back off a little, as Retry-After asks
            elif self.pause:
                time.sleep(self.pause)

    # --- control ------------------------------------------------------------

    def start(self):
        self.t0 = time.perf_counter()
        for i in range(self.threads):
            worker = threading.Thread(target=self._buyer, args=(self.rng.random(),), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self):
        self._stop.set()
        for worker in self._workers:
            worker.join(60)

    def drain(self, timeout=20):
        """Retry every order still waiting on a 503 until it has an answer."""
        deadline = time.monotonic() + timeout
        for state in self.orders:
            while state.pending:
                if self.attempt(state):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"order {state.order['client_order_id']} still unavailable after drain")
                time.sleep(0.05)

    # --- statistics ---------------------------------------------------------

    def attempts(self):
        return [a for s in list(self.orders) for a in list(s.attempts)]

    def per_second(self):
        """[(second, created, unavailable, other)] since start."""
        buckets = {}
        for a in self.attempts():
            sec = int(a.started - self.t0)
            row = buckets.setdefault(sec, [0, 0, 0])
            if a.outcome in ("created", "duplicate"):
                row[0] += 1
            elif a.outcome == "SERVICE_UNAVAILABLE":
                row[1] += 1
            else:
                row[2] += 1
        return [(sec, *buckets[sec]) for sec in sorted(buckets)]

    def window(self, start, end):
        """Attempts that started in [start, end) (perf_counter times)."""
        return [a for a in self.attempts() if start <= a.started < end]

    def ambiguous_commits(self):
        """Orders that got a 503 and then, on retry, `duplicate: true`: their
        first attempt committed although the client was told to retry."""
        return [s for s in self.orders if s.unavailable and s.result and s.result.get("duplicate")]


@contextmanager
def breaker_held_open(breaker, owner, attribute):
    """For the block, `breaker` stays open (no half-open probe, however slow the
    machine) and `owner.attribute`, where a request would take a connection to
    the dependency (redis-py's pool, our MySQL connect), is a tripwire. Yields
    the list of what reached past the breaker: it must stay empty. This is the
    property the fault tests want from an open breaker (no request waits on the
    dead dependency), checked without timing anything."""
    assert breaker.state == "open", breaker.state
    touched = []

    class Tripwire:
        def __getattr__(self, name):
            touched.append(name)
            raise OSError(f"{name}: reached past the open {breaker.name} breaker")

        def __call__(self, *args, **kwargs):
            return self.__getattr__("__call__")

    reset_after, breaker.reset_after = breaker.reset_after, 3600.0
    real = owner.__dict__.get(attribute)
    setattr(owner, attribute, Tripwire())
    try:
        yield touched
    finally:
        if real is None:
            delattr(owner, attribute)  # it was a method of the class
        else:
            setattr(owner, attribute, real)
        breaker.reset_after = reset_after


def percentile(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def reconcile(load, initial_stock):
    """Compare MySQL with what clients were told. Returns a report dict with a
    list of `problems` (empty when everything reconciles)."""
    db = bootstrap.database()
    problems = []
    created = {}
    for state in load.orders:
        key = (state.order["user_id"], state.order["client_order_id"])
        if state.pending:
            problems.append(f"{key} never got an answer")
        elif state.result["status"] == "created":
            created[key] = state

    rows = db.query("SELECT id, user_id, client_order_id, status, total_cents FROM orders")
    seen = {}
    for row in rows:
        key = (row["user_id"], row["client_order_id"])
        if key in seen:
            problems.append(f"duplicated order {key}")
        seen[key] = row
    items = {}
    for item in db.query("SELECT order_id, product_id, quantity, unit_price_cents FROM order_items"):
        items.setdefault(item["order_id"], {})[item["product_id"]] = item

    for key, state in created.items():
        row = seen.get(key)
        if row is None:
            problems.append(f"lost order {key}: client was told created")
            continue
        if row["id"] != state.result["order_id"]:
            problems.append(f"order {key}: client got id {state.result['order_id']}, database has {row['id']}")
        lines = items.get(row["id"], {})
        want = {}
        for line in state.order["items"]:
            want[line["product_id"]] = want.get(line["product_id"], 0) + line["quantity"]
        got = {pid: it["quantity"] for pid, it in lines.items()}
        if got != want:
            problems.append(f"partial order {key}: lines {got} != {want}")
        total = sum(it["quantity"] * it["unit_price_cents"] for it in lines.values())
        if total != row["total_cents"]:
            problems.append(f"order {key}: total {row['total_cents']} != lines {total}")
    for key in seen.keys() - created.keys():
        problems.append(f"order {key} in the database but the client was not told it was created")

    sold = {pid: 0 for pid in initial_stock}
    for order_id, lines in items.items():
        for pid, it in lines.items():
            sold[pid] = sold.get(pid, 0) + it["quantity"]
    stock = {r["id"]: r["stock"] for r in db.query("SELECT id, stock FROM products")}
    oversold = 0
    for pid, initial in initial_stock.items():
        if stock[pid] < 0:
            oversold += -stock[pid]
        if sold[pid] > initial:
            oversold += sold[pid] - initial
        if stock[pid] + sold[pid] != initial:
            problems.append(f"product {pid}: stock {stock[pid]} + sold {sold[pid]} != initial {initial}")
    if oversold:
        problems.append(f"{oversold} oversold units")
    if load.unexpected:
        problems.append(f"unexpected outcomes: {sorted(set(load.unexpected))[:5]}")

    failed = sum(1 for s in load.orders if s.result and s.result["status"] == "failed")
    return {
        "orders": len(load.orders), "created": len(created), "failed_business": failed,
        "ambiguous_commits_resolved": len(load.ambiguous_commits()),
        "oversold_units": oversold, "units_sold": sum(sold.values()),
        "problems": problems,
    }

"""Structured logs, EMF metrics and traces (Powertools), plus a rolling
window of the same numbers in Redis for `GET /admin/stats` and `/dashboard`.

Every `emit()` writes one EMF line (CloudWatch turns it into a metric in
namespace `Shop`) and adds the value to an in-process buffer. The buffer is
written to Redis in ONE pipelined MULTI/EXEC: by a background thread once a
second in long-running processes (API server, SQS pollers), or at the end of
the invocation in Lambda. So `emit()` itself never does I/O, never blocks an
order transaction and never raises; a dead Redis loses at most the numbers
of that flush, and the stats fall back to what this process saw.

Redis layout, one hash per second, `{prefix}stats:{epoch second}`, TTL 6 min:
  `c|Name|dim=value`      counter (sum of values), e.g. `c|Errors|code=FORBIDDEN`
  `n|Name|dims`, `s|Name|dims`, `h|Name|dims|i`
                          distribution (unit Milliseconds): count, sum and a
                          log histogram (bucket i holds values in
                          [BASE**i, BASE**(i+1)), so percentiles from merged
                          seconds and processes are within ~2% of exact)
"""
import logging
import math
import os
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

NAMESPACE = "Shop"
WINDOW_SECONDS = 300
BUCKET_TTL_SECONDS = WINDOW_SECONDS + 60
FLUSH_INTERVAL_SECONDS = 1.0
HISTOGRAM_BASE = 1.04
MIN_DISTRIBUTION_VALUE = 0.001  # ms
CACHE_RESULTS = ("HIT", "MISS", "BYPASS", "STALE")
# Metrics whose emit ends an HTTP request / an SQS invocation: in Lambda the
# buffer is flushed right then (a frozen container runs no background thread).
END_OF_INVOCATION = frozenset({"RequestLatency", "IngestRecords"})

_log = logging.getLogger(__name__)


def _truthy(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _in_lambda():
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) and not os.environ.get("AWS_CHALICE_CLI_MODE")


# --- logging -----------------------------------------------------------------

class _ColdStart:
    """True for the first request this process serves, False afterwards."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = False

    def take(self):
        with self._lock:
            first, self._seen = not self._seen, True
            return first


class ShopLogger(Logger):
    """Powertools Logger (JSON). Request-scoped keys (`request_id`, appended by
    chalicelib/entrypoints/http.py for each request) are kept per thread, so concurrent
    requests of the local threaded server never swap ids, and each request's
    lines carry `cold_start` (Powertools' `inject_lambda_context` does this
    for plain Lambda handlers, not for Chalice views)."""

    REQUEST_KEYS = ("request_id",)

    def append_keys(self, **additional_keys):
        scoped = {k: additional_keys.pop(k) for k in self.REQUEST_KEYS if k in additional_keys}
        if scoped:
            if "request_id" in scoped:
                scoped["cold_start"] = COLD_START.take()
            self.thread_safe_append_keys(**scoped)
        if additional_keys:
            super().append_keys(**additional_keys)

    def remove_keys(self, keys):
        keys = list(keys)
        scoped = [k for k in keys if k in self.REQUEST_KEYS]
        if scoped:
            self.thread_safe_remove_keys(scoped + (["cold_start"] if "request_id" in scoped else []))
        rest = [k for k in keys if k not in self.REQUEST_KEYS]
        if rest:
            super().remove_keys(rest)


COLD_START = _ColdStart()
logger = ShopLogger(service="shop")


# --- tracing -----------------------------------------------------------------

class _NoTracer:
    """Stand-in with the Tracer methods we use, where tracing is off."""

    enabled = False

    def capture_method(self, method=None, **kwargs):
        return method if method is not None else (lambda fn: fn)

    capture_lambda_handler = capture_method

    def put_annotation(self, key, value):
        pass

    def put_metadata(self, key, value, namespace=None):
        pass


def _tracing_enabled():
    # Powertools' own rule (Tracer._is_tracer_disabled) without importing
    # aws_xray_sdk: building a Tracer imports it even when disabled, which
    # costs hundreds of milliseconds of cold start.
    if _truthy(os.environ.get("POWERTOOLS_TRACE_DISABLED", "false")):
        return False
    if os.environ.get("AWS_SAM_LOCAL") or os.environ.get("AWS_CHALICE_CLI_MODE"):
        return False
    return bool(os.environ.get("LAMBDA_TASK_ROOT"))


def _make_tracer():
    if not _tracing_enabled():
        return _NoTracer()
    from aws_lambda_powertools import Tracer

    # X-Ray subsegments for SQS/Secrets Manager calls and MySQL queries.
    return Tracer(service="shop", patch_modules=("botocore", "pymysql"))


tracer = _make_tracer()


# --- metrics -----------------------------------------------------------------

def _dims(dimensions):
    return ";".join(f"{k}={dimensions[k]}" for k in sorted(dimensions))


def _bucket(value):
    return math.floor(math.log(max(value, MIN_DISTRIBUTION_VALUE)) / math.log(HISTOGRAM_BASE))


def _bucket_value(index):
    """The value reported for histogram bucket `index` (its geometric middle)."""
    return HISTOGRAM_BASE ** (index + 0.5)


def fields_for(name, value, unit, dimensions):
    """The hash fields one emitted value adds to its second's bucket."""
    dims = _dims(dimensions)
    if unit in (MetricUnit.Milliseconds, "Milliseconds"):
        value = float(value)
        return {f"n|{name}|{dims}": 1, f"s|{name}|{dims}": value, f"h|{name}|{dims}|{_bucket(value)}": 1}
    return {f"c|{name}|{dims}": value}


class MetricsWindow:
    """Per-second buckets of metrics: a pending buffer written to Redis by
    `flush()`, and the same numbers kept in-process as the fallback view."""

    def __init__(self, gateway_factory, namespace="stats", window_seconds=WINDOW_SECONDS,
                 ttl_seconds=BUCKET_TTL_SECONDS, clock=time.time):
        self.gateway_factory = gateway_factory
        self.namespace = namespace
        self.window_seconds = window_seconds
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending = defaultdict(lambda: defaultdict(float))
        self._local = defaultdict(lambda: defaultdict(float))
        self._thread = None
        self._thread_pid = None
        self.flush_failures = 0

    # writing
    def record(self, name, value, unit=MetricUnit.Count, dimensions=None, at=None):
        second = int(self.clock() if at is None else at)
        fields = fields_for(name, value, unit, dimensions or {})
        with self._lock:
            for target in (self._pending[second], self._local[second]):
                for field, amount in fields.items():
                    target[field] += amount
            if len(self._local) > self.window_seconds + 5:
                cutoff = int(self.clock()) - self.window_seconds
                for old in [s for s in self._local if s <= cutoff]:
                    del self._local[old]

    def key(self, gateway, second):
        return gateway.key(f"{self.namespace}:{second}")

    def flush(self):
        """Write the pending buckets in one MULTI/EXEC round trip. True when
        written (or nothing to write); never raises."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, defaultdict(lambda: defaultdict(float))
            if not pending:
                return True
            try:
                gateway = self.gateway_factory()

                def write(client):
                    pipe = client.pipeline(transaction=True)
                    for second, fields in pending.items():
                        key = self.key(gateway, second)
                        for field, amount in fields.items():
                            if float(amount).is_integer():
                                pipe.hincrby(key, field, int(amount))
                            else:
                                pipe.hincrbyfloat(key, field, amount)
                        pipe.expire(key, self.ttl_seconds)
                    return pipe.execute()

                gateway.call(write)
                return True
            except Exception as exc:  # CacheUnavailable, config errors: metrics must never break a request
                self.flush_failures += 1
                _log.debug("metrics window not written to redis: %s", exc)
                return False

    def start_flusher(self, interval=FLUSH_INTERVAL_SECONDS):
        """A daemon thread flushing every `interval` s (restarted after a fork)."""
        if self._thread is not None and self._thread_pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread_pid == os.getpid() and self._thread.is_alive():
                return

            def loop():
                while True:
                    time.sleep(interval)
                    self.flush()

            self._thread = threading.Thread(target=loop, name="metrics-flusher", daemon=True)
            self._thread_pid = os.getpid()
            self._thread.start()

    # reading
    def read(self, window_seconds=None):
        """({second: {field: value}}, source) for the last `window_seconds`:
        from Redis (every process's numbers), or this process's own if Redis is down."""
        window_seconds = min(window_seconds or self.window_seconds, self.window_seconds)
        now = int(self.clock())
        seconds = list(range(now - window_seconds + 1, now + 1))
        self.flush()
        try:
            gateway = self.gateway_factory()

            def fetch(client):
                pipe = client.pipeline(transaction=False)
                for second in seconds:
                    pipe.hgetall(self.key(gateway, second))
                return pipe.execute()

            rows = gateway.call(fetch)
            buckets = {s: {f: float(v) for f, v in row.items()} for s, row in zip(seconds, rows) if row}
            return buckets, "redis"
        except Exception as exc:
            _log.debug("metrics window not read from redis: %s", exc)
            with self._lock:
                buckets = {s: dict(self._local[s]) for s in seconds if s in self._local}
            return buckets, "process"

    def stats(self, window_seconds=None, step=1):
        window_seconds = min(window_seconds or self.window_seconds, self.window_seconds)
        buckets, source = self.read(window_seconds)
        now = int(self.clock())
        return summarize(buckets, now - window_seconds + 1, now, step=step, source=source)


# --- the math ------------------------------------------------------------------

def percentile(histogram, q):
    """Nearest-rank percentile `q` (0..1) of a {bucket index: count} histogram, or None."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return round(_bucket_value(index), 3)
    return round(_bucket_value(max(histogram)), 3)


def hit_rate(counts):
    """HIT / (HIT + MISS + BYPASS + STALE), or None with no reads."""
    total = sum(counts.get(r, 0) for r in CACHE_RESULTS)
    return round(counts.get("HIT", 0) / total, 4) if total else None


def ratio(part, whole):
    return round(part / whole, 4) if whole else None


_STATUS_BY_CODE = None


def status_for_code(code):
    """The HTTP status an error code is answered with (chalicelib.errors)."""
    global _STATUS_BY_CODE
    if _STATUS_BY_CODE is None:
        from chalicelib.domain.errors import ShopError

        table, todo = {"INTERNAL": 500}, [ShopError]
        while todo:
            cls = todo.pop()
            table[cls.code] = cls.status
            todo.extend(cls.__subclasses__())
        _STATUS_BY_CODE = table
    return _STATUS_BY_CODE.get(code, 0)


class _Aggregate:
    """Counters and distributions merged over some seconds."""

    def __init__(self):
        self.counters = defaultdict(float)            # (name, dims) -> sum
        self.count = defaultdict(float)               # (name, dims) -> n
        self.sum = defaultdict(float)                 # (name, dims) -> sum of values
        self.histograms = defaultdict(lambda: defaultdict(float))  # (name, dims) -> {i: n}

    def add(self, fields):
        for field, value in fields.items():
            kind, _, rest = field.partition("|")
            if kind == "c":
                name, _, dims = rest.partition("|")
                self.counters[(name, dims)] += value
            elif kind == "n":
                name, _, dims = rest.partition("|")
                self.count[(name, dims)] += value
            elif kind == "s":
                name, _, dims = rest.partition("|")
                self.sum[(name, dims)] += value
            elif kind == "h":
                name, _, tail = rest.partition("|")
                dims, _, index = tail.rpartition("|")
                self.histograms[(name, dims)][int(index)] += value

    def counter(self, name, **dims):
        return int(self.counters.get((name, _dims(dims)), 0))

    def by_dim(self, name, dim):
        """{dimension value: count} of a counter with one dimension."""
        out = defaultdict(int)
        for (n, dims), value in self.counters.items():
            if n == name:
                for part in dims.split(";"):
                    k, _, v = part.partition("=")
                    if k == dim:
                        out[v] += int(value)
        return dict(out)

    def distribution(self, name, **dims):
        key = (name, _dims(dims))
        hist = self.histograms.get(key, {})
        n = int(self.count.get(key, 0))
        return {"count": n,
                "p50": percentile(hist, 0.50), "p99": percentile(hist, 0.99),
                "mean": round(self.sum[key] / n, 3) if n else None}

    def distributions_by(self, name, dim):
        out = {}
        for (n, dims) in list(self.count):
            if n != name:
                continue
            values = dict(part.partition("=")[::2] for part in dims.split(";") if part)
            if dim in values:
                out[values[dim]] = self.distribution(name, **values)
        return out


def _cache_block(agg, metric):
    counts = {r: 0 for r in CACHE_RESULTS}
    counts.update(agg.by_dim(metric, "result"))
    return {"hit_rate": hit_rate(counts), "reads": sum(counts[r] for r in CACHE_RESULTS), "by_result": counts}


def _errors(agg):
    by_code = agg.by_dim("Errors", "code")
    return by_code, sum(n for code, n in by_code.items() if status_for_code(code) >= 500)


def summarize(buckets, first_second, last_second, step=1, source="redis"):
    """The /admin/stats body from per-second buckets {second: {field: value}}."""
    step = max(1, int(step))
    total = _Aggregate()
    for fields in buckets.values():
        total.add(fields)

    errors_by_code, errors_5xx = _errors(total)
    routes = total.distributions_by("RequestLatency", "route")
    request_count = int(sum(v for (n, _), v in total.count.items() if n == "RequestLatency"))
    product, search = _cache_block(total, "ProductCache"), _cache_block(total, "SearchCache")
    reads = product["reads"] + search["reads"]
    hits = product["by_result"]["HIT"] + search["by_result"]["HIT"]

    series = defaultdict(list)
    for t in range(first_second, last_second + 1, step):
        agg = _Aggregate()
        for second in range(t, min(t + step, last_second + 1)):
            if second in buckets:
                agg.add(buckets[second])
        latency = agg.distribution("OrderLatency")
        reqs = sum(int(v) for (n, _), v in agg.count.items() if n == "RequestLatency")
        _, e5 = _errors(agg)
        p, s = _cache_block(agg, "ProductCache"), _cache_block(agg, "SearchCache")
        series["t"].append(t)
        series["order_p50_ms"].append(latency["p50"])
        series["order_p99_ms"].append(latency["p99"])
        series["orders_created"].append(agg.counter("OrdersCreated"))
        series["orders_failed"].append(sum(agg.by_dim("OrdersFailed", "code").values()))
        series["requests"].append(reqs)
        series["errors"].append(sum(agg.by_dim("Errors", "code").values()))
        series["errors_5xx"].append(e5)
        series["error_rate"].append(ratio(e5, reqs))
        series["product_hit_rate"].append(p["hit_rate"])
        series["search_hit_rate"].append(s["hit_rate"])
        series["cache_hit_rate"].append(ratio(p["by_result"]["HIT"] + s["by_result"]["HIT"], p["reads"] + s["reads"]))

    failed_by_code = total.by_dim("OrdersFailed", "code")
    return {
        "window_seconds": last_second - first_second + 1,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source,
        "orders": {
            "created": total.counter("OrdersCreated"),
            "failed": sum(failed_by_code.values()),
            "failed_by_code": failed_by_code,
            "cancelled": total.counter("OrdersCancelled"),
            "latency_ms": total.distribution("OrderLatency"),
        },
        "cache": {"product": product, "search": search, "hit_rate": ratio(hits, reads)},
        "requests": {
            "count": request_count,
            "errors": sum(errors_by_code.values()),
            "errors_5xx": errors_5xx,
            "error_rate": ratio(errors_5xx, request_count),
            "errors_by_code": errors_by_code,
        },
        "routes": dict(sorted(routes.items())),
        "series": {"step_seconds": step, **series},
    }


def _no_gateway():
    raise RuntimeError("no Redis for the metrics window (the composition root sets one)")


# The composition root (bootstrap) points this at its metrics Redis gateway.
METRICS = MetricsWindow(_no_gateway)


def emit(name, value, unit=MetricUnit.Count, **dimensions):
    """One EMF metric line plus the Redis window; safe from any thread (no
    shared metric buffer), no I/O besides stdout, never raises."""
    try:
        METRICS.record(name, value, unit, dimensions)
        if _in_lambda():
            if name in END_OF_INVOCATION:
                METRICS.flush()
        else:
            METRICS.start_flusher()
    except Exception:  # the window is best effort; the EMF line below is the record
        _log.debug("metrics window update failed", exc_info=True)
    if is_metrics_disabled():
        return
    with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE) as metric:
        for key, dim in dimensions.items():
            metric.add_dimension(name=key, value=str(dim))


@tracer.capture_method
def stats(window_seconds=WINDOW_SECONDS, step=1):
    """Numbers of the last `window_seconds` across every process (see module doc)."""
    return METRICS.stats(window_seconds, step)

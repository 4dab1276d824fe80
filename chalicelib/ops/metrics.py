"""EMF metrics (Powertools), plus a rolling window of the same numbers in
Redis for `GET /admin/stats` and `/dashboard` (logs and traces: ops/logs.py;
the math: ops/stats.py).

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
import os
import threading
import time
from collections import defaultdict

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from chalicelib.ops.logs import tracer
from chalicelib.ops.stats import fields_for, summarize

NAMESPACE = "Shop"
WINDOW_SECONDS = 300
BUCKET_TTL_SECONDS = WINDOW_SECONDS + 60
FLUSH_INTERVAL_SECONDS = 1.0
# Metrics whose emit ends an HTTP request / an SQS invocation: in Lambda the
# buffer is flushed right then (a frozen container runs no background thread).
END_OF_INVOCATION = frozenset({"RequestLatency", "IngestRecords"})

_log = logging.getLogger(__name__)


def _in_lambda():
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) and not os.environ.get("AWS_CHALICE_CLI_MODE")


class MetricsWindow:
    """Per-second buckets of metrics: a pending buffer written to Redis by
    `flush()`, and the same numbers kept in-process as the fallback view."""

    def __init__(self, gateway_factory, namespace="stats", window_seconds=WINDOW_SECONDS,
                 ttl_seconds=BUCKET_TTL_SECONDS, clock=time.time):
        self.gateway_factory = gateway_factory
        # Whether numbers go to the Redis window shared by every process (the
        # local stack). In AWS CloudWatch has them from the EMF lines, so a
        # request must not also write to ElastiCache; the view is then this process's.
        self.shared = lambda: True
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
        self.record_values(name, (value,), unit, dimensions, at)

    def record_values(self, name, values, unit=MetricUnit.Count, dimensions=None, at=None):
        second = int(self.clock() if at is None else at)
        fields = defaultdict(float)
        for value in values:
            for field, amount in fields_for(name, value, unit, dimensions or {}).items():
                fields[field] += amount
        with self._lock:
            targets = (self._pending[second], self._local[second]) if self.shared() else (self._local[second],)
            for target in targets:
                for field, amount in fields.items():
                    target[field] += amount
            if len(self._local) > self.window_seconds + 5:
                cutoff = int(self.clock()) - self.window_seconds
                for old in [s for s in self._local if s <= cutoff]:
                    del self._local[old]

    def key(self, gateway, second):
        # One hash tag for the window: a flush's MULTI touches one slot of a cluster.
        return gateway.key(f"{self.namespace}:{second}", tag=self.namespace)

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

                gateway.call(write, key=self.key(gateway, 0))
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
            if not self.shared():
                raise LookupError("the shared window is off in this stage")
            gateway = self.gateway_factory()

            def fetch(client):
                pipe = client.pipeline(transaction=False)
                for second in seconds:
                    pipe.hgetall(self.key(gateway, second))
                return pipe.execute()

            rows = gateway.call(fetch, key=self.key(gateway, 0))
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


def _no_gateway():
    raise RuntimeError("no Redis for the metrics window (the composition root sets one)")


# The composition root (bootstrap) points this at its metrics Redis gateway.
METRICS = MetricsWindow(_no_gateway)


def _to_window(name, values, unit, dimensions):
    """The values into the window (shared in Redis on the local stack); best effort, never raises."""
    try:
        METRICS.record_values(name, values, unit, dimensions)
        if METRICS.shared():
            if not _in_lambda():
                METRICS.start_flusher()
            elif name in END_OF_INVOCATION:
                METRICS.flush()
    except Exception:  # the window is best effort; the EMF line is the record
        _log.debug("metrics window update failed", exc_info=True)


def emit(name, value, unit=MetricUnit.Count, **dimensions):
    """One EMF metric line plus the window; safe from any thread (no shared metric buffer),
    no I/O besides stdout, never raises."""
    _to_window(name, (value,), unit, dimensions)
    if is_metrics_disabled():
        return
    with single_metric(name=name, unit=unit, value=value, namespace=NAMESPACE) as metric:
        for key, dim in dimensions.items():
            metric.add_dimension(name=key, value=str(dim))


def emit_values(name, values, unit=MetricUnit.Count, **dimensions):
    """emit() for many values of one metric at once (a batch's latencies): one window
    update, and one EMF line per 100 values (EMF's cap) instead of one line per value."""
    values = list(values)
    if not values:
        return
    _to_window(name, values, unit, dimensions)
    if is_metrics_disabled():
        return
    metrics = EphemeralMetrics(namespace=NAMESPACE)
    for key, dim in dimensions.items():
        metrics.add_dimension(name=key, value=str(dim))
    for value in values:
        metrics.add_metric(name=name, unit=unit, value=value)  # prints a line at every 100th value
    if metrics.metric_set:
        metrics.flush_metrics()


@tracer.capture_method
def stats(window_seconds=WINDOW_SECONDS, step=1):
    """Numbers of the last `window_seconds` across every process (see module doc)."""
    return METRICS.stats(window_seconds, step)

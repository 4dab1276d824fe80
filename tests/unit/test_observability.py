"""The stats math (percentiles, hit ratio, error rate) and the Redis window
behind /admin/stats, against the real Redis under this session's key prefix."""
import json
import math
import uuid

import pytest

from chalicelib import bootstrap
from chalicelib.ops import observability
from chalicelib.adapters.cache import RedisGateway
from chalicelib.ops.observability import MetricsWindow, hit_rate, percentile


class Clock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def window(test_env):
    """A window of its own (namespace) on the session's Redis prefix, with a fixed clock."""
    clock = Clock()
    return MetricsWindow(bootstrap.redis_gateway, namespace=f"stats-ut-{uuid.uuid4().hex[:8]}", clock=clock)


def exact_percentile(values, q):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def histogram_of(values):
    hist = {}
    for v in values:
        i = observability._bucket(v)
        hist[i] = hist.get(i, 0) + 1
    return hist


@pytest.mark.parametrize("values", [
    list(range(1, 101)),
    [0.4, 0.5, 3.0, 3.1, 250.0, 1200.0, 7.7],
    [5.0] * 99 + [900.0],
    [12.5],
])
def test_percentiles_match_exact_within_histogram_resolution(values):
    hist = histogram_of(values)
    tolerance = observability.HISTOGRAM_BASE - 1  # one bucket: < 4% relative
    for q in (0.5, 0.99):
        exact = exact_percentile(values, q)
        assert percentile(hist, q) == pytest.approx(exact, rel=tolerance)


def test_percentile_of_nothing_is_none():
    assert percentile({}, 0.5) is None


def test_hit_rate_counts_every_result():
    assert hit_rate({"HIT": 3, "MISS": 1}) == 0.75
    assert hit_rate({"HIT": 2, "MISS": 1, "BYPASS": 1, "STALE": 4}) == 0.25
    assert hit_rate({"HIT": 0, "MISS": 5}) == 0.0
    assert hit_rate({}) is None


def test_window_in_redis_merges_seconds_and_processes(window, test_env):
    other = MetricsWindow(bootstrap.redis_gateway, namespace=window.namespace, clock=window.clock)
    latencies = [float(v) for v in range(1, 201)]
    for i, v in enumerate(latencies):
        w = window if i % 2 else other  # two "processes"
        w.clock.now = 1_700_000_000.0 - (i % 7)  # spread over seconds
        w.record("OrderLatency", v, "Milliseconds", {})
        w.record("OrdersCreated", 1, "Count", {})
    window.clock.now = 1_700_000_000.0
    for result in ["HIT"] * 6 + ["MISS"] * 2 + ["BYPASS", "STALE"]:
        window.record("ProductCache", 1, "Count", {"result": result})
    for result in ["HIT", "MISS"]:
        other.record("SearchCache", 1, "Count", {"result": result})
    for code in ["PRODUCT_NOT_FOUND", "PRODUCT_NOT_FOUND", "SERVICE_UNAVAILABLE", "INTERNAL", "FORBIDDEN"]:
        window.record("Errors", 1, "Count", {"code": code})
    window.record("OrdersFailed", 1, "Count", {"code": "INSUFFICIENT_STOCK"})
    route = "GET /products/{product_id}"
    for v in range(1, 21):
        window.record("RequestLatency", float(v), "Milliseconds", {"route": route})
    other.record("RequestLatency", 3.0, "Milliseconds", {"route": "GET /health"})
    assert other.flush()  # the other process writes its part; window.stats() flushes its own

    stats = window.stats(60, step=10)
    assert stats["source"] == "redis"
    orders = stats["orders"]
    assert orders["created"] == 200
    assert orders["failed"] == 1 and orders["failed_by_code"] == {"INSUFFICIENT_STOCK": 1}
    assert orders["latency_ms"]["count"] == 200
    assert orders["latency_ms"]["mean"] == pytest.approx(100.5)
    assert orders["latency_ms"]["p50"] == pytest.approx(100, rel=0.04)
    assert orders["latency_ms"]["p99"] == pytest.approx(198, rel=0.04)
    assert stats["cache"]["product"]["hit_rate"] == 0.6
    assert stats["cache"]["product"]["by_result"] == {"HIT": 6, "MISS": 2, "BYPASS": 1, "STALE": 1}
    assert stats["cache"]["search"]["hit_rate"] == 0.5
    assert stats["cache"]["hit_rate"] == pytest.approx(7 / 12, abs=1e-4)
    requests = stats["requests"]
    assert requests["count"] == 21
    assert requests["errors"] == 5 and requests["errors_5xx"] == 2
    assert requests["error_rate"] == pytest.approx(2 / 21, abs=1e-4)
    assert requests["errors_by_code"]["PRODUCT_NOT_FOUND"] == 2
    assert stats["routes"][route]["count"] == 20
    assert stats["routes"][route]["p50"] == pytest.approx(10, rel=0.04)
    assert stats["routes"][route]["p99"] == pytest.approx(20, rel=0.04)
    assert stats["routes"]["GET /health"]["count"] == 1

    series = stats["series"]
    assert series["step_seconds"] == 10 and len(series["t"]) == 6
    assert sum(series["orders_created"]) == 200 and sum(series["requests"]) == 21
    assert series["product_hit_rate"][-1] == 0.6
    assert series["order_p99_ms"][0] is None  # nothing 50..60 s ago

    # keys expire: at most a little more than the window
    gateway = bootstrap.redis_gateway()
    ttl = gateway.client.ttl(window.key(gateway, 1_700_000_000))
    assert 0 < ttl <= observability.BUCKET_TTL_SECONDS


def test_window_excludes_older_seconds(window):
    window.clock.now = 1_700_000_000.0
    window.record("OrdersCreated", 1, "Count", {})
    window.clock.now += 120
    window.record("OrdersCreated", 1, "Count", {})
    assert window.stats(60)["orders"]["created"] == 1
    assert window.stats(300)["orders"]["created"] == 2


def test_flush_is_one_round_trip(window, monkeypatch):
    gateway = bootstrap.redis_gateway()
    calls = []
    real_call = gateway.call
    monkeypatch.setattr(gateway, "call", lambda fn: calls.append(fn) or real_call(fn))
    for i in range(50):
        window.clock.now += 0.1
        window.record("RequestLatency", 5.0, "Milliseconds", {"route": "GET /x"})
        window.record("ProductCache", 1, "Count", {"result": "HIT"})
    assert window.flush()
    assert len(calls) == 1
    assert window.flush() and len(calls) == 1  # nothing pending: no round trip


def test_redis_down_never_raises_and_falls_back_to_process(test_env):
    dead = RedisGateway("redis://127.0.0.1:1/0", timeout=0.05, prefix=test_env["REDIS_KEY_PREFIX"])
    window = MetricsWindow(lambda: dead, namespace="stats-dead", clock=Clock())
    for v in (1.0, 2.0, 3.0):
        window.record("OrderLatency", v, "Milliseconds", {})
    window.record("SearchCache", 1, "Count", {"result": "BYPASS"})
    assert window.flush() is False
    stats = window.stats()
    assert stats["source"] == "process"
    assert stats["orders"]["latency_ms"]["count"] == 3
    assert stats["cache"]["search"]["hit_rate"] == 0.0


def test_emit_never_raises_even_if_the_window_breaks(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("broken window")

    monkeypatch.setattr(observability.METRICS, "record", boom)
    observability.emit("OrdersCreated", 1)  # no exception


def test_status_for_code_knows_the_5xx_codes():
    assert observability.status_for_code("SERVICE_UNAVAILABLE") == 503
    assert observability.status_for_code("INTERNAL") == 500
    assert observability.status_for_code("RATE_LIMITED") == 429
    assert observability.status_for_code("PRODUCT_NOT_FOUND") == 404


def test_log_lines_carry_request_id_and_cold_start(capsys, monkeypatch):
    monkeypatch.setattr(observability, "COLD_START", observability._ColdStart())
    log = observability.ShopLogger(service="shop-test", level="INFO")
    lines = []
    for rid in ("req-1", "req-2"):
        log.append_keys(request_id=rid)
        log.info("hello")
        log.remove_keys(["request_id"])
    log.info("outside a request")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(line.get("request_id"), line.get("cold_start")) for line in lines] == [
        ("req-1", True), ("req-2", False), (None, None)]
    assert all(line["service"] == "shop-test" for line in lines)


def test_tracer_is_a_no_op_locally():
    # POWERTOOLS_TRACE_DISABLED / not in Lambda: no aws_xray_sdk import at all.
    assert isinstance(observability.tracer, observability._NoTracer)
    assert observability.stats.__name__ == "stats"

"""The metrics window behind /admin/stats, against the real Redis under this
session's key prefix: seconds and processes merge, old seconds drop out, one
round trip per flush, and a dead Redis never raises."""
import uuid

import pytest

from chalicelib import bootstrap
from chalicelib.adapters.cache import RedisGateway
from chalicelib.ops import metrics
from chalicelib.ops.metrics import MetricsWindow


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
    assert 0 < ttl <= metrics.BUCKET_TTL_SECONDS


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
    monkeypatch.setattr(gateway, "call", lambda fn, key=None: calls.append(fn) or real_call(fn, key))
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

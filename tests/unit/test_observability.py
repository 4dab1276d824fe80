"""The stats math (percentiles, hit ratio, error codes), logging and tracing:
pure, no services. The Redis window is tested in tests/integration/test_metrics_window.py."""
import json
import math

import pytest

from chalicelib.ops import logs, metrics, stats
from chalicelib.ops.stats import hit_rate, percentile


def exact_percentile(values, q):
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def histogram_of(values):
    hist = {}
    for v in values:
        i = stats._bucket(v)
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
    tolerance = stats.HISTOGRAM_BASE - 1  # one bucket: < 4% relative
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


def test_emit_never_raises_even_if_the_window_breaks(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("broken window")

    monkeypatch.setattr(metrics.METRICS, "record_values", boom)
    metrics.emit("OrdersCreated", 1)  # no exception
    metrics.emit_values("FlashLatency", [1.0, 2.0], unit="Milliseconds")


def test_status_for_code_knows_the_5xx_codes():
    assert stats.status_for_code("SERVICE_UNAVAILABLE") == 503
    assert stats.status_for_code("INTERNAL") == 500
    assert stats.status_for_code("RATE_LIMITED") == 429
    assert stats.status_for_code("PRODUCT_NOT_FOUND") == 404


def test_log_lines_carry_request_id_and_cold_start(capsys, monkeypatch):
    monkeypatch.setattr(logs, "COLD_START", logs._ColdStart())
    log = logs.ShopLogger(service="shop-test", level="INFO")
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
    assert isinstance(logs.tracer, logs._NoTracer)
    assert metrics.stats.__name__ == "stats"


def test_outside_the_local_stack_the_window_stays_in_the_process():
    """In AWS the numbers are in CloudWatch: no request writes the Redis window."""

    def no_redis():
        raise AssertionError("the window must not touch Redis outside the local stack")

    window = metrics.MetricsWindow(no_redis, clock=lambda: 1_700_000_000.0)
    window.shared = lambda: False
    window.record("OrdersCreated", 1)
    window.record("OrderLatency", 12.0, unit="Milliseconds")
    assert window.flush() is True  # nothing pending for Redis
    report = window.stats(window_seconds=60)
    assert report["source"] == "process" and report["orders"]["created"] == 1


def test_the_dashboard_asks_for_its_stats_relative_to_its_own_url():
    """Behind API Gateway the page is /<stage>/dashboard: an absolute /admin/stats would miss the stage."""
    from chalicelib.ops.dashboard import DASHBOARD_HTML

    assert 'fetch("admin/stats?' in DASHBOARD_HTML and 'fetch("/admin/stats' not in DASHBOARD_HTML


def test_many_values_of_one_metric_print_one_emf_line_per_hundred_and_all_reach_the_window(capsys, monkeypatch):
    """A consumer batch of a thousand orders: its latencies are 10 EMF lines, not 1,000, and none is lost."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    window = metrics.MetricsWindow(lambda: None, clock=lambda: 1_700_000_000.0)
    window.shared = lambda: False
    monkeypatch.setattr(metrics, "METRICS", window)
    values = [float(v) for v in range(1, 251)]
    metrics.emit_values("FlashLatency", values, unit="Milliseconds", stage="test")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [len(line["FlashLatency"]) if isinstance(line["FlashLatency"], list) else 1 for line in lines] == [
        100, 100, 50]
    assert sorted(v for line in lines for v in line["FlashLatency"]) == values
    assert {line["stage"] for line in lines} == {"test"}
    recorded, = window._local.values()
    assert recorded["n|FlashLatency|stage=test"] == 250 and recorded["s|FlashLatency|stage=test"] == sum(values)

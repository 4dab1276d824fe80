"""Every bench still runs: its --smoke mode (tiny data, seconds) as a subprocess,
on this session's MySQL server, Redis and AWS endpoint, ending with the
machine-readable line its docstring documents. Speed is not checked here (the
benches measure it on a quiet machine); that the line parses, and that no
unit was oversold, is. `-m "not bench"` leaves them out."""
import os
import signal
import subprocess
import sys

import pytest

from bench._common import parse_result
from chalicelib.settings import DEFAULTS
from tests.conftest import BASE_DATABASE_URL, BASE_REDIS_URL, ROOT

# bench -> the fields of its last line. A new bench (or one that gets --smoke) adds its row.
LAST_LINE_FIELDS = {
    "chaos": {"faults", "operations", "oversold", "lost", "duplicated", "stuck", "stale_cache", "events_missing"},
    "endpoint": {"endpoint", "send_msg_s", "drain_msg_s", "moto_send_msg_s"},
    "faults": {"normal_orders_per_s", "redis_down_orders_per_s", "mysql_down_503_share", "redis_recovery_ms",
               "mysql_recovery_ms", "oversold", "problems", "cold_start_min_ms"},
    "flash": {"hot_ceiling", "admit_ratio", "persist_ratio", "oversold", "lost", "duplicated", "drift"},
    "ingest": {"orders", "messages_per_s", "latency_p50_ms", "latency_p99_ms", "reconciled", "live_orders_s",
               "ingest_orders_s", "lost", "duplicated"},
    "lifecycle": {"outbox_cost", "expiry_lag_p99_s"},
    "orders": {"default_strategy", "ceiling_ratio", "high_concurrency_ratio", "oversold", "batch50_ratio",
               "db_cpu_ratio"},
    "related": {"related_events_per_s", "related_p50_ms", "related_p99_ms"},
    "search": {"products", "uncached_p50_ms", "cached_p50_ms", "like_speedup", "hit_ratio", "broad_p99_ms",
               "miss_p99_ms", "pinyin_p50_ms", "typo_p50_ms", "abuse_order_p50_ms", "abuse_order_p99_ms"},
    "writer_cost": {"orders_per_s", "mysqld_ms_per_order", "app_ms_per_order", "searches_per_s",
                    "mysqld_ms_per_search", "app_ms_per_search", "cached_per_s", "app_ms_per_cached"},
}
SMOKE_SECONDS = 150  # the slowest, bench/flash, takes ~50 s here (its sale waits out a 30 s lease)


def bench_environment(endpoint_url):
    """What `make bench-...` would see: none of this session's settings (its database, topic,
    queues), only its servers and AWS endpoint."""
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTS and k != "BENCH_RUN_ID"}
    return {**env, "BENCH_MYSQL_URL": BASE_DATABASE_URL, "BENCH_REDIS_URL": BASE_REDIS_URL,
            "AWS_ENDPOINT_URL": endpoint_url}


def run_smoke(bench, endpoint_url):
    """(output, exit code) of `bench/<bench> --smoke`; one that overruns gets SIGTERM, which
    lets it remove its database, keys and queues, before it is killed."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / bench), "--smoke"], cwd=ROOT,
                            env=bench_environment(endpoint_url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        return proc.communicate(timeout=SMOKE_SECONDS)[0], proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        pytest.fail(f"bench/{bench} --smoke ran over {SMOKE_SECONDS}s:\n{output[-3000:]}")


@pytest.mark.bench
@pytest.mark.timeout(SMOKE_SECONDS + 60)
@pytest.mark.parametrize("bench", sorted(LAST_LINE_FIELDS))
def test_smoke_run_ends_with_its_documented_fields(bench, aws_endpoint):
    output, code = run_smoke(bench, aws_endpoint.url)
    assert code == 0, output[-3000:]
    result = parse_result(output.strip().splitlines()[-1])
    assert set(result) == LAST_LINE_FIELDS[bench], output[-1500:]
    assert all(result.values()), result
    assert result.get("oversold", "0") == "0", result

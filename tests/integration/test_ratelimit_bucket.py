"""RateLimiter (Redis Lua token bucket) against the real Redis on 127.0.0.1:6379,
under this run's key prefix, with an injected clock so limits are exact.
Plus: concurrent clients on one key, and fail-open on a Redis of our own that
we kill (the shared Redis is never stopped or flushed)."""
import json
import logging
import subprocess
import threading
import time
import uuid

import pytest
import redis

from chalicelib.adapters.cache import RedisGateway
from chalicelib.adapters.ratelimit import RateLimiter
from chalicelib.settings import PLANS_FILE
from tests.conftest import BASE_REDIS_URL, delete_prefix, free_port

PLANS = json.loads(PLANS_FILE.read_text())["plans"]


class FakeClock:
    """Exact time in integer microseconds (repeated float additions would drift)."""

    def __init__(self, start=1_700_000_000.0):
        self.us = round(start * 1_000_000)

    @property
    def now(self):
        return self.us / 1_000_000

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.us += round(seconds * 1_000_000)


@pytest.fixture
def prefix(test_env):
    value = f"{test_env['REDIS_KEY_PREFIX']}rl-unit:{uuid.uuid4().hex[:8]}:"
    yield value
    delete_prefix(BASE_REDIS_URL, value)


@pytest.fixture
def gateway(prefix):
    gw = RedisGateway(BASE_REDIS_URL, timeout=2, prefix=prefix)
    yield gw
    gw.client.close()


@pytest.fixture
def clock():
    return FakeClock()


def drain(limiter, key, plan, limit=100_000):
    """Requests until the first refusal; returns (admitted, retry_after of the refusal).
    `limiter`: a RateLimiter, or a function of (key, plan) that checks one request."""
    check = limiter.check if isinstance(limiter, RateLimiter) else limiter
    for admitted in range(limit):
        allowed, retry_after, _ = check(key, plan)
        if not allowed:
            return admitted, retry_after
    raise AssertionError(f"{limit} requests never limited")


def test_plans_are_the_documented_ones():
    assert set(PLANS) == {"standard", "admin", "limited", "public"}
    assert not PLANS["public"]["trusted_server"] and PLANS["standard"]["trusted_server"]
    assert (PLANS["limited"]["burst"], PLANS["limited"]["rate_per_second"]) == (5, 1)


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_each_plan_allows_its_burst_then_its_rate(gateway, clock, plan):
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    rate, burst = PLANS[plan]["rate_per_second"], PLANS[plan]["burst"]
    key = f"k-{plan}"

    admitted, retry_after = drain(limiter, key, plan)
    assert admitted == burst
    assert retry_after >= 1

    # Steady state: one token per 1/rate seconds, never more.
    for _ in range(3 * rate):
        clock.advance(1 / rate)
        assert limiter.check(key, plan) == (True, 0, "")
        allowed = limiter.check(key, plan).allowed
        assert not allowed

    # Ten simulated seconds at 2x the plan's rate: admitted == rate * 10 (+/- 1 for the edge).
    admitted = 0
    step = 1 / (2 * rate)
    for _ in range(20 * rate):
        clock.advance(step)
        admitted += limiter.check(key, plan)[0]
    assert abs(admitted - 10 * rate) <= 1


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_bucket_refills_to_burst_and_no_further(gateway, clock, plan):
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    burst = PLANS[plan]["burst"]
    drain(limiter, "idle", plan)
    clock.advance(3600)  # an hour idle: still only `burst` in a row
    assert drain(limiter, "idle", plan)[0] == burst


def test_retry_after_is_when_the_next_token_arrives(gateway, clock):
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    assert drain(limiter, "retry", "limited") == (5, 1)
    clock.advance(0.5)
    assert limiter.check("retry", "limited") == (False, 1, "key")  # half a token: 500 ms more, rounded up
    clock.advance(0.499)
    assert limiter.check("retry", "limited")[0] is False
    clock.advance(0.001)
    assert limiter.check("retry", "limited") == (True, 0, "")


def test_retry_after_rounds_up_for_slow_plans(gateway, clock):
    plans = {"slow": {"rate_per_second": 0.25, "burst": 1}}
    limiter = RateLimiter(gateway, plans, clock=clock)
    assert limiter.check("slow", "slow") == (True, 0, "")
    assert limiter.check("slow", "slow") == (False, 4, "key")
    clock.advance(3.9)
    assert limiter.check("slow", "slow") == (False, 1, "key")
    clock.advance(0.1)
    assert limiter.check("slow", "slow") == (True, 0, "")


def test_refused_requests_do_not_consume_tokens(gateway, clock):
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    drain(limiter, "hammer", "limited")
    for _ in range(50):
        clock.advance(0.01)
        limiter.check("hammer", "limited")
    clock.advance(0.5)  # 1.0 s since the bucket emptied: exactly one token
    assert limiter.check("hammer", "limited") == (True, 0, "")
    assert limiter.check("hammer", "limited")[0] is False


def test_keys_are_independent(gateway, clock):
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    drain(limiter, "a", "limited")
    assert drain(limiter, "b", "limited")[0] == 5


def test_clock_skew_between_hosts_never_mints_tokens(gateway, clock):
    """Two Lambda hosts, one 30 s behind: the late clock neither refills nor rewinds the bucket."""
    behind = FakeClock(clock.now - 30)
    fast_host = RateLimiter(gateway, PLANS, clock=clock)
    slow_host = RateLimiter(gateway, PLANS, clock=behind)
    drain(fast_host, "skew", "limited")
    assert slow_host.check("skew", "limited")[0] is False
    behind.advance(10)
    assert slow_host.check("skew", "limited")[0] is False
    clock.advance(1)
    assert fast_host.check("skew", "limited") == (True, 0, "")


def test_bucket_key_expires_once_it_would_be_full(gateway, clock, prefix):
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    limiter.check("ttl", "limited")
    ttl_ms = redis.Redis.from_url(BASE_REDIS_URL).pttl(f"{prefix}ratelimit:ttl")
    assert 0 < ttl_ms <= 5 * 1000 + 1000


# ------------------------------------------------------------------ per person (a key that ships in an app)
APP = dict(PLANS, app={"rate_per_second": 10, "burst": 30, "person_rate_per_second": 2, "person_burst": 5})


def test_a_person_past_their_bucket_leaves_the_apps_key_to_everyone_else(gateway, clock):
    limiter = RateLimiter(gateway, APP, clock=clock)
    admitted = 0
    while limiter.check("app-key", "app", person="app|address:203.0.113.7").allowed:
        admitted += 1
    assert admitted == 5
    refused = limiter.check("app-key", "app", person="app|address:203.0.113.7")
    assert refused == (False, 1, "person")
    for _ in range(100):  # the abuser goes on; refused requests take nothing from the key's bucket
        limiter.check("app-key", "app", person="app|address:203.0.113.7")
    # Another person in the same instant: their own burst, from the key's 25 tokens left.
    assert [limiter.check("app-key", "app", person=f"app|customer:{n}").allowed for n in range(6)] == [True] * 6
    clock.advance(0.5)  # one token a person per half second
    assert limiter.check("app-key", "app", person="app|address:203.0.113.7") == (True, 0, "")


def test_the_keys_bucket_stays_the_outer_limit_of_every_person(gateway, clock):
    limiter = RateLimiter(gateway, APP, clock=clock)
    taken = sum(limiter.check("app-key", "app", person=f"app|customer:{n}").allowed for n in range(40))
    assert taken == 30  # the key's burst, although each of the 40 people had tokens left
    assert limiter.check("app-key", "app", person="app|customer:new") == (False, 1, "key")


def test_without_the_apps_key_bucket_only_the_person_is_limited(gateway, clock):
    """In AWS API Gateway's usage plan keeps the key's bucket; the app keeps the person's."""
    limiter = RateLimiter(gateway, APP, clock=clock)
    assert [limiter.check("app-key", "app", person=f"app|customer:{n}", per_key=False).allowed
            for n in range(40)] == [True] * 40
    assert drain(lambda key, plan: limiter.check(key, plan, person="app|customer:0", per_key=False), "app-key",
                 "app") == (4, 1)
    assert limiter.check("other", "app", per_key=False) == (True, 0, "")  # no bucket at all: nothing to take


@pytest.mark.parametrize("plan,threads,seconds", [
    ("limited", 16, 2.0),
    ("custom", 24, 1.5),
])
def test_concurrent_clients_on_one_key_never_exceed_the_bucket(gateway, plan, threads, seconds):
    """Many threads, one key, the real clock: admitted <= burst + rate * elapsed."""
    plans = dict(PLANS, custom={"rate_per_second": 20, "burst": 10})
    limiter = RateLimiter(gateway, plans)
    rate, burst = plans[plan]["rate_per_second"], plans[plan]["burst"]
    key = f"concurrent-{plan}"
    admitted = []
    errors = []
    barrier = threading.Barrier(threads)

    def client():
        try:
            barrier.wait()
            end = time.time() + seconds
            while time.time() < end:
                if limiter.check(key, plan)[0]:
                    admitted.append(time.time())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    started = time.time()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.time() - started
    assert not errors
    assert len(admitted) <= burst + rate * elapsed + 1
    # ... and the bucket was really used: at least the burst plus most of the refill.
    assert len(admitted) >= burst + rate * (seconds - 0.5) - 1


# ------------------------------------------------------------------ Redis down
@pytest.fixture
def own_redis():
    """A throwaway redis-server of this test's own (killed by the test, never the shared one)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.time() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("throwaway redis-server did not start")
            time.sleep(0.05)
    client.close()
    yield proc, f"redis://127.0.0.1:{port}/0"
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_redis_down_fails_open_and_logs(own_redis, clock, caplog):
    proc, url = own_redis
    gateway = RedisGateway(url, timeout=0.25, prefix="rl-down:")
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    assert drain(limiter, "down", "limited")[0] == 5  # limiting works while Redis is up

    proc.kill()
    proc.wait(10)
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    results = [limiter.check("down", "limited") for _ in range(20)]
    elapsed = time.perf_counter() - started
    assert results == [(True, 0, "")] * 20
    assert any("failed open" in r.getMessage() for r in caplog.records if r.name == "chalicelib.adapters.ratelimit")
    # The breaker opens after the first failures, so a dead Redis costs nothing per request.
    assert elapsed < 2


def test_redis_errors_other_than_connection_fail_open(gateway, clock, caplog):
    """A Redis that answers with an error (e.g. READONLY replica during a failover) must not 500 every request."""

    class Broken:
        prefix = gateway.prefix

        def key(self, name, tag=None):
            return gateway.key(name, tag)

        def script(self, source):
            return gateway.script(source)

        def call(self, fn, key=None):
            raise redis.exceptions.ReadOnlyError("You can't write against a read only replica.")

    caplog.set_level(logging.WARNING)
    limiter = RateLimiter(Broken(), PLANS, clock=clock)
    assert limiter.check("ro", "limited") == (True, 0, "")
    assert any("failed open" in r.getMessage() for r in caplog.records)


def test_unknown_plan_is_a_programming_error(gateway, clock):
    with pytest.raises(KeyError):
        RateLimiter(gateway, PLANS, clock=clock).check("x", "no-such-plan")

"""Product cache against real Redis and MariaDB: X-Cache states, stampede
protection, and read-your-writes even when readers race writers."""
import random
import socket
import sys
import threading
import time

import pytest
import redis

from chalicelib import bootstrap
from chalicelib.adapters.cache import SEARCH_GENERATION_KEY
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.orders import parse_batch
from scripts.servers import ThrowawayRedis
from tests.conftest import make_product, session_settings


def test_miss_then_hit_then_fresh_after_write(catalog):
    product = make_product(catalog, name="Kettle")
    assert catalog.get(product["id"])[1] == "MISS"
    cached, state = catalog.get(product["id"])
    assert state == "HIT" and cached["name"] == "Kettle"

    catalog.update(product["id"], {"name": "Kettle Pro"})
    fresh, state = catalog.get(product["id"])
    assert fresh["name"] == "Kettle Pro" and fresh["version"] == 2
    assert state == "MISS"


def test_a_fence_carries_no_ttl_so_the_cache_redis_never_evicts_it(catalog):
    """The cache Redis evicts only keys with a TTL (volatile-lfu); a fence evicted with the
    copy it guards would let a slow reader put an older version back."""
    product = make_product(catalog, name="Kettle")
    catalog.update(product["id"], {"name": "Kettle Pro"})
    cache, gateway = bootstrap.product_cache(), bootstrap.redis_gateway()
    assert gateway.call(lambda r: r.get(cache.fence_key(product["id"]))) == "2"
    assert gateway.call(lambda r: r.pttl(cache.fence_key(product["id"]))) == -1
    assert catalog.get(product["id"])[1] == "MISS"
    assert 0 < gateway.call(lambda r: r.pttl(cache.key(product["id"])))   # the copy has one: it may go


def test_slow_reader_cannot_put_back_an_old_copy(catalog):
    """The classic race: a reader loads v1, the write commits v2 and
    invalidates, then the slow reader tries to cache v1."""
    product = make_product(catalog, price_cents=100)
    old_copy = catalog.load(product["id"])
    catalog.update(product["id"], {"price_cents": 200})

    assert bootstrap.product_cache().put(old_copy) is False
    fresh, _ = catalog.get(product["id"])
    assert fresh["price_cents"] == 200


def test_newer_copy_is_never_replaced_by_older(catalog):
    product = make_product(catalog)
    v1 = catalog.load(product["id"])
    catalog.update(product["id"], {"name": "second"})
    v2 = catalog.load(product["id"])
    cache = bootstrap.product_cache()
    assert cache.put(v2) is True
    assert cache.put(v1) is False
    assert cache.get(product["id"])[0]["name"] == "second"


def test_stock_changes_invalidate(catalog):
    product = make_product(catalog, stock=5)
    catalog.get(product["id"])
    catalog.adjust_stock(product["id"], {"delta": 7})
    assert catalog.get(product["id"])[0]["stock"] == 12


@pytest.mark.slow
def test_racing_readers_never_see_a_value_older_than_the_last_completed_write(catalog, monkeypatch):
    product = make_product(catalog, price_cents=0)
    pid = product["id"]
    committed = {"version": product["version"]}
    stop = threading.Event()
    violations, errors = [], []

    real_load = catalog.load

    def slow_load(product_id):
        row = real_load(product_id)
        time.sleep(random.uniform(0, 0.004))  # widen the window between MySQL read and cache put
        return row

    monkeypatch.setattr(catalog, "load", slow_load)

    def reader():
        try:
            while not stop.is_set():
                floor = committed["version"]
                seen, _ = catalog.get(pid)
                if seen["version"] < floor:
                    violations.append((floor, seen["version"]))
        except Exception as exc:
            errors.append(repr(exc))

    readers = [threading.Thread(target=reader) for _ in range(8)]
    for t in readers:
        t.start()
    try:
        for price in range(1, 121):
            updated = catalog.update(pid, {"price_cents": price})
            committed["version"] = updated["version"]
            seen, _ = catalog.get(pid)
            assert seen["price_cents"] == price, "a read right after the write returned an old value"
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert violations == []


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_down_reads_bypass_quickly(clean_db):
    product = make_product(bootstrap.catalog(), name="Lamp")
    bootstrap.reset(REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0")
    catalog = bootstrap.catalog()
    started = time.perf_counter()
    for _ in range(20):
        found, state = catalog.get(product["id"])
        assert state == "BYPASS" and found["name"] == "Lamp"
    # The breaker opens after the first failures: 20 reads cost far less than 20 timeouts.
    assert time.perf_counter() - started < 20 * 0.25
    updated = catalog.update(product["id"], {"name": "Lamp 2"})
    assert updated["version"] == 2
    bootstrap.reset()


def test_mysql_down_serves_stale_copy_and_503_when_uncached(clean_db):
    bootstrap.reset(CACHE_TTL_SECONDS=0)  # every copy is due for reload at once
    product = make_product(bootstrap.catalog(), name="Chair")
    bootstrap.catalog().get(product["id"])

    bootstrap.reset(CACHE_TTL_SECONDS=0, DATABASE_URL=f"mysql://root:@127.0.0.1:{_closed_port()}/nowhere")
    found, state = bootstrap.catalog().get(product["id"])
    assert state == "STALE" and found["name"] == "Chair"
    with pytest.raises(ServiceUnavailable):
        bootstrap.catalog().get(product["id"] + 1000)
    bootstrap.reset()


def test_one_loader_per_hot_key(catalog, monkeypatch):
    product = make_product(catalog)
    loads = []
    real_read = catalog._read_rows   # a miss's read (on the reader when there is one)

    def counting_read(product_ids):
        loads.append(product_ids)
        time.sleep(0.05)
        return real_read(product_ids)

    monkeypatch.setattr(catalog, "_read_rows", counting_read)
    barrier = threading.Barrier(10)
    states = []

    def read():
        barrier.wait()
        states.append(catalog.get(product["id"])[1])

    threads = [threading.Thread(target=read) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1
    assert len(states) == 10


def test_reset_closes_the_idle_redis_connections_it_forgets(clean_db):
    gateway = bootstrap.redis_gateway()
    client_id = gateway.call(lambda r: r.client_id())
    server = redis.Redis.from_url(gateway.url)

    bootstrap.reset()

    deadline = time.monotonic() + 5
    while str(client_id) in {str(c["id"]) for c in server.client_list()} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(client_id) not in {str(c["id"]) for c in server.client_list()}
    assert gateway.call(lambda r: r.ping())  # an old reference still works: it reconnects
    server.close()


def test_closing_the_gateway_never_breaks_a_command_in_flight(clean_db):
    """Tests (and bootstrap.reset()) close the idle connections while other
    threads still use the gateway: a connection handed out in between must not
    be closed under its command. redis-py's own disconnect(inuse_connections=False)
    did exactly that (AttributeError ... 'readline' in a racing writer)."""
    gateway = bootstrap.redis_gateway()
    errors, done = [], threading.Event()

    def user():
        while not done.is_set():
            try:
                gateway.call(lambda r: r.get(gateway.key("close-race")))
            except Exception as exc:  # CacheUnavailable or the AttributeError of a closed socket
                errors.append(repr(exc))

    users = [threading.Thread(target=user) for _ in range(16)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads constantly, so any unguarded window gets hit
    try:
        for t in users:
            t.start()
        deadline = time.monotonic() + 3
        closes = 0
        while time.monotonic() < deadline and not errors:
            gateway.close()
            closes += 1
    finally:
        done.set()
        for t in users:
            t.join()
        sys.setswitchinterval(switch_interval)
    assert errors == [], (closes, errors[:3])
    assert gateway.call(lambda r: r.ping())


def test_an_orders_invalidation_is_one_redis_round_trip(clean_db):
    """The fence and the search generation go in one pipeline, its script as EVAL: redis-py's
    registered script would first ask whether it is loaded (SCRIPT EXISTS), a round trip more
    on every order."""
    own = ThrowawayRedis(maxmemory=None).start()
    try:
        bootstrap.reset(**{**session_settings(clean_db), "REDIS_URL": own.url, "REDIS_STATE_URL": ""})
        product = make_product(bootstrap.catalog(), stock=5)
        server = redis.Redis.from_url(own.url, decode_responses=True)
        server.config_resetstat()
        generation = server.get(bootstrap.redis_gateway().key(SEARCH_GENERATION_KEY))
        placed = bootstrap.orders().place_batch(parse_batch({"orders": [
            {"client_order_id": "one-trip", "user_id": 1, "items": [{"product_id": product["id"], "quantity": 1}]}]}))
        assert placed["summary"]["created"] == 1
        calls = {name: stats["calls"] for name, stats in server.info("commandstats").items()}
        assert not any(name.startswith("cmdstat_script") for name in calls), calls
        assert calls.get("cmdstat_eval") == 1 and "cmdstat_evalsha" not in calls, calls
        fence = server.get(bootstrap.product_cache().fence_key(product["id"]))
        assert int(fence) == bootstrap.database().query("SELECT version FROM products WHERE id = %s",
                                                        (product["id"],))[0]["version"]
        assert server.get(bootstrap.redis_gateway().key(SEARCH_GENERATION_KEY)) != generation
    finally:
        bootstrap.reset()
        own.close()

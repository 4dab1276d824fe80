"""One master of the Redis Cluster killed: what it held degrades as a whole dead Redis
does (reads bypass the cache, rate limits fail open, the flash gate refuses sale orders
with 503), and every key on the other masters goes on as before. Each master has its
own breaker in the gateway, so the dead one never opens the circuit of the others."""
import json
import socket
import uuid

import pytest

from chalicelib import bootstrap
from chalicelib.adapters.cache import SEARCH_GENERATION_KEY, CacheUnavailable, RedisGateway
from chalicelib.adapters.ratelimit import RateLimiter
from chalicelib.settings import PLANS_FILE
from tests.conftest import make_product
from tests.integration.test_flash_sale import flash_queue, on_sale, order, place, remaining, sqs, stock  # noqa: F401
from tests.integration.test_ratelimit_bucket import FakeClock, drain

pytestmark = pytest.mark.redis_cluster
PLANS = json.loads(PLANS_FILE.read_text())["plans"]


def master_of(cluster, gateway, key):
    return cluster.node_of(gateway.slot(key))


def test_a_single_node_keeps_its_key_names_and_a_cluster_puts_the_tag_first(redis_cluster):
    """A deploy that stays on one node finds every key where the previous release left it."""
    single = RedisGateway("redis://127.0.0.1:1/0", prefix="p:")
    assert single.key("product:7:fence", tag=7) == "p:product:7:fence" and single.slot("p:x") == 0
    cluster = RedisGateway(redis_cluster.url, prefix="p:")
    try:
        assert cluster.key("product:7:fence", tag=7) == "p:{7}product:7:fence"
        assert cluster.slot(cluster.key("product:7", tag=7)) == cluster.slot(cluster.key("product:7:fence", tag=7))
        assert cluster.key("health") == "p:health"
        with pytest.raises(ValueError):
            RedisGateway(redis_cluster.url, prefix="p{x}:")
    finally:
        cluster.close()


def test_a_killed_master_bypasses_only_the_cached_products_it_held(catalog, redis_cluster):
    gateway, cache = bootstrap.redis_gateway(), bootstrap.product_cache()
    products = [make_product(catalog, name=f"Item {i}") for i in range(12)]
    for product in products:
        catalog.get(product["id"])
    # The master of the search generation, which every product write also sets: a write of a
    # product elsewhere must still be applied there, not wait on the dead master.
    victim = master_of(redis_cluster, gateway, gateway.key(SEARCH_GENERATION_KEY))
    on_victim = {p["id"] for p in products if master_of(redis_cluster, gateway, cache.key(p["id"])) is victim}
    assert 0 < len(on_victim) < len(products)
    victim.kill()
    for _ in range(3):   # past the breaker's threshold: the others' circuit stays closed
        for product in products:
            seen, state = catalog.get(product["id"])
            assert seen["name"] == product["name"]
            assert state == ("BYPASS" if product["id"] in on_victim else "HIT"), product["id"]
    # A write to a product of a live master is seen at once; its copy there is fenced and reloaded.
    live = next(p for p in products if p["id"] not in on_victim)
    catalog.update(live["id"], {"name": "Renamed"})
    assert catalog.get(live["id"])[0]["name"] == "Renamed"

    redis_cluster.restart(victim)   # back, empty: its products load again
    bootstrap.reset()
    catalog = bootstrap.catalog()
    states = {p["id"]: catalog.get(p["id"])[1] for p in products if p["id"] != live["id"]}
    assert {pid for pid, state in states.items() if state == "MISS"} == on_victim


def test_a_killed_master_lets_through_only_the_rate_limited_keys_it_held(redis_cluster):
    gateway = RedisGateway(redis_cluster.url, timeout=0.25, prefix=f"rl:{uuid.uuid4().hex[:8]}:")
    clock = FakeClock()
    limiter = RateLimiter(gateway, PLANS, clock=clock)
    # Two keys whose buckets live on different masters.
    keys = [f"key-{i}" for i in range(50)]
    by_master = {}
    for key in keys:
        by_master.setdefault(master_of(redis_cluster, gateway, gateway.key(f"ratelimit:{key}", tag=key)).port, key)
    live_key, dead_key = list(by_master.values())[:2]
    victim = master_of(redis_cluster, gateway, gateway.key(f"ratelimit:{dead_key}", tag=dead_key))
    burst = PLANS["limited"]["burst"]
    try:
        victim.kill()
        admitted, retry_after = drain(limiter, live_key, "limited")
        assert admitted == burst and retry_after >= 1   # still counted, still refused past its burst
        for _ in range(burst * 2):
            assert limiter.check(dead_key, "limited").allowed   # fails open, as with one dead Redis
    finally:
        gateway.close()


def test_a_killed_master_of_the_flash_gate_refuses_sale_orders_only(flash_queue, redis_cluster):
    """The gate's keys share `{flash}`: its master dead, sale orders answer 503 and take nothing;
    ordinary orders and the cached products of the other masters go on."""
    sale_pid = on_sale(stock=5)
    catalog, gateway, cache = bootstrap.catalog(), bootstrap.state_gateway(), bootstrap.product_cache()
    victim = master_of(redis_cluster, gateway, bootstrap.flash_gate().prefix)
    plain = []
    while len(plain) < 2:   # products cached on the other masters
        product = make_product(catalog, stock=5)
        if master_of(redis_cluster, gateway, cache.key(product["id"])) is not victim:
            plain.append(product["id"])
            catalog.get(product["id"])
    victim.kill()
    reply = place(order("s", 1, (sale_pid, 1)), order("p", 1, (plain[0], 1)))
    assert reply["results"][0]["status"] == "failed"
    assert reply["results"][0]["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert reply["results"][1]["status"] == "created"
    assert catalog.get(plain[1])[1] == "HIT"
    assert catalog.get(plain[0])[0]["stock"] == 4
    assert stock(sale_pid) == 5


def test_a_client_made_while_the_master_of_slot_0_is_down_still_serves_the_other_masters(redis_cluster):
    """redis-py takes a new client's command table from the master of slot 0 only: with that
    master dead, no client could be made and every key would bypass the cache."""
    first = redis_cluster.node_of(0)
    first.kill()
    gateway = RedisGateway(redis_cluster.url, timeout=0.25, prefix=f"s0:{uuid.uuid4().hex[:8]}:")
    try:
        key = next(k for k in (gateway.key(f"k{i}") for i in range(100)) if master_of(redis_cluster, gateway, k)
                   is not first)
        gateway.call(lambda r: r.set(key, "v"), key=key)
        assert gateway.call(lambda r: r.get(key), key=key) == "v"
    finally:
        gateway.close()


def test_a_script_in_a_pipeline_reaches_its_live_master_while_the_default_node_is_dead(redis_cluster):
    """A cluster pipeline asks its client's default node (one master) for the keys of an EVAL:
    with that master dead, an invalidation's script for a live master would fail with it."""
    gateway = RedisGateway(redis_cluster.url, timeout=0.25, prefix=f"dn:{uuid.uuid4().hex[:8]}:")
    script = gateway.script("redis.call('SET', KEYS[1], ARGV[1]) return 1")
    try:
        default = gateway.client.get_default_node()
        victim = next(node for node in redis_cluster.nodes if node.port == default.port)
        key = next(k for k in (gateway.key(f"k{i}") for i in range(100)) if master_of(redis_cluster, gateway, k)
                   is not victim)
        victim.kill()
        assert gateway.per_master([(key, lambda pipe: script(keys=[key], args=["v"], client=pipe))]) == [1]
        assert gateway.call(lambda r: r.get(key), key=key) == "v"
    finally:
        gateway.close()


def test_a_cluster_that_does_not_answer_at_cold_start_costs_calls_not_the_process(clean_db):
    """RedisCluster reads the slot map when made: the gateway makes it on its first call, behind
    its breaker, so a cluster down when a function starts degrades reads as a dead Redis does."""
    product = make_product(bootstrap.catalog(), name="Lamp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    bootstrap.reset(REDIS_URL=f"redis+cluster://127.0.0.1:{closed}/0")
    gateway = bootstrap.redis_gateway()
    for _ in range(3):
        found, state = bootstrap.catalog().get(product["id"])
        assert state == "BYPASS" and found["name"] == "Lamp"
    assert gateway.breaker.state == "open"   # the later calls did not try to connect
    with pytest.raises(CacheUnavailable, match="circuit open"):
        gateway.call(lambda r: r.ping())

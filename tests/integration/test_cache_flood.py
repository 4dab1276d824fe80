"""A cache flood cannot evict the state. Two redis-servers of our own, as the
template sets them up: the cache with a small maxmemory and the template's
evicting policy, the state with `noeviction`. With flash sales (reservations
queued and leased, customers' holds), a drained rate bucket and search budgets
in the state, a caller floods the cache with distinct search pages well past
its maxmemory: the cache evicts, the state is untouched key for key and still
decides as before, and the fences and the search generation are still there,
so a write after the flood still invalidates and no old page comes back."""
import json
import time
import uuid

import pytest
import redis

from chalicelib import bootstrap
from chalicelib.adapters.cache import SEARCH_GENERATION_KEY
from chalicelib.domain.reservations import customer_key, owner_key
from chalicelib.domain.errors import RateLimited
from chalicelib.domain.orders import parse_batch
from chalicelib.adapters.ratelimit import RateLimiter
from scripts import localstack, package
from tests.conftest import make_product, session_settings
from scripts.servers import ThrowawayRedis

CACHE_MAXMEMORY = 4 * 1024 * 1024
# A plan that refills one token in 100 s: the drained bucket must still refuse after the flood.
SLOW_PLAN = {"slow": {"rate_per_second": 0.01, "burst": 3}}


def template_policy(group):
    """The maxmemory-policy infra/template.yml gives a Redis replication group (the same with
    cluster mode on or off)."""
    resources = package.load_template(package.INFRA_TEMPLATE)["Resources"]
    _, *parameter_groups = resources[group]["Properties"]["CacheParameterGroupName"]["Fn::If"]
    policies = {resources[g["Ref"]]["Properties"]["Properties"]["maxmemory-policy"] for g in parameter_groups}
    assert len(policies) == 1, policies
    return policies.pop()


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    return localstack.sqs_client(aws_endpoint.url)


@pytest.fixture
def two_roles(sqs, clean_db):
    cache = ThrowawayRedis(maxmemory=str(CACHE_MAXMEMORY), policy=template_policy("Redis")).start()
    state = ThrowawayRedis(maxmemory="64mb", policy=template_policy("RedisState")).start()
    queue_name = f"{clean_db['FLASH_QUEUE_NAME']}-{uuid.uuid4().hex[:8]}"
    url, dlq_url = localstack.ensure_queue(sqs, localstack.QueueSpec(queue_name, visibility_timeout=30))
    # A lease longer than the test: the leased reservation must still hold its unit at the end.
    bootstrap.reset(**{**session_settings(clean_db), "REDIS_URL": cache.url, "REDIS_STATE_URL": state.url,
                       "FLASH_QUEUE_NAME": queue_name, "FLASH_LEASE_MS": "600000"})
    yield redis.Redis.from_url(cache.url, decode_responses=True), redis.Redis.from_url(state.url, decode_responses=True)
    bootstrap.reset()
    for u in (url, dlq_url):
        sqs.delete_queue(QueueUrl=u)
    cache.close()
    state.close()


def snapshot(client):
    """Every key of a Redis with its value, as comparable data."""
    read = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
    return {key: read[client.type(key)](key) for key in client.scan_iter(count=1000)}


def order(coid, user, pid, qty):
    return {"client_order_id": coid, "user_id": user, "items": [{"product_id": pid, "quantity": qty}]}


def test_a_cache_flood_evicts_copies_only(two_roles, monkeypatch):
    cache, state = two_roles
    assert cache.config_get("maxmemory-policy")["maxmemory-policy"].startswith(("volatile-", "allkeys-"))
    assert state.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    catalog = bootstrap.catalog()
    description = "A sturdy crate of pine boards, nailed and sanded, for apples, books or tools. " * 4
    crates = catalog.create_many([{"sku": f"FLOOD-{i}", "name": f"Flood crate {i}", "description": description,
                                   "category": "crates", "price_cents": 1000 + i, "stock": 5} for i in range(150)])
    for product in crates[:3]:
        catalog.update(product["id"], {"description": description + " Oiled."})   # fences at version 2

    # The state: a sale with two customers' orders queued and one order leased (its process died before SQS) ...
    sale = make_product(catalog, stock=10)["id"]
    bootstrap.flash_admin().start(sale, {"sale_stock": 6, "per_customer_limit": 2})
    results = bootstrap.orders().place_batch(parse_batch({"orders": [
        order("f1", 1, sale, 2), order("f2", 2, sale, 2)]}, "dev"))["results"]
    assert [r["status"] for r in results] == ["pending", "pending"]
    gate = bootstrap.flash_gate()
    assert gate.admit(owner_key("dev", 0, 3, "f3"), customer_key("dev", 0, 3), "h3", {sale: 1}).outcome == "ACCEPTED"
    # ... a drained bucket ...
    now = time.time()
    limiter = RateLimiter(bootstrap.state_gateway(), SLOW_PLAN, clock=lambda: now)
    assert [limiter.check("flood-key", "slow")[0] for _ in range(4)] == [True, True, True, False]
    # ... and a search budget spent (the clock held still: one minute's budget).
    search = bootstrap.search_service()
    monkeypatch.setattr(search, "clock", lambda: now)
    assert search.search_params({"q": "flood crate"}, "spender")[1] == "MISS"
    spent = int(state.get(search.budget_key("spender", int(now // 60))))
    generation = cache.get(bootstrap.redis_gateway().key(SEARCH_GENERATION_KEY))
    before = snapshot(state)

    # The flood: a caller's distinct searches, each a 100-item page cached fresh and stale.
    flooded = 0
    for floor in range(150):
        page, state_of = search.search_params({"min_price": str(floor), "limit": "100"}, "flooder")
        assert state_of == "MISS" and len(page["items"]) == 100
        flooded += 2 * len(json.dumps(page, ensure_ascii=False))   # the fresh page and its stale copy
    assert flooded > 3 * CACHE_MAXMEMORY
    assert cache.info("stats")["evicted_keys"] > 100

    # The state, key for key (the flooder's own budget aside: the flood was charged to it).
    flooder_budget = search.budget_key("flooder", int(now // 60))
    after = snapshot(state)
    assert int(after.pop(flooder_budget)) > 0 and before == after
    # ... and it still decides as before.
    assert gate.sale(sale)["remaining"] == 1 and gate.leases() == 1
    refused = bootstrap.orders().place_batch(parse_batch({"orders": [
        order("f4", 4, sale, 2), order("f5", 1, sale, 1)]}, "dev"))["results"]
    assert [r["error"]["code"] for r in refused] == ["INSUFFICIENT_STOCK", "SALE_LIMIT_EXCEEDED"]
    assert limiter.check("flood-key", "slow")[:2] == (False, 100)
    with monkeypatch.context() as budget, pytest.raises(RateLimited):
        budget.setattr(search, "budget_ms", spent)   # what it spent is all it may: the next search is refused
        search.search_params({"q": "flood crate", "category": "none"}, "spender")

    # The guards of the copies: fences and the generation were not evicted ...
    cached = bootstrap.product_cache()
    assert [cache.get(cached.fence_key(p["id"])) for p in crates[:3]] == ["2", "2", "2"]
    assert {cache.pttl(cached.fence_key(p["id"])) for p in crates} == {-1}   # why: no TTL, never a candidate
    assert cache.get(bootstrap.redis_gateway().key(SEARCH_GENERATION_KEY)) == generation
    # ... nothing else in the cache lives for ever (volatile-lfu evicts only keys with a TTL) ...
    undying = [k for k in cache.scan_iter(count=1000) if cache.pttl(k) == -1]
    assert undying and all(k.endswith((":fence", SEARCH_GENERATION_KEY)) for k in undying), undying[:5]
    # ... so a write after the flood still reaches every reader.
    page, _ = search.search_params({"min_price": "1000", "limit": "100"}, "flooder")
    assert crates[0]["name"] in [p["name"] for p in page["items"]]
    catalog.update(crates[0]["id"], {"name": "Renamed crate"})
    page, state_of = search.search_params({"min_price": "1000", "limit": "100"}, "flooder")
    assert state_of == "MISS" and "Renamed crate" in [p["name"] for p in page["items"]]
    assert catalog.get(crates[0]["id"])[0]["name"] == "Renamed crate"

"""Search cache on the real MariaDB and Redis: HIT/MISS, generation
invalidation, read-your-writes under racing readers, one loader per hot key,
STALE when MySQL is down, BYPASS (and fast) when Redis is killed."""
import shutil
import subprocess
import threading
import time

import pytest
import redis

from chalicelib import bootstrap
from chalicelib.adapters.cache import SEARCH_GENERATION_KEY
from chalicelib.domain.search_query import CursorSigner, encode_cursor, parse_query
from chalicelib.domain.errors import RateLimited, ServiceUnavailable, ValidationError
from tests.conftest import free_port, make_product


@pytest.fixture
def shop(catalog):
    return catalog


def svc():
    return bootstrap.search_service()


def q(**params):
    return svc().search_params({k: str(v) for k, v in params.items()})


def names(page):
    return [item["name"] for item in page["items"]]


def test_miss_then_hit_then_invalidated_by_a_write(shop):
    p = make_product(shop, name="Teapot", price_cents=1200)
    page, state = q(q="teapot")
    assert state == "MISS" and names(page) == ["Teapot"] and page["total"] == 1
    assert q(q="teapot") == (page, "HIT")
    assert q(q="TEAPOT!!")[1] == "HIT"   # same normalised query, same key
    generation = bootstrap.search_generation().current()
    shop.update(p["id"], {"name": "Teapot deluxe"})
    assert bootstrap.search_generation().current() != generation
    page, state = q(q="teapot")
    assert state == "MISS" and names(page) == ["Teapot deluxe"]


def test_a_lost_generation_never_brings_back_a_page_cached_before_it(shop):
    """The generation key gone (deleted, lost in a failover): the next one is new, so pages
    cached under any earlier generation stay unreachable. A counter that restarted at 0 found
    the pages it had cached under 0 again, older than the write that moved it on."""
    product = make_product(shop, name="Lantern")
    gateway = bootstrap.redis_gateway()

    def lose_generation():
        gateway.call(lambda r: r.delete(gateway.key(SEARCH_GENERATION_KEY)))

    lose_generation()                           # as a new cache Redis starts: no generation yet
    assert q(q="lantern")[1] == "MISS"          # cached under the first generation
    shop.update(product["id"], {"name": "Lantern pro"})
    assert names(q(q="lantern")[0]) == ["Lantern pro"]
    lose_generation()
    page, state = q(q="lantern")
    assert state == "MISS" and names(page) == ["Lantern pro"]
    # The cache Redis evicts only keys with a TTL (volatile-lfu): the generation has none.
    assert gateway.call(lambda r: r.pttl(gateway.key(SEARCH_GENERATION_KEY))) == -1


def test_cache_key_embeds_generation_and_hash(shop):
    make_product(shop, name="Vase")
    query = parse_query({"q": "vase"})
    q(q="vase")
    gateway = bootstrap.redis_gateway()
    generation = bootstrap.search_generation().current()
    key = gateway.key(f"product_search:{generation}:{query.cache_hash}")
    assert svc().key(generation, query) == key
    ttl = gateway.call(lambda r: r.pttl(key))
    configured = bootstrap.settings().number("SEARCH_TTL_SECONDS") * 1000
    assert 0.85 * configured < ttl <= 1.1 * configured


def test_stock_change_and_order_like_update_are_seen(shop):
    p = make_product(shop, name="Lantern", stock=1)
    assert q(q="lantern", in_stock="true")[0]["total"] == 1
    shop.adjust_stock(p["id"], {"delta": -1})
    page, state = q(q="lantern", in_stock="true")
    assert state == "MISS" and page["total"] == 0


def test_read_your_writes_while_readers_race(shop):
    """Writers rename and reprice; readers hammer the same searches trying to
    put old pages back. After every write returns, a search reflects it."""
    products = [make_product(shop, name=f"Racer{i} v0", price_cents=100) for i in range(3)]
    stop = threading.Event()
    failures = []

    def reader():
        while not stop.is_set():
            for p in products:
                try:
                    q(q=f"racer{products.index(p)}")
                    q(q="racer", max_price=10_000)
                except Exception as exc:  # pragma: no cover
                    failures.append(f"reader: {exc!r}")

    def writer(idx):
        p = products[idx]
        for version in range(1, 16):
            shop.update(p["id"], {"name": f"Racer{idx} v{version}", "price_cents": 100 + version})
            page, state = q(q=f"racer{idx}")
            got = [(i["name"], i["price_cents"]) for i in page["items"]]
            if got != [(f"Racer{idx} v{version}", 100 + version)]:
                failures.append(f"after write {version} of {idx}: {got} ({state})")
            page, _ = q(q="racer", max_price=10_000)
            mine = [i for i in page["items"] if i["id"] == p["id"]]
            if [m["name"] for m in mine] != [f"Racer{idx} v{version}"]:
                failures.append(f"broad search after write {version} of {idx}: {mine}")
            page, _ = q(q=f"v{version - 1}")  # the old name must be gone
            if any(i["id"] == p["id"] for i in page["items"]):
                failures.append(f"old name v{version - 1} of {idx} still found")

    readers = [threading.Thread(target=reader) for _ in range(4)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not failures, failures[:5]


class SlowCountingBackend:
    def __init__(self, inner, delay=0.15):
        self.inner, self.delay, self.calls = inner, delay, 0
        self.lock = threading.Lock()

    def search(self, query):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return self.inner.search(query)

    def index(self, cur, rows):
        self.inner.index(cur, rows)


def test_one_loader_per_hot_key(shop):
    make_product(shop, name="Hot item")
    service = svc()
    counting = SlowCountingBackend(service.backend)
    service.backend = counting
    states, barrier = [], threading.Barrier(12)

    def hit():
        barrier.wait()
        states.append(q(q="hot")[1])

    threads = [threading.Thread(target=hit) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counting.calls == 1
    assert sorted(states) == ["HIT"] * 11 + ["MISS"]


@pytest.fixture
def mysql_down(shop):
    """Point the app at a port where no MySQL listens (the shared server is untouched)."""
    def cut():
        bootstrap.reset(DATABASE_URL=f"mysql://root:@127.0.0.1:{free_port()}/nowhere")

    yield cut
    bootstrap.reset()


def test_stale_when_mysql_is_down(shop, mysql_down):
    make_product(shop, name="Umbrella")
    before, state = q(q="umbrella")
    assert state == "MISS"
    bootstrap.search_generation().bump()   # e.g. a write happened: the fresh copy is unreachable
    mysql_down()
    page, state = q(q="umbrella")
    assert state == "STALE" and page == before
    with pytest.raises(ServiceUnavailable):
        q(q="never searched before")
    # A fresh HIT still answers as a HIT.
    page2, state2 = q(q="umbrella")
    assert state2 == "STALE" and page2 == before


class OwnRedis:
    """A throwaway redis-server of this test, which the test may kill."""

    def __init__(self):
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("throwaway redis did not start")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def own_redis(shop):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server not installed")
    server = OwnRedis()
    server.start()
    bootstrap.reset(REDIS_URL=f"redis://127.0.0.1:{server.port}/0")
    yield server
    server.kill()
    bootstrap.reset()


def test_redis_killed_searches_still_correct_bypass_and_fast(shop, own_redis):
    make_product(shop, name="Compass", description="brass", price_cents=900)
    make_product(shop, name="Compass mini", description="plastic", price_cents=300)
    assert q(q="compass")[1] == "MISS"
    assert q(q="compass")[1] == "HIT"
    own_redis.kill()
    started = time.perf_counter()
    latencies = []
    for i in range(40):
        t = time.perf_counter()
        page, state = q(q="compass", sort="price_asc")
        latencies.append(time.perf_counter() - t)
        assert state == "BYPASS"
        assert names(page) == ["Compass mini", "Compass"] and page["total"] == 2
    total = time.perf_counter() - started
    # The breaker opens after two failures: the rest pay no Redis timeout.
    assert sorted(latencies)[len(latencies) // 2] < 0.1, latencies
    assert total < 5, total
    # Writes still commit and the next searches reflect them (served from MySQL).
    product = q(q="compass mini")[0]["items"][0]
    bootstrap.catalog().update(product["id"], {"name": "Compass micro"})
    assert names(q(q="compass", sort="price_asc")[0]) == ["Compass micro", "Compass"]


def test_redis_back_after_kill_cache_resumes(shop, own_redis):
    make_product(shop, name="Sextant")
    assert q(q="sextant")[1] == "MISS"
    own_redis.kill()
    assert q(q="sextant")[1] == "BYPASS"
    own_redis.start()                 # same port, empty
    time.sleep(1.1)                   # breaker half-open
    states = [q(q="sextant")[1] for _ in range(3)]
    assert states[-1] == "HIT" and "MISS" in states


def caller_q(caller, **params):
    return svc().search_params({k: str(v) for k, v in params.items()}, caller)


def test_popular_searches_recorded_and_warmed(shop):
    make_product(shop, name="Kite")
    make_product(shop, name="Drone")
    for _ in range(3):
        caller_q("key-a", q="kite")
    caller_q("key-b", q="drone", limit=7)     # recorded as the page the warmer fills
    caller_q("key-a", q="kayak")              # no results: not recorded
    q(q="drone")                              # no caller (the warmer, tools): not recorded
    popular = svc().popular_searches(10)
    assert popular == [{"q": "kite", "sort": "relevance", "limit": "20"},
                       {"q": "drone", "sort": "relevance", "limit": "20"}]
    bootstrap.search_generation().bump()
    summary = bootstrap.warm_caches(top_products=5, searches=[{"q": "kite", "sort": "price_asc"}])
    assert summary["errors"] == 0
    assert summary["searches"] == {"MISS": 3}
    assert sum(summary["products"].values()) == 2
    assert q(q="kite")[1] == "HIT" and q(q="kite", sort="price_asc")[1] == "HIT"
    assert bootstrap.catalog().get(shop.load(q(q="drone")[0]["items"][0]["id"])["id"])[1] == "HIT"


def test_one_key_cannot_steer_the_popular_searches(shop, monkeypatch):
    make_product(shop, name="Kite")
    make_product(shop, name="Drone")
    make_product(shop, name="Spam")
    monkeypatch.setattr(svc(), "POPULAR_PER_KEY_SEARCH", 3)
    monkeypatch.setattr(svc(), "POPULAR_SEARCHES_PER_KEY", 2)
    for _ in range(10):
        caller_q("greedy", q="spam")          # counts 3 times, not 10
    caller_q("greedy", q="kite")
    caller_q("greedy", q="drone")             # a third distinct search of the day: not counted
    for caller in ("k1", "k2", "k3", "k4"):
        caller_q(caller, q="kite")
    ranked = [p["q"] for p in svc().popular_searches(10)]
    assert ranked == ["kite", "spam"]


def test_limit_is_cut_from_a_shared_cached_page(shop):
    made = [make_product(shop, name=f"Lamp {i}", price_cents=100 + i)["id"] for i in range(25)]
    page, state = q(q="lamp", sort="price_asc", limit=3)
    assert state == "MISS" and [p["id"] for p in page["items"]] == made[:3]
    assert q(q="lamp", sort="price_asc", limit=17)[1] == "HIT"       # same 20-item page
    assert q(q="lamp", sort="price_asc", limit=21)[1] == "MISS"      # the 50-item page
    seen, cursor = [], None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        page, _ = q(q="lamp", sort="price_asc", limit=7, **extra)
        assert page["total"] == 25
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made


def redis_keys(test_env):
    """Every key of this session, in the cache and in the state store."""
    found = set()
    for url in (test_env["REDIS_URL"], test_env["REDIS_STATE_URL"]):
        client = redis.Redis.from_url(url, decode_responses=True)
        found |= {f"{url} {k}" for k in client.scan_iter(match=test_env["REDIS_KEY_PREFIX"] + "*")}
        client.close()
    return found


@pytest.mark.parametrize("forgery", ["crafted", "moved", "tampered", "another_secret", "cut_short"])
def test_a_cursor_this_deployment_did_not_sign_is_400_before_any_read_or_new_key(shop, test_env, monkeypatch,
                                                                                forgery):
    made = [make_product(shop, name=f"Lamp {i}", price_cents=100 + i)["id"] for i in range(5)]
    first, _ = caller_q("pager", q="lamp", sort="price_asc", limit=2)
    signed = first["next_cursor"]
    cursor, _, mac = signed.rpartition(".")
    query = parse_query({"q": "lamp", "sort": "price_asc"})
    forged = {
        "crafted": encode_cursor(query, (100, made[0])),               # a position the caller wrote itself
        "moved": encode_cursor(query, (100, made[0])) + "." + mac,     # ... under the mac of the one it was given
        "tampered": signed[:-1] + ("A" if signed[-1] != "A" else "B"),
        "another_secret": CursorSigner("another deployment's secret").sign(cursor),
        "cut_short": signed[:-4],
    }[forgery]
    keys = redis_keys(test_env)
    backend_queries = []
    monkeypatch.setattr(svc().backend, "search", backend_queries.append)
    with pytest.raises(ValidationError) as refused:
        caller_q("pager", q="lamp", sort="price_asc", limit=2, cursor=forged)
    assert refused.value.extra["details"] == {"field": "cursor"}
    assert backend_queries == [] and redis_keys(test_env) == keys
    monkeypatch.undo()
    second, _ = caller_q("pager", q="lamp", sort="price_asc", limit=2, cursor=signed)   # the one it issued pages on
    assert [p["id"] for p in second["items"]] == made[2:4]


def test_no_cached_page_is_larger_than_the_bound_even_for_the_largest_products(shop, test_env):
    """Descriptions as long as validation allows, in 4-byte characters: a 100-item page of
    them is ~4 MB. It is answered but stored neither fresh nor stale; a page of ordinary
    products (the demo catalog's are ~0.4 KB each) is cached as before."""
    longest = "\U0001F600" * 10000
    shop.create_many([{"sku": f"BIG-{i}", "name": f"Heavy crate {i}", "description": longest,
                       "category": "bulk", "price_cents": 100 + i, "stock": 1} for i in range(100)])
    shop.create_many([{"sku": f"STD-{i}", "name": f"Plain crate {i}", "description": "A wooden crate, 40 x 30 cm.",
                       "category": "bulk", "price_cents": 100 + i, "stock": 1} for i in range(100)])
    page, state = caller_q("crates", q="heavy crate", limit=100)
    assert len(page["items"]) == 100 and state == "BYPASS"
    assert caller_q("crates", q="heavy crate", limit=100)[1] == "BYPASS"
    assert caller_q("crates", q="plain crate", limit=100)[1] == "MISS"
    assert caller_q("crates", q="plain crate", limit=100)[1] == "HIT"
    cache = redis.Redis.from_url(test_env["REDIS_URL"])
    pages = [k for k in cache.scan_iter(match=test_env["REDIS_KEY_PREFIX"] + "product_search:*")
             if cache.type(k) == b"string" and not k.endswith((b":generation", b":loading"))]
    assert len(pages) == 2   # the plain page, fresh and stale
    assert max(cache.strlen(k) for k in pages) <= svc().MAX_PAGE_BYTES
    cache.close()


def test_filters_that_select_nothing_away_share_the_cache_key(shop):
    make_product(shop, name="Globe")
    assert q(q="globe")[1] == "MISS"
    assert q(q="globe", min_price=0, max_price=10**12)[1] == "HIT"
    assert q(q="globe", min_price=1)[1] == "MISS"


def test_a_key_over_its_search_budget_gets_429_but_cached_answers(shop, monkeypatch):
    make_product(shop, name="Compass")
    monkeypatch.setattr(svc(), "budget_ms", 1)
    assert caller_q("spender", q="compass")[1] == "MISS"   # spends at least 1 ms
    with pytest.raises(RateLimited) as raised:
        caller_q("spender", q="compass", category="none")
    assert raised.value.extra["details"] == {"reason": "search_budget", "budget_ms": 1}
    assert 1 <= raised.value.retry_after <= 60
    assert caller_q("spender", q="compass")[1] == "HIT"     # cached: no database time
    assert caller_q("someone-else", q="compass", category="none")[1] == "MISS"

"""MySQL readers against a real replica: a throwaway primary with a binary log
and a second mariadbd replicating it (scripts/servers.py ThrowawayReplicaPair).
Search, product and related reads are served by the replica; a replica held
back (STOP SLAVE SQL_THREAD) never leaves an old product or search page in the
cache after a write; reads fall back to the writer when the replica dies or
lags past READER_MAX_LAG_MS, and the lag is reported."""
import os
import time
import uuid

import pytest

from chalicelib import bootstrap
from chalicelib.domain.search_query import generation_born_ms
from chalicelib.adapters.migrate import migrate
from chalicelib.domain.orders import parse_batch
from chalicelib.domain.search_query import parse_query
from scripts.servers import ThrowawayReplicaPair
from tests.conftest import ADMIN_KEY, DEV_KEY, delete_prefix

pytestmark = pytest.mark.replica

DB_NAME = "shop_replica"
TABLES = ("notifications_sent", "product_pairs", "related_events", "order_events", "order_items",
          "payment_references", "orders", "batch_results", "batches", "flash_sales", "products", "search_terms",
          "search_typos")
MAX_LAG_MS = 3000


@pytest.fixture(scope="module")
def pair(tmp_path_factory, test_env):
    servers = ThrowawayReplicaPair(tmp_path_factory.mktemp("replica-pair")).start()
    try:
        bootstrap.reset(DATABASE_URL=servers.primary.url(DB_NAME))
        migrate(bootstrap.database())
        assert servers.caught_up()
        yield servers
    finally:
        bootstrap.reset()
        servers.close()


@pytest.fixture
def reads(pair, test_env):
    """A clean catalog on both servers, a key prefix of its own, and the app reading from the
    replica; `reads.metrics` collects what the readers report."""
    pair.release()
    pair.primary.execute("SET GLOBAL event_scheduler = ON")
    for table in TABLES:
        pair.primary.execute(f"DELETE FROM {table}", database=DB_NAME)
    assert pair.caught_up()
    prefix = f"test:replica:{uuid.uuid4().hex[:8]}:"
    bootstrap.reset(DATABASE_URL=pair.primary.url(DB_NAME), DATABASE_READER_URL=pair.replica.url(DB_NAME),
                    REDIS_KEY_PREFIX=prefix, READER_MAX_LAG_MS=MAX_LAG_MS)
    readers = bootstrap.readers()
    readers.metrics = []
    readers.emit = lambda name, value, unit=None, **dims: readers.metrics.append((name, dims.get("reason")))
    wait_for(lambda: readers.choose() is readers.reader, "the replica's heartbeat")
    yield readers
    pair.release()
    bootstrap.reset()
    for url in (test_env["REDIS_URL"], test_env["REDIS_STATE_URL"]):
        delete_prefix(url, prefix)


def wait_for(condition, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def replica_stamp(pair):
    return pair.replica.execute("SELECT beat_ms FROM replica_heartbeat WHERE id = 1", database=DB_NAME)[0]["beat_ms"]


def wait_for_stamp_past_generation(pair):
    """Until the replica's heartbeat is later than the current search generation's birth (and the skew)."""
    born = generation_born_ms(bootstrap.search_generation().current())
    wait_for(lambda: replica_stamp(pair) >= born + bootstrap.readers().clock_skew_ms,
             "the heartbeat to pass the generation")


def selects(server):
    """SELECT statements the server has run (the replica's own replication runs none)."""
    return int(server.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")[0]["Value"])


def new_product(**fields):
    body = {"sku": f"R-{uuid.uuid4().hex[:10]}", "name": "Replica lamp", "description": "", "category": "lamps",
            "price_cents": 1500, "stock": 10, **fields}
    return bootstrap.catalog().create(body)


def search(text):
    return bootstrap.search_service().search(parse_query({"q": text}))


def cached_page(text):
    """The page cached for `text` under the current generation, or None."""
    svc = bootstrap.search_service()
    key = svc.key(bootstrap.search_generation().current(), parse_query({"q": text}).backend_query())
    raw = svc.gateway.call(lambda r: r.get(key))
    return raw


def test_heartbeat_reaches_the_replica_and_its_lag_is_reported(pair, reads):
    first = reads.status()
    assert first == {"configured": True, "up": True, "lag_ms": first["lag_ms"], "max_lag_ms": MAX_LAG_MS}
    assert 0 <= first["lag_ms"] <= MAX_LAG_MS
    beat = replica_stamp(pair)
    wait_for(lambda: replica_stamp(pair) > beat, "a newer heartbeat on the replica")
    assert ("ReaderLag", None) in reads.metrics


def test_search_is_served_by_the_replica(pair, reads):
    new_product(name="Walnut reading lamp")
    assert pair.caught_up()
    wait_for_stamp_past_generation(pair)
    primary, replica = selects(pair.primary), selects(pair.replica)
    page, state = search("walnut")
    assert state == "MISS" and [item["name"] for item in page["items"]] == ["Walnut reading lamp"]
    assert selects(pair.primary) == primary, "the search read the writer"
    assert selects(pair.replica) > replica
    assert cached_page("walnut") is not None
    assert search("walnut")[1] == "HIT"


def test_product_reads_on_a_miss_are_served_by_the_replica(pair, reads):
    product = new_product()
    assert pair.caught_up()
    bootstrap.product_cache().invalidate({product["id"]: product["version"]})   # drop the copy, keep the fence
    primary, replica = selects(pair.primary), selects(pair.replica)
    got, state = bootstrap.catalog().get(product["id"])
    assert (got["version"], state) == (product["version"], "MISS")
    assert selects(pair.primary) == primary
    assert selects(pair.replica) > replica
    assert bootstrap.catalog().get(product["id"])[1] == "HIT"


def test_held_replica_never_caches_an_old_product_after_a_write(pair, reads):
    product = new_product(name="Brass lamp")
    assert pair.caught_up()
    pair.hold()
    updated = bootstrap.catalog().update(product["id"], {"name": "Copper lamp"})
    assert pair.replica.execute("SELECT name FROM products WHERE id = %s", (product["id"],),
                                database=DB_NAME)[0]["name"] == "Brass lamp"
    got, state = bootstrap.catalog().get(product["id"])
    assert (got["name"], got["version"], state) == ("Copper lamp", updated["version"], "MISS")
    cached, fresh = bootstrap.product_cache().get(product["id"])
    assert (cached["name"], cached["version"], fresh) == ("Copper lamp", updated["version"], True)
    assert ("ReaderFallback", "stale") in reads.metrics
    # many readers at once: none of them puts the replica's copy back
    many = bootstrap.catalog().get_many([product["id"]])
    assert many[product["id"]]["name"] == "Copper lamp"


def test_product_the_replica_lacks_is_read_from_the_writer(pair, reads):
    pair.hold()
    product = new_product(name="Fresh lamp")
    got, _ = bootstrap.catalog().get(product["id"])
    assert got["name"] == "Fresh lamp"
    assert bootstrap.catalog().get_many([product["id"]])[product["id"]]["name"] == "Fresh lamp"
    body, _ = bootstrap.related_products().related(product["id"])
    assert body == {"product_id": product["id"], "items": []}


def test_held_replica_never_caches_an_old_search_page(pair, reads):
    product = new_product(name="Teak desk lamp")
    assert pair.caught_up()
    pair.hold()
    bootstrap.catalog().update(product["id"], {"name": "Oak desk lamp"})
    page, state = search("teak")
    # the replica still has the old name: answered within the lag bound, never cached
    assert state == "MISS" and [item["name"] for item in page["items"]] == ["Teak desk lamp"]
    assert cached_page("teak") is None and cached_page("oak") is None
    search("oak")
    assert cached_page("oak") is None
    pair.release()
    assert pair.caught_up()
    wait_for_stamp_past_generation(pair)
    page, state = search("oak")
    assert state == "MISS" and [item["name"] for item in page["items"]] == ["Oak desk lamp"]
    assert search("oak")[1] == "HIT"
    assert search("teak")[0]["items"] == []


def test_reads_fall_back_to_the_writer_when_the_replica_lags_past_the_bound(pair, reads):
    product = new_product(name="Slate lamp")
    assert pair.caught_up()
    pair.hold()
    wait_for(lambda: reads.choose() is reads.writer, "the lag to pass the bound", timeout=MAX_LAG_MS / 1000 + 5)
    assert reads.status()["lag_ms"] > MAX_LAG_MS
    assert ("ReaderFallback", "lag") in reads.metrics
    bootstrap.catalog().update(product["id"], {"name": "Granite lamp"})
    replica = selects(pair.replica)
    page, state = search("granite")
    assert [item["name"] for item in page["items"]] == ["Granite lamp"]
    assert state == "MISS" and cached_page("granite") is not None   # the writer's page is cached
    assert selects(pair.replica) - replica <= 1   # a heartbeat check at most
    pair.release()
    wait_for(lambda: reads.choose() is reads.reader, "the replica to catch up")


def test_reads_fall_back_to_the_writer_when_the_replica_dies(pair, reads):
    product = new_product(name="Iron lamp")
    assert pair.caught_up()
    pair.replica.kill()
    try:
        bootstrap.product_cache().invalidate({product["id"]: product["version"]})
        got, state = bootstrap.catalog().get(product["id"])
        assert (got["name"], state) == ("Iron lamp", "MISS")
        page, _ = search("iron")
        assert [item["name"] for item in page["items"]] == ["Iron lamp"]
        assert ("ReaderFallback", "down") in reads.metrics
        assert reads.status()["up"] is False
        assert reads.choose() is reads.writer
    finally:
        pair.replica.start()
    wait_for(lambda: reads.choose() is reads.reader, "the restarted replica")


def test_order_reads_stay_on_the_writer(pair, reads):
    product = new_product(stock=5)
    assert pair.caught_up()
    replica = selects(pair.replica)
    result = bootstrap.orders().place_batch(parse_batch(
        {"orders": [{"client_order_id": "r1", "user_id": 7, "items": [{"product_id": product["id"], "quantity": 1}]}]}))
    order = bootstrap.orders().get(result["results"][0]["order_id"])
    assert order["items"][0]["product_id"] == product["id"]
    # the replica saw heartbeat checks at most, no order read
    assert selects(pair.replica) - replica <= 2


def test_related_products_are_ranked_on_the_replica(pair, reads):
    lamp, bulb = new_product(name="Pair lamp"), new_product(name="Pair bulb")
    pair.primary.execute("INSERT INTO product_pairs (product_id, other_id, orders) VALUES (%s, %s, 3), (%s, %s, 3)",
                         (lamp["id"], bulb["id"], bulb["id"], lamp["id"]), database=DB_NAME)
    assert pair.caught_up()
    primary = selects(pair.primary)
    body, state = bootstrap.related_products().related(lamp["id"])
    assert state == "MISS"
    assert [(item["product"]["name"], item["bought_together"]) for item in body["items"]] == [("Pair bulb", 3)]
    # the partner came from the product cache (the create put it there), the ranking from the replica
    assert selects(pair.primary) == primary


def test_over_http_a_catalog_writer_finds_its_change_while_a_held_replica_answers_others(pair, reads):
    from chalice.test import Client

    from app import app

    product = new_product(name="Maple floor lamp")
    assert pair.caught_up()
    pair.hold()
    environ = os.environ   # Chalice's test client swaps os.environ per request
    try:
        with Client(app, stage_name="local") as client:
            changed = client.http.patch(f"/products/{product['id']}", body='{"name": "Cherry floor lamp"}',
                                        headers={"x-api-key": ADMIN_KEY, "content-type": "application/json"})
            assert changed.status_code == 200, changed.body
            # the held replica answers a storefront (not cached); the admin's search goes to the writer,
            # and its page, cached, then answers everyone
            for key, expected, state in ((DEV_KEY, [], "MISS"), (ADMIN_KEY, ["Cherry floor lamp"], "MISS"),
                                         (DEV_KEY, ["Cherry floor lamp"], "HIT")):
                got = client.http.get("/products/search?q=cherry", headers={"x-api-key": key})
                assert got.status_code == 200
                assert ([item["name"] for item in got.json_body["items"]], got.headers["X-Cache"]) == \
                    (expected, state), key
            got = client.http.get(f"/products/{product['id']}", headers={"x-api-key": DEV_KEY})
            assert got.json_body["product"]["name"] == "Cherry floor lamp"
    finally:
        os.environ = environ
    assert cached_page("cherry") is not None


def test_without_a_reader_every_read_goes_to_the_writer(pair, reads):
    bootstrap.reset(DATABASE_URL=pair.primary.url(DB_NAME), REDIS_KEY_PREFIX=f"test:replica:{uuid.uuid4().hex[:8]}:")
    readers = bootstrap.readers()
    assert readers.reader is None and readers.choose() is readers.writer
    assert readers.status() == {"configured": False}
    assert readers.covers(0) is False and readers.stamped is None

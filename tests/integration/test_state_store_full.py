"""A full state store (a redis-server of our own with `noeviction`, filled to its
`maxmemory`): everything that would add state answers a contract-shaped 503 with
Retry-After and changes nothing; what gives units back or finishes an order
already admitted still runs. The cache stays on the shared Redis (not full)."""
import json
import time
import uuid

import pytest
import redis
from chalice.test import Client

from chalicelib import bootstrap
from chalicelib.domain.errors import StoreFull
from chalicelib.adapters import flash_gate
from chalicelib.domain.reservations import customer_key, owner_key
from chalicelib.domain.orders import parse_batch
from chalicelib.entrypoints import sqs as sqs_handlers
from scripts import localstack
from tests.conftest import ADMIN_KEY, DEV_KEY, free_port, make_product, session_settings
from scripts.servers import ThrowawayRedis

ROOMY = 64 * 1024 * 1024
MOBILE_KEY = "shop-local-mobile-app-key-0001"   # the public plan's key that ships in the app


@pytest.fixture(scope="module")
def state_redis():
    server = ThrowawayRedis(maxmemory=str(ROOMY), policy="noeviction").start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    return localstack.sqs_client(aws_endpoint.url)


@pytest.fixture
def store(state_redis, sqs, clean_db):
    """The app with its state on `state_redis` (emptied, roomy again) and a flash queue of this test's own."""
    raw = redis.Redis.from_url(state_redis.url, decode_responses=True)
    raw.flushall()   # our own server
    raw.config_set("maxmemory", ROOMY)
    queue_name = f"{clean_db['FLASH_QUEUE_NAME']}-{uuid.uuid4().hex[:8]}"
    url, dlq_url = localstack.ensure_queue(sqs, localstack.QueueSpec(queue_name, visibility_timeout=30))
    settings = {**session_settings(clean_db), "REDIS_STATE_URL": state_redis.url, "FLASH_QUEUE_NAME": queue_name}
    bootstrap.reset(**settings)
    yield Store(raw, settings, url)
    bootstrap.reset()
    for u in (url, dlq_url):
        sqs.delete_queue(QueueUrl=u)
    raw.close()


class Store:
    def __init__(self, raw, settings, queue_url):
        self.raw, self.settings, self.queue_url = raw, settings, queue_url

    def fill(self, headroom=64 * 1024):
        """Fill the store to its maxmemory: from now on Redis refuses every write that adds to it."""
        self.raw.config_set("maxmemory", self.raw.info("memory")["used_memory"] + headroom)
        filler = 0
        try:
            while True:
                self.raw.set(f"filler:{filler}", "x" * 1024)
                filler += 1
        except redis.exceptions.OutOfMemoryError:
            pass
        # Freed client buffers must not open a gap a small write slips through: full it stays.
        self.raw.config_set("maxmemory", self.raw.info("memory")["used_memory"] - headroom)

    def leave_room(self, headroom):
        """maxmemory `headroom` bytes above what the store holds now."""
        self.raw.config_set("maxmemory", self.raw.info("memory")["used_memory"] + headroom)

    def app(self, **overrides):
        """The API in-process on this store (Chalice's test client puts the local stage's config
        in os.environ while it runs; the overrides win)."""
        bootstrap.reset(**{**self.settings, **overrides})
        from app import app

        return Client(app, stage_name="local")

    def flash_keys(self):
        return sorted(k for k in self.raw.scan_iter(match=self.settings["REDIS_KEY_PREFIX"] + "flash:res:*"))


def on_sale(stock=10, sale_stock=None, limit=None):
    product = make_product(bootstrap.catalog(), stock=stock)
    body = {"sale_stock": sale_stock or stock, **({"per_customer_limit": limit} if limit else {})}
    bootstrap.flash_admin().start(product["id"], body)
    return product["id"]


def order(coid, user, pid, qty=1):
    return {"client_order_id": coid, "user_id": user, "items": [{"product_id": pid, "quantity": qty}]}


def stock(pid):
    return bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (pid,))[0]["stock"]


def order_count():
    return bootstrap.database().query("SELECT COUNT(*) AS n FROM orders")[0]["n"]


def post(client, path, body, key=DEV_KEY):
    return client.http.post(path, headers={"x-api-key": key, "content-type": "application/json"},
                            body=json.dumps(body))


def assert_full_503(response):
    assert response.status_code == 503, response.body
    assert response.headers["Retry-After"] == "2"
    error = response.json_body["error"]
    assert error["code"] == "SERVICE_UNAVAILABLE" and error["request_id"]
    assert error["details"] == {"reason": "state_store_full"}


def test_a_full_store_refuses_flash_admission_whole_and_places_nothing(store):
    sale = on_sale(stock=10)
    plain = make_product(bootstrap.catalog(), stock=10)["id"]
    store.fill()
    with store.app(APP_RATE_LIMIT="false") as client:
        response = post(client, "/orders/batch", {"orders": [order("s1", 1, sale), order("p1", 1, plain)]})
    assert_full_503(response)
    assert "full" in response.json_body["error"]["message"]
    # Nothing half-done: the sale offers all its units, no reservation, no order, the plain stock untouched.
    assert bootstrap.flash_gate().sale(sale)["remaining"] == 10
    assert store.flash_keys() == []
    assert order_count() == 0 and stock(plain) == 10 and stock(sale) == 10


def test_a_signed_in_customer_on_the_public_app_key_gets_the_same_503(store, test_env):
    """The caller the state is guarded against: open sign-up, the app's public key, a real token."""
    cognito = localstack.cognito_client(test_env["AWS_ENDPOINT_URL"])
    email = f"hostile-{uuid.uuid4().hex[:8]}@example.com"
    localstack.ensure_customer(cognito, test_env["COGNITO_USER_POOL_ID"], email, "Customer-Passw0rd!")
    token = localstack.sign_in(cognito, test_env["COGNITO_APP_CLIENT_IDS"], email, "Customer-Passw0rd!")
    sale = on_sale(stock=10)
    store.fill()
    with store.app(APP_RATE_LIMIT="false") as client:
        response = client.http.post("/customer/orders/batch", body=json.dumps(
            {"orders": [{"client_order_id": "h1", "items": [{"product_id": sale, "quantity": 1}]}]}),
            headers={"x-api-key": MOBILE_KEY, "authorization": f"Bearer {token}", "content-type": "application/json"})
    assert_full_503(response)
    assert bootstrap.flash_gate().sale(sale)["remaining"] == 10 and store.flash_keys() == [] and order_count() == 0


def test_a_batch_the_store_fills_up_under_gives_back_the_orders_it_admitted(store):
    """Redis refused an admission after it had run the batch's first ones: those are released
    in the same call, so the batch is admitted whole or not at all."""
    sale = on_sale(stock=500, sale_stock=500)
    gate = bootstrap.flash_gate()
    orders = parse_batch({"orders": [order(f"b{i}", i + 1, sale) for i in range(100)]}, "dev")
    calls = [(owner_key(o.client, o.customer_id, o.user_id, o.client_order_id),
              customer_key(o.client, o.customer_id, o.user_id), o.request_hash, o.quantities) for o in orders]
    # The scripts are on the server first: loading one under the limit would be refused, and no admission would run.
    for source in (flash_gate._ADMIT, flash_gate._RELEASE):
        store.raw.script_load(source)
    # How much room lets some of the batch in depends on the server's own buffers (the pipelined
    # batch itself is read into one): widen it until Redis runs some admissions, then refuses one.
    for room_kb in range(16, 1024, 16):
        store.leave_room(room_kb * 1024)
        before = store.raw.info("commandstats")["cmdstat_evalsha"]
        with pytest.raises(StoreFull):
            gate.admit_many(calls)
        after = store.raw.info("commandstats")["cmdstat_evalsha"]
        ran = (after["calls"] - after["failed_calls"]) - (before["calls"] - before["failed_calls"])
        assert gate.sale(sale)["remaining"] == 500   # all or nothing, whatever ran
        assert store.flash_keys() == [] and gate.leases() == 0
        if ran >= 2:   # at least one admission, and the release of what it took
            break
    else:
        pytest.fail("no room let an admission run before the refusal")


def test_a_full_store_refuses_to_start_a_sale_and_records_none(store):
    product = make_product(bootstrap.catalog(), stock=10)["id"]
    store.fill()
    with store.app(APP_RATE_LIMIT="false") as client:
        response = post(client, f"/products/{product}/sale", {"sale_stock": 5}, key=ADMIN_KEY)
        assert response.status_code == 503 and response.headers["Retry-After"] == "2"
        assert response.json_body["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert "full" in response.json_body["error"]["message"]
    assert bootstrap.database().query("SELECT COUNT(*) AS n FROM flash_sales")[0]["n"] == 0
    assert bootstrap.flash_gate().sale(product) is None


def test_the_rate_limit_fails_closed_on_a_full_store_and_open_on_a_dead_one(store):
    """Full: Redis answers but cannot count, and letting requests through would hand any
    caller an unlimited key. Down (the breaker open): as before, every request goes through."""
    product = make_product(bootstrap.catalog(), stock=1)["id"]
    store.fill()
    with store.app(APP_RATE_LIMIT="true") as client:
        responses = [client.http.get(f"/products/{product}", headers={"x-api-key": DEV_KEY}) for _ in range(3)]
        assert_full_503(responses[0])
        assert [r.status_code for r in responses] == [503] * 3   # the breaker stays closed: it is full, not down
        assert client.http.get("/health").status_code == 200      # not rate limited
    with store.app(APP_RATE_LIMIT="true", REDIS_STATE_URL=f"redis://127.0.0.1:{free_port()}/0",
                   REDIS_TIMEOUT="0.05") as client:
        assert client.http.get(f"/products/{product}", headers={"x-api-key": DEV_KEY}).status_code == 200


def test_a_full_store_refuses_uncached_searches_it_cannot_meter_and_serves_cached_ones(store):
    make_product(bootstrap.catalog(), name="Astrolabe")
    with store.app(APP_RATE_LIMIT="false") as client:
        def search(q):
            return client.http.get(f"/products/search?q={q}", headers={"x-api-key": DEV_KEY})

        assert search("astrolabe").headers["X-Cache"] == "MISS"
        store.fill()
        cached = search("astrolabe")
        assert cached.status_code == 200 and cached.headers["X-Cache"] == "HIT"
        assert_full_503(search("astrolabe%20brass"))


def test_what_gives_back_or_finishes_admitted_orders_still_runs_on_a_full_store(store, sqs):
    """The consumer settles orders admitted before the store filled up, and an expired
    lease's units come back: a full store must not strand either."""
    sale = on_sale(stock=10)
    with store.app(APP_RATE_LIMIT="false") as client:
        accepted = post(client, "/orders/batch", {"orders": [order("a1", 1, sale, 2)]}).json_body["results"][0]
    assert accepted["status"] == "pending"
    gate = bootstrap.flash_gate()
    stranded = gate.admit(owner_key("dev", 0, 9, "gone"), customer_key("dev", 0, 9), "h", {sale: 3})
    assert stranded.outcome == "ACCEPTED"   # its process died before SQS: the lease will give it back
    store.fill()

    messages = sqs.receive_message(QueueUrl=store.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    records = [{"messageId": m["MessageId"], "body": m["Body"], "receiptHandle": m["ReceiptHandle"]}
               for m in messages]
    assert sqs_handlers.handle_flash_event({"Records": records})["batchItemFailures"] == []
    assert bootstrap.flash_sales().reservation(accepted["reservation_id"])["status"] == "created"
    assert stock(sale) == 8

    assert gate.sweep(now_ms=int(time.time() * 1000) + gate.lease_ms + 1) == 1
    assert gate.sale(sale)["remaining"] == 8

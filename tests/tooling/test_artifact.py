"""What ships is what is tested: the deployment package that `make package`
builds for the prod stage, unzipped, run by a fresh interpreter of the
template's Python version that sees nothing but the package and boto3/botocore
(as the Lambda runtime does), with the environment the packaged template gives
each function (tracing and metrics on), its cloud endpoints pointed at this
machine's services. Every route is driven with API Gateway REST proxy events,
both SQS consumers with SQS events (one with a partial failure), and the
scheduled warmer with its event; the answers are the contract's.

Local differences, each forced by the machine, not the code: no TLS to the
local MariaDB/Redis (DATABASE_TLS=false, redis://), the test's own database,
queues and Redis key prefix, and the AWS endpoint on 127.0.0.1."""
import json
import shutil
import time
import uuid

import boto3
import pymysql
import pytest
import redis

import app as shop_app
from chalicelib.entrypoints import openapi
from tests.conftest import ROOT
from tests.support.lambda_environments import (APP_KEY_ID, EVENTS, ISSUER, ExecutionEnvironment, cloud_endpoints,
                                               function_environment, packaged_functions)
from tests.support.lambda_environments import body as _body
from tests.support.lambda_environments import proxy_event
from tests.support.lambda_environments import resource_for as _resource_for
from tests.support.lambda_environments import runtime_python as _runtime_python
from tests.support.lambda_environments import sqs_event as _sqs_event


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    template, task_root = packaged_functions(tmp_path_factory.mktemp("artifact"))
    functions = {name: r["Properties"] for name, r in template["Resources"].items()
                 if r["Type"] == "AWS::Serverless::Function"}
    return template, functions, task_root


@pytest.fixture(scope="module")
def runtime(packaged):
    _, functions, _ = packaged
    versions = {p["Runtime"] for p in functions.values()}
    assert len(versions) == 1 and next(iter(versions)).startswith("python"), versions
    return _runtime_python(next(iter(versions))[len("python"):])


@pytest.fixture(scope="module")
def local_endpoints(test_env):
    with cloud_endpoints(test_env) as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def functions(packaged, runtime, local_endpoints, tmp_path_factory):
    template, properties, task_root = packaged
    logs = tmp_path_factory.mktemp("lambda-logs")
    started = {}

    def start(name):
        if name not in started:
            env = function_environment(properties[name], local_endpoints, task_root, name)
            started[name] = ExecutionEnvironment(runtime, task_root, env, logs / f"{name}.log")
        return started[name]

    yield start
    for environment in started.values():
        environment.close()


def test_the_package_runs_on_the_runtime_alone(packaged, functions):
    _, properties, task_root = packaged
    assert set(properties) == {"APIHandler", "HandleOrderIngest", "HandleCacheInvalidation", "HandleFlashOrders",
                               "HandleOrderExpiry", "HandleRelatedProducts", "HandleNotifications", "WarmCache",
                               "Migrate", "Lifecycle",
                               "FlashReconcile"}
    api = functions("APIHandler")
    assert api.started["python"] == [int(x) for x in properties["APIHandler"]["Runtime"][len("python"):].split(".")]
    assert "tests" not in " ".join(api.started["sys_path"]) and ".venv" not in " ".join(api.started["sys_path"])
    health = api.invoke(proxy_event("GET", "/health"))
    assert health["statusCode"] == 200, health
    # the app's own dependencies come from the package; the SDK from the runtime
    for name in ("pymysql", "redis", "aws_lambda_powertools", "aws_xray_sdk", "chalice"):
        assert api.origins[name] and api.origins[name].startswith(str(task_root)), (name, api.origins[name])
    assert not api.origins["boto3"] or ".venv" not in api.origins["boto3"]


def test_every_route_answers_the_contract_from_the_package(clean_db, functions, local_endpoints):
    api = functions("APIHandler")
    exercised = set()

    def call(method, path, body=None, query=None, admin=False, status=200, claims=None):
        response = api.invoke(proxy_event(method, path, body, query, admin, claims=claims))
        exercised.add((_resource_for(path), method))
        assert response["statusCode"] == status, (method, path, response)
        assert response["headers"]["X-Request-Id"]
        return response

    sku = f"ART-{uuid.uuid4().hex[:8]}"
    product = _body(call("POST", "/products", {"sku": sku, "name": "Artifact lamp", "category": "lighting",
                                               "price_cents": 1500, "stock": 10}, admin=True, status=201))["product"]
    pid = product["id"]
    forbidden = _body(call("POST", "/products", {"sku": sku + "x", "name": "x", "category": "c", "price_cents": 1,
                                                 "stock": 1}, status=403))
    assert forbidden["error"]["code"] == "FORBIDDEN"
    bulk = _body(call("POST", "/products/bulk", {"products": [
        {"sku": sku + "-b", "name": "Artifact shade", "category": "lighting", "price_cents": 700, "stock": 3}]},
        admin=True, status=201))
    assert len(bulk["ids"]) == 1
    first = call("GET", f"/products/{pid}")
    assert _body(first)["product"]["stock"] == 10 and first["headers"]["X-Cache"] in ("MISS", "HIT")
    patched = _body(call("PATCH", f"/products/{pid}", {"name": "Artifact lamp II"}, admin=True))
    assert patched["product"]["version"] == 2
    assert _body(call("POST", f"/products/{pid}/stock", {"delta": 5}, admin=True))["product"]["stock"] == 15
    found = call("GET", "/products/search", query={"q": "artifact lamp"})
    assert [p["id"] for p in _body(found)["items"]] == [pid] and found["headers"]["X-Cache"] in ("MISS", "HIT")
    # Pinyin comes from pypinyin (in the zip) at write time; typos from the dictionary it filled.
    cn = _body(call("POST", "/products", {"sku": sku + "-cn", "name": "蓝牙台灯 Artifact", "category": "lighting",
                                          "price_cents": 900, "stock": 1}, admin=True, status=201))["product"]
    assert [p["id"] for p in _body(call("GET", "/products/search", query={"q": "lanya taideng"}))["items"]] == [cn["id"]]
    typo = _body(call("GET", "/products/search", query={"q": "artifcat lamp"}))["items"]
    assert [p["id"] for p in typo] == [pid]
    # Cursors are signed with the key from Secrets Manager: the one handed out pages on, a changed one is 400.
    page = _body(call("GET", "/products/search", query={"q": "artifact", "sort": "price_asc", "limit": "1"}))
    following = {"q": "artifact", "sort": "price_asc", "limit": "1", "cursor": page["next_cursor"]}
    assert _body(call("GET", "/products/search", query=following))["items"] != page["items"]
    changed = {**following, "cursor": page["next_cursor"][:-1] + ("A" if page["next_cursor"][-1] != "A" else "B")}
    assert _body(call("GET", "/products/search", query=changed, status=400))["error"]["code"] == "VALIDATION_ERROR"

    batch = _body(call("POST", "/orders/batch", {"orders": [
        {"client_order_id": "art-1", "user_id": 7, "items": [{"product_id": pid, "quantity": 2}]},
        {"client_order_id": "art-2", "user_id": 7, "items": [{"product_id": pid, "quantity": 99}]}]}))
    assert [r["status"] for r in batch["results"]] == ["created", "failed"]
    assert batch["results"][1]["error"]["code"] == "INSUFFICIENT_STOCK"
    order_id = batch["results"][0]["order_id"]
    assert _body(call("GET", f"/orders/{order_id}"))["order"]["total_cents"] == 3000
    # Final at creation (the template's default window of 0): paid already, so a payment is refused.
    assert _body(call("POST", f"/orders/{order_id}/pay", {"payment_reference": "psp-art"},
                      status=409))["error"]["code"] == "ALREADY_PAID"
    assert [e["type"] for e in _body(call("GET", f"/orders/{order_id}/events"))["events"]] == ["order.created"]
    assert _body(call("POST", f"/orders/{order_id}/cancel"))["order"]["status"] == "cancelled"
    assert _body(call("POST", f"/orders/{order_id}/fulfil", status=409))["error"]["code"] == "ORDER_CANCELLED"
    assert _body(call("GET", f"/products/{pid}"))["product"]["stock"] == 15  # fresh after the cancel

    # Customers: API Gateway's authorizer has checked the token and passes its claims.
    ann = {"sub": str(uuid.uuid4()), "iss": ISSUER, "aud": "artifact-app-client", "token_use": "id",
           "email": "ann@example.com", "email_verified": "true"}
    bob = {**ann, "sub": str(uuid.uuid4())}
    # The authorizer lets an access token and another app client's token through; the app does not.
    for claims in ({**ann, "token_use": "access"}, {**ann, "aud": "another-app-client"}):
        assert _body(call("GET", "/customer/orders/1", claims=claims, status=401))["error"]["code"] == "UNAUTHORIZED"
    mine = _body(call("POST", "/customer/orders/batch", {"orders": [
        {"client_order_id": "cust-1", "items": [{"product_id": pid, "quantity": 1}]}]}, claims=ann))
    customer_order = mine["results"][0]["order_id"]
    placed = _body(call("GET", f"/customer/orders/{customer_order}", claims=ann))["order"]
    # A customer's order waits for payment where a trusted server's is final at creation.
    assert placed["client_order_id"] == "cust-1" and placed["lifecycle"] == "pending_payment"
    assert placed["contact_email"] == "ann@example.com"  # the authorizer's email claim, verified ("true")
    assert [e["type"] for e in _body(call("GET", f"/customer/orders/{customer_order}/events", claims=ann))[
        "events"]] == ["order.created"]
    assert _body(call("GET", f"/customer/orders/{customer_order}/events", claims=bob, status=404))["error"][
        "code"] == "ORDER_NOT_FOUND"
    assert _body(call("GET", f"/customer/orders/{customer_order}", claims=bob, status=404))["error"]["code"] == \
        "ORDER_NOT_FOUND"
    assert _body(call("POST", f"/customer/orders/{customer_order}/cancel", claims=ann))["order"]["status"] == \
        "cancelled"
    assert _body(call("GET", f"/customer/orders/{customer_order}", status=401))["error"]["code"] == "UNAUTHORIZED"

    queued = _body(call("POST", "/orders/batch", {"orders": [
        {"client_order_id": "art-async", "user_id": 7, "items": [{"product_id": pid, "quantity": 1}]}]},
        query={"mode": "async"}, status=202))
    assert _body(call("GET", f"/batches/{queued['batch_id']}"))["status"] in ("queued", "processing", "done")
    # Flash sale: the gate answers pending; the consumer's part is the test below.
    sale_pid = _body(call("POST", "/products", {"sku": sku + "-sale", "name": "Sale lamp", "category": "lighting",
                                                "price_cents": 900, "stock": 4}, admin=True, status=201))["product"]["id"]
    assert _body(call("POST", f"/products/{sale_pid}/sale", {"sale_stock": 3}, admin=True, status=201))["sale"][
        "remaining"] == 3
    pending = _body(call("POST", "/orders/batch", {"orders": [
        {"client_order_id": "art-sale", "user_id": 7, "items": [{"product_id": sale_pid, "quantity": 1}]}]}))
    rid = pending["results"][0]["reservation_id"]
    assert _body(call("GET", f"/reservations/{rid}"))["reservation"]["status"] == "pending"
    mine = _body(call("POST", "/customer/orders/batch", {"orders": [
        {"client_order_id": "cust-sale", "items": [{"product_id": sale_pid, "quantity": 1}]}]}, claims=ann))
    customer_rid = mine["results"][0]["reservation_id"]
    assert _body(call("GET", f"/customer/reservations/{customer_rid}", claims=ann))["reservation"]["status"] == \
        "pending"
    assert _body(call("GET", f"/customer/reservations/{customer_rid}", claims=bob, status=404))["error"]["code"] == \
        "RESERVATION_NOT_FOUND"
    assert _body(call("GET", f"/products/{sale_pid}/sale", admin=True))["sale"]["remaining"] == 1
    assert _body(call("DELETE", f"/products/{sale_pid}/sale", admin=True))["sale"]["on_sale"] is False

    related = call("GET", f"/products/{pid}/related", query={"limit": "5"})
    assert _body(related) == {"product_id": pid, "items": []} and related["headers"]["X-Cache"] in ("MISS", "HIT")
    assert _body(call("GET", f"/products/{pid}/related", query={"limit": "0"}, status=400))["error"]["code"] == \
        "VALIDATION_ERROR"

    stats = _body(call("GET", "/admin/stats", admin=True))
    assert stats["orders"]["created"] >= 1
    page = call("GET", "/dashboard")
    assert page["headers"]["Content-Type"].startswith("text/html") and 'fetch("admin/stats?' in page["body"]
    assert _body(call("GET", "/health"))["status"] == "ok"
    bad = _body(call("GET", "/products/abc", status=400))
    assert bad["error"]["code"] == "VALIDATION_ERROR" and bad["error"]["request_id"]
    not_allowed = api.invoke(proxy_event("DELETE", f"/products/{pid}"))  # Chalice's own answer, reshaped
    assert not_allowed["statusCode"] == 405 and _body(not_allowed)["error"]["code"] == "METHOD_NOT_ALLOWED"

    # The contract document, from its sample event (with the package's key), equals what the code builds.
    sample = json.loads((EVENTS / "apigw_get_openapi.json").read_text())
    sample["headers"]["x-api-key"] = sample["requestContext"]["identity"]["apiKey"] = "shop-prod-standard-key"
    document = api.invoke(sample)
    exercised.add(("/openapi.json", "GET"))
    assert document["statusCode"] == 200 and _body(document) == openapi.build()

    routes = {(resource, method) for resource, methods in shop_app.app.routes.items() for method in methods}
    assert routes <= exercised, f"routes the artifact test does not drive: {sorted(routes - exercised)}"

    # The cache is in ElastiCache's use; the stats window is not (CloudWatch has those numbers).
    prefix = local_endpoints["REDIS_KEY_PREFIX"]
    client = redis.Redis.from_url(local_endpoints["REDIS_URL"])
    try:
        assert list(client.scan_iter(match=f"{prefix}product:*", count=1000))
        assert not list(client.scan_iter(match=f"{prefix}stats:*", count=1000))
    finally:
        client.close()


def test_the_apps_key_is_limited_per_person_in_the_cloud_stage(clean_db, functions):
    """prod leaves each key's bucket to API Gateway's usage plan (APP_RATE_LIMIT=false); the
    per-person buckets of the app's key, which API Gateway cannot keep, run all the same."""
    api = functions("APIHandler")
    ann = {"sub": str(uuid.uuid4()), "iss": ISSUER, "aud": "artifact-app-client", "token_use": "id"}
    bob = {**ann, "sub": str(uuid.uuid4())}

    def status(claims=None, path="/customer/orders/1", source_ip=None):
        event = proxy_event("GET", path, key="shop-prod-app-key", key_id=APP_KEY_ID, claims=claims,
                            source_ip=source_ip)
        return api.invoke(event)["statusCode"]

    statuses = [status(ann) for _ in range(25)]
    assert statuses[:20] == [404] * 20 and statuses[-1] == 429  # the public plan's person_burst
    assert status(bob) == 404
    statuses = [status(path="/products/1", source_ip="198.51.100.7") for _ in range(25)]
    assert statuses[:20] == [404] * 20 and statuses[-1] == 429
    assert status(path="/products/1", source_ip="198.51.100.8") == 404
    # A trusted server's key is not limited in the app here: its usage plan is.
    assert {api.invoke(proxy_event("GET", "/products/1", source_ip="198.51.100.7"))["statusCode"]
            for _ in range(25)} == {404}


def _new_product(api, name):
    """A product with stock 5, created through the packaged API as an admin."""
    return _body(api.invoke(proxy_event("POST", "/products", {
        "sku": f"ART-{uuid.uuid4().hex[:8]}", "name": name, "category": "lighting", "price_cents": 100, "stock": 5},
        admin=True)))["product"]


def test_order_ingest_consumer_hands_records_back_near_its_timeout_then_places_them(clean_db, functions, test_env):
    api = functions("APIHandler")
    product = _new_product(api, "Queued lamp")
    consumer = functions("HandleOrderIngest")
    event = _sqs_event("sqs_order_ingest.json", test_env["ORDER_QUEUE_NAME"], [
        {"batch_id": "art-sqs", "client": "dev", "orders": [{"client_order_id": "q-1", "user_id": 3,
                                            "items": [{"product_id": product["id"], "quantity": 2}]}]},
        {"batch_id": "art-sqs-2", "client": "dev", "orders": [{"client_order_id": "q-2", "user_id": 3,
                                              "items": [{"product_id": product["id"], "quantity": 1}]}]},
    ])
    # Nearly out of time: every record is handed back to SQS (reported failed), nothing started.
    answer = consumer.invoke(event, remaining_ms=[1_000])
    assert answer == {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"]]}
    assert api.invoke(proxy_event("GET", "/batches/art-sqs"))["statusCode"] == 404
    assert _body(api.invoke(proxy_event("GET", f"/products/{product['id']}")))["product"]["stock"] == 5
    # The redelivery, with time: both records' orders placed together, each batch recorded.
    assert consumer.invoke(event, remaining_ms=[60_000]) == {"batchItemFailures": []}
    for batch_id in ("art-sqs", "art-sqs-2"):
        batch = _body(api.invoke(proxy_event("GET", f"/batches/{batch_id}")))
        assert batch["status"] == "done" and batch["results"][0]["status"] == "created"
    assert _body(api.invoke(proxy_event("GET", f"/products/{product['id']}")))["product"]["stock"] == 2


def test_flash_order_consumer_writes_what_the_gate_accepted(clean_db, functions, test_env):
    api = functions("APIHandler")
    product = _new_product(api, "Flash lamp")
    assert api.invoke(proxy_event("POST", f"/products/{product['id']}/sale", {"sale_stock": 5},
                                  admin=True))["statusCode"] == 201
    placed = _body(api.invoke(proxy_event("POST", "/orders/batch", {"orders": [
        {"client_order_id": f"fl-{i}", "user_id": i + 1, "items": [{"product_id": product["id"], "quantity": 1}]}
        for i in range(3)]})))
    assert placed["summary"] == {"created": 0, "failed": 0, "pending": 3}
    # The message the packaged API sent, handed to the packaged consumer as Lambda would.
    sqs = boto3.client("sqs", endpoint_url=test_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    url = sqs.get_queue_url(QueueName=test_env["FLASH_QUEUE_NAME"])["QueueUrl"]
    ours = []
    for _ in range(20):
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            if any(r["rid"] == placed["results"][0]["reservation_id"] for r in json.loads(m["Body"])["reservations"]):
                ours.append(json.loads(m["Body"]))
        if ours:
            break
    event = _sqs_event("sqs_order_ingest.json", test_env["FLASH_QUEUE_NAME"], ours)
    assert functions("HandleFlashOrders").invoke(event) == {"batchItemFailures": []}
    for result in placed["results"]:
        reservation = _body(api.invoke(proxy_event("GET", f"/reservations/{result['reservation_id']}")))
        assert reservation["reservation"]["status"] == "created"
    assert _body(api.invoke(proxy_event("GET", f"/products/{product['id']}")))["product"]["stock"] == 2
    # The scheduled reconcile, from the package: 3 sold in the sale, 2 left in MySQL.
    reconciled = functions("FlashReconcile").invoke(json.loads((EVENTS / "scheduled_flash_reconcile.json").read_text()))
    ours = [r for r in reconciled["sales"] if r["product_id"] == product["id"]]
    assert [(r["sold"], r["mysql_stock"]) for r in ours] == [(3, 2)] and ours[0]["action"] in ("ok", "repaired")


def test_invalidation_consumer_and_scheduled_warmer(clean_db, functions, test_env):
    api = functions("APIHandler")
    product = _new_product(api, "Warm lamp")
    invalidation = functions("HandleCacheInvalidation")
    event = _sqs_event("sqs_cache_invalidation.json", test_env["INVALIDATION_QUEUE_NAME"],
                       [{"product_ids": [product["id"]]}, {"search": True}])
    assert invalidation.invoke(event) == {"batchItemFailures": []}

    warmer = functions("WarmCache")
    summary = warmer.invoke(json.loads((EVENTS / "scheduled_warm_cache.json").read_text()))
    assert summary["errors"] == 0 and sum(summary["products"].values()) >= 1
    assert api.invoke(proxy_event("GET", f"/products/{product['id']}"))["headers"]["X-Cache"] == "HIT"


def test_the_lifecycle_function_relays_the_outbox(clean_db, functions, test_env):
    api = functions("APIHandler")
    product = _new_product(api, "Relayed lamp")
    placed = _body(api.invoke(proxy_event("POST", "/orders/batch", {"orders": [
        {"client_order_id": "art-life", "user_id": 3, "items": [{"product_id": product["id"], "quantity": 1}]}]})))
    order_id = placed["results"][0]["order_id"]
    event = json.loads((EVENTS / "scheduled_lifecycle.json").read_text())
    from chalicelib import bootstrap

    old, recent = f"art-old-{uuid.uuid4()}", f"art-recent-{uuid.uuid4()}"
    bootstrap.database().run(lambda cur: cur.execute(
        "INSERT INTO related_events (event_id, processed_at) VALUES "
        "(%s, CURRENT_TIMESTAMP(6) - INTERVAL 40 DAY), (%s, CURRENT_TIMESTAMP(6))", (old, recent)))
    # With 5 s left the function does one pass (it keeps a 10 s margin before its timeout).
    assert functions("Lifecycle").invoke(event, remaining_ms=[5_000]) == {
        "expired": 0, "published": 1, "pruned": 1, "outbox_oldest_seconds": 0.0}  # nothing left waiting
    assert [r["event_id"] for r in bootstrap.database().query(
        "SELECT event_id FROM related_events WHERE event_id IN (%s, %s)", (old, recent))] == [recent]

    stamped = bootstrap.database().query("SELECT published_at FROM order_events WHERE order_id = %s", (order_id,))
    assert [row["published_at"] is not None for row in stamped] == [True]


def test_the_expiry_consumer_acts_on_timers(clean_db, functions, test_env):
    from chalicelib import bootstrap
    from chalicelib.domain.orders import parse_batch
    from chalicelib.adapters.order_repository import MySQLOrderRepository
    from chalicelib.service.orders import OrderService

    api = functions("APIHandler")
    product = _new_product(api, "Timed lamp")
    pending = OrderService(bootstrap.database(), bootstrap.inventory_strategy(), bootstrap.product_writes(),
                           MySQLOrderRepository, payment_window=1)
    order_id = pending.place_batch(parse_batch({"orders": [{"client_order_id": "art-timer", "user_id": 4, "items": [
        {"product_id": product["id"], "quantity": 2}]}]}, "dev"))["results"][0]["order_id"]
    time.sleep(1.1)
    event = _sqs_event("sqs_order_expiry.json", test_env["EXPIRY_QUEUE_NAME"], [{"order_id": order_id}, "garbage"])
    assert functions("HandleOrderExpiry").invoke(event) == {"batchItemFailures": []}
    assert bootstrap.orders().get(order_id)["lifecycle"] == "expired"
    assert _body(api.invoke(proxy_event("GET", f"/products/{product['id']}")))["product"]["stock"] == \
        product["stock"]


def test_the_related_products_consumer_counts_once_and_keeps_garbage(clean_db, functions, test_env):
    api = functions("APIHandler")
    lamp, shade = _new_product(api, "Paired lamp"), _new_product(api, "Paired shade")
    created = {"event_id": str(uuid.uuid4()), "type": "order.created", "order_id": 1, "sequence": 1,
               "data": {"items": [{"product_id": lamp["id"], "quantity": 1}, {"product_id": shade["id"], "quantity": 1}]}}
    event = _sqs_event("sqs_order_ingest.json", test_env["RELATED_QUEUE_NAME"], [created, created, ["garbage"]])
    consumer = functions("HandleRelatedProducts")
    assert consumer.invoke(event) == {"batchItemFailures": [{"itemIdentifier": event["Records"][2]["messageId"]}]}
    related = _body(api.invoke(proxy_event("GET", f"/products/{lamp['id']}/related")))
    assert [(i["product"]["id"], i["bought_together"]) for i in related["items"]] == [(shade["id"], 1)]


def test_the_notification_consumer_mails_once_and_reports_garbage(clean_db, functions, test_env):
    import requests
    from chalicelib import bootstrap

    api = functions("APIHandler")
    product = _new_product(api, "Mailed lamp")
    to = f"art-{uuid.uuid4().hex[:8]}@example.com"
    placed = _body(api.invoke(proxy_event("POST", "/orders/batch", {"orders": [
        {"client_order_id": "art-mail", "user_id": 3, "contact_email": to,
         "items": [{"product_id": product["id"], "quantity": 1}]}]})))
    order_id = placed["results"][0]["order_id"]
    [row] = bootstrap.database().query("SELECT event_id, payload FROM order_events WHERE order_id = %s", (order_id,))
    message = {"event_id": row["event_id"], "type": "order.created", "order_id": order_id, "sequence": 1,
               "occurred_at": "2024-01-01T00:00:00.000000Z", "data": json.loads(row["payload"])}
    event = _sqs_event("sqs_order_ingest.json", test_env["NOTIFY_QUEUE_NAME"], [message, "garbage", message])
    consumer = functions("HandleNotifications")
    assert consumer.invoke(event) == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    mail = requests.get(f"{test_env['AWS_ENDPOINT_URL']}/_aws/ses", timeout=10).json()["messages"]
    assert [m["Subject"] for m in mail if to in m.get("Destination", {}).get("ToAddresses", [])] == [
        f"Your order #{order_id} is placed"]


def test_a_missing_runtime_dependency_fails_the_artifact(packaged, runtime, local_endpoints, tmp_path):
    """The check above must catch what it was written for: a package without a
    module the app imports (here the X-Ray SDK that tracing needs) fails at import."""
    _, properties, task_root = packaged
    broken = tmp_path / "task"
    shutil.copytree(task_root, broken, ignore=shutil.ignore_patterns("aws_xray_sdk"))
    env = function_environment(properties["APIHandler"], local_endpoints, broken, "APIHandler")
    environment = ExecutionEnvironment(runtime, broken, env, tmp_path / "broken.log")
    try:
        with pytest.raises(AssertionError, match="aws_xray_sdk"):
            environment.invoke(proxy_event("GET", "/health"))
    finally:
        environment.close()


def test_a_cloud_function_pointed_at_local_defaults_refuses_to_serve(packaged, runtime, local_endpoints, tmp_path):
    """A deployed function whose configuration fell back to a local default (no
    STAGE, a typo, a missing variable) says so once and answers 503 to every
    request instead of quietly talking to 127.0.0.1."""
    _, properties, task_root = packaged
    endpoints = {k: v for k, v in local_endpoints.items() if k != "ALLOW_LOOPBACK_ENDPOINTS"}
    env = function_environment(properties["APIHandler"], endpoints, task_root, "APIHandler")
    api = ExecutionEnvironment(runtime, task_root, env, tmp_path / "api.log")
    try:
        for path in ("/health", "/products/1"):
            response = api.invoke(proxy_event("GET", path))
            assert response["statusCode"] == 503, response
            error = _body(response)["error"]
            assert error["code"] == "SERVICE_UNAVAILABLE" and "misconfigured" in error["message"]
            assert "127.0.0.1" in error["message"] and "AWS_ENDPOINT_URL" in error["message"]
    finally:
        api.close()
    log = (tmp_path / "api.log").read_text()
    assert log.count("refusing to serve: this deployment is misconfigured") == 1

    env = function_environment(properties["HandleOrderIngest"], endpoints, task_root, "HandleOrderIngest")
    consumer = ExecutionEnvironment(runtime, task_root, env, tmp_path / "ingest.log")
    try:
        with pytest.raises(AssertionError, match="misconfigured"):  # the batch stays on the queue
            consumer.invoke(_sqs_event("sqs_order_ingest.json", "q", [{"orders": []}]))
    finally:
        consumer.close()


def test_loopback_endpoints_allowed_still_refuse_the_local_keys(packaged, runtime, local_endpoints, tmp_path):
    """ALLOW_LOOPBACK_ENDPOINTS lets this test point a cloud stage at 127.0.0.1, and only that:
    a cloud function told to check keys itself (APP_API_KEYS) would take the local keys that
    are in the repository, so it refuses to serve all the same."""
    _, properties, task_root = packaged
    env = function_environment(properties["APIHandler"], {**local_endpoints, "APP_API_KEYS": "true"}, task_root,
                               "APIHandler")
    api = ExecutionEnvironment(runtime, task_root, env, tmp_path / "api.log")
    try:
        event = proxy_event("GET", "/products/1", key="shop-local-dev-key-0001")
        response = api.invoke(event)
        assert response["statusCode"] == 503, response
        error = _body(response)["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE" and "APP_API_KEYS" in error["message"]
        assert "127.0.0.1" not in error["message"]  # the loopback endpoints themselves were allowed
    finally:
        api.close()


def test_the_migrate_function_builds_a_fresh_schema_once(packaged, runtime, local_endpoints, tmp_path):
    """The deploy runs the migrations through the packaged `migrate` function:
    the SQL files ship in the zip, a fresh database gets every one, a second run none."""
    _, properties, task_root = packaged
    database = f"shop_artifact_{uuid.uuid4().hex[:8]}"
    env = function_environment(properties["Migrate"], {**local_endpoints, "DATABASE_NAME": database}, task_root,
                               "Migrate")
    function = ExecutionEnvironment(runtime, task_root, env, tmp_path / "migrate.log")
    try:
        first = function.invoke({})
        assert first["applied"] == [p.name for p in sorted((ROOT / "chalicelib" / "adapters" / "migrations")
                                                           .glob("*.sql"))]
        assert function.invoke({}) == {"applied": []}
    finally:
        function.close()
        conn = pymysql.connect(host="127.0.0.1", user="root")
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW TABLES FROM `{database}` LIKE 'products'")
                assert cur.fetchone()
                cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            conn.close()


"""Async batches over real HTTP (chalice local), the real order-ingest queue on
the LocalStack-compatible endpoint, and app.py's SQS handler driven by the
local stack's poller; MySQL taken down and restored through a TCP proxy of our own
(the shared MariaDB is never touched)."""
import os
import time

import pytest

import app as shop_app
from chalicelib import bootstrap
from scripts import localstack
from scripts.poller import Poller
from tests.support.sqs import drain
from tests.support.tcp_proxy import TcpProxy
from tests.conftest import ApiClient, free_port, make_product, start_server


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    client = localstack.sqs_client(aws_endpoint.url)
    localstack.ensure_queues(client, localstack.queue_specs(bootstrap.settings(), visibility_timeout=2))
    return client


@pytest.fixture
def ingest_queue(sqs, test_env):
    """This session's order-ingest queue, emptied, and a poller on it calling app.py's handler."""
    url = localstack.queue_url(sqs, test_env["ORDER_QUEUE_NAME"])
    while True:  # PurgeQueue is allowed once a minute only; delete what is left instead
        left = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not left:
            break
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                        for i, m in enumerate(left)])
    return url, Poller(sqs, test_env["ORDER_QUEUE_NAME"], shop_app.handle_order_ingest, wait_seconds=1)


def orders(coids, product_id, quantity=1):
    return [{"client_order_id": c, "user_id": 7, "items": [{"product_id": product_id, "quantity": quantity}]}
            for c in coids]


def queued(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                   "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def test_async_batch_end_to_end(api, sqs, ingest_queue):
    url, poller = ingest_queue
    hot = make_product(bootstrap.catalog(), stock=20, price_cents=250)
    scarce = make_product(bootstrap.catalog(), stock=1)
    body = {"orders": orders([f"e2e-{i}" for i in range(22)], hot["id"])}
    body["orders"][5] = {"client_order_id": "e2e-bad", "user_id": 7, "items": []}  # invalid order
    body["orders"][17] = orders(["e2e-scarce"], scarce["id"], 2)[0]  # insufficient stock

    response = api.post("/orders/batch?mode=async", json=body)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"batch_id", "status"} and accepted["status"] == "queued"
    batch_id = accepted["batch_id"]

    status = api.get(f"/batches/{batch_id}")
    assert status.status_code == 200
    assert status.json()["status"] == "queued" and status.json()["results"] == []

    assert drain(poller, lambda: api.get(f"/batches/{batch_id}").json()["status"] == "done")
    batch = api.get(f"/batches/{batch_id}").json()
    results = batch["results"]
    assert [r["client_order_id"] for r in results] == [o["client_order_id"] for o in body["orders"]]
    assert results[5]["status"] == "failed" and results[5]["error"]["code"] == "VALIDATION_ERROR"
    assert results[17]["error"] == {"code": "INSUFFICIENT_STOCK", "message": results[17]["error"]["message"],
                                    "product_id": scarce["id"]}
    created = [r for r in results if r["status"] == "created"]
    assert len(created) == 20 and all(set(r) == {"client_order_id", "status", "order_id", "total_cents", "duplicate"}
                                      for r in created)
    assert batch["summary"] == {"created": 20, "failed": 2, "pending": 0}
    order = api.get(f"/orders/{created[0]['order_id']}").json()["order"]
    assert order["client_order_id"] == "e2e-0" and order["total_cents"] == 250
    assert api.get(f"/products/{hot['id']}").json()["product"]["stock"] == 0
    assert queued(sqs, url) == 0

    # The same batch again synchronously: every order is a replay.
    sync = api.post("/orders/batch", json=body).json()
    assert [r.get("order_id") for r in sync["results"]] == [r.get("order_id") for r in results]
    assert all(r["duplicate"] for r in sync["results"] if r["status"] == "created")


def test_async_whole_request_errors_queue_nothing(api, sqs, ingest_queue):
    url, _ = ingest_queue
    product = make_product(bootstrap.catalog())
    cases = [(b"not json", 400), (b'{"orders": []}', 400), (b'{"orders": "x"}', 400), (b'{"order": []}', 400)]
    for raw, status in cases:
        response = api.post("/orders/batch?mode=async", data=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == status, raw
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    too_many = api.post("/orders/batch?mode=async", json={"orders": orders([f"x{i}" for i in range(101)], product["id"])})
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    unknown = api.post("/orders/batch?mode=later", json={"orders": orders(["m1"], product["id"])})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "VALIDATION_ERROR"
    assert queued(sqs, url) == 0

    missing = api.get("/batches/no-such-batch")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "BATCH_NOT_FOUND"
    assert api.get("/batches/x", key=None).status_code == 403


@pytest.fixture
def proxied(clean_db, tmp_path):
    """The API server and this process's handler both reach MySQL through the proxy."""
    proxy = TcpProxy(3306)
    db_name = clean_db["DATABASE_URL"].rsplit("/", 1)[1]
    env = {**clean_db, "DATABASE_URL": f"mysql://root:@127.0.0.1:{proxy.port}/{db_name}", "DB_CONNECT_TIMEOUT": "1"}
    port = free_port()
    server = start_server(env, port, tmp_path / "server.log")
    saved = {k: os.environ.get(k) for k in ("DATABASE_URL", "DB_CONNECT_TIMEOUT")}
    os.environ.update({k: env[k] for k in saved})
    bootstrap.reset()
    try:
        yield proxy, ApiClient(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        bootstrap.reset()
        proxy.close()


def test_mysql_down_async_batches_are_accepted_and_processed_once_it_is_back(proxied, sqs, ingest_queue):
    proxy, api = proxied
    url, poller = ingest_queue
    product = make_product(bootstrap.catalog(), stock=100)

    proxy.down()
    sync = api.post("/orders/batch", json={"orders": orders(["sync-down"], product["id"])})
    assert sync.status_code == 503 and "Retry-After" in sync.headers
    accepted = []
    for n in range(3):  # 3 batches x 12 orders = 6 messages
        response = api.post("/orders/batch?mode=async", json={"orders": orders([f"down-{n}-{i}" for i in range(12)],
                                                                               product["id"])})
        assert response.status_code == 202, response.text
        accepted.append(response.json()["batch_id"])
    assert api.get(f"/batches/{accepted[0]}").status_code == 503

    # The consumer cannot reach MySQL either: every message is reported failed and stays queued.
    result = poller.poll_once()
    assert result.received and result.deleted == 0 and len(result.failed) == result.received
    assert queued(sqs, url) == 6

    proxy.restore()
    time.sleep(1.2)  # the circuit breaker's reset window
    assert drain(poller, lambda: queued(sqs, url) == 0, timeout=40)
    for batch_id in accepted:
        response = api.get(f"/batches/{batch_id}")
        assert response.status_code == 200
        batch = response.json()
        assert batch["status"] == "done" and batch["summary"] == {"created": 12, "failed": 0, "pending": 0}
    rows = bootstrap.database().query("SELECT client_order_id, COUNT(*) AS n FROM orders "
                                      "WHERE client_order_id LIKE 'down-%%' GROUP BY client_order_id")
    assert len(rows) == 36 and all(r["n"] == 1 for r in rows)
    assert api.get(f"/products/{product['id']}").json()["product"]["stock"] == 64


def test_async_batch_with_a_huge_invalid_client_order_id_reaches_done(api, sqs, ingest_queue):
    # A 70 KB client_order_id once overflowed batch_results.result: the message retried into the DLQ,
    # the batch never reached done, and its valid siblings were created but never recorded.
    url, poller = ingest_queue
    product = make_product(bootstrap.catalog(), stock=5)
    body = {"orders": orders(["huge-ok-1"], product["id"]) + orders(["h" * 70_000], product["id"])
            + orders(["huge-ok-2"], product["id"])}
    response = api.post("/orders/batch?mode=async", json=body)
    assert response.status_code == 202, response.text[:300]
    batch_id = response.json()["batch_id"]

    assert drain(poller, lambda: api.get(f"/batches/{batch_id}").json()["status"] == "done")
    batch = api.get(f"/batches/{batch_id}").json()
    first, huge, last = batch["results"]
    assert first["status"] == last["status"] == "created"
    assert huge["status"] == "failed" and huge["error"]["code"] == "VALIDATION_ERROR"
    assert huge["client_order_id"] == "h" * 63 + "\u2026"
    assert batch["summary"] == {"created": 2, "failed": 1, "pending": 0}
    assert api.get(f"/products/{product['id']}").json()["product"]["stock"] == 3
    assert queued(sqs, url) == 0

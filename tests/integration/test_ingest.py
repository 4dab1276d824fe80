"""The order-ingest path against the real LocalStack-compatible endpoint (moto
server on 127.0.0.1:4566; started if nothing answers), MariaDB and Redis:
duplicate delivery, redelivery after a crash, poison messages, transient
failures into the DLQ, partial batch failure. Messages are received from real
queues and handed to app.py's handler in the Lambda SQS event shape by the
local stack's poller."""
import contextlib
import json
import socket
import threading
import time

import pytest

import app as shop_app
from chalicelib import bootstrap
from chalicelib.adapters.batch_store import BatchStore
from chalicelib.domain.orders import parse_batch
from chalicelib.entrypoints import sqs as sqs_handlers
from chalicelib.service import async_orders
from chalicelib.domain.errors import ConcurrencyExhausted, ServiceUnavailable
from chalicelib.service.orders import OrderService
from chalicelib.domain.orders import failed
from scripts import localstack
from scripts.poller import Poller
from tests.conftest import make_product


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    client = localstack.sqs_client(aws_endpoint.url)
    # This session's order-ingest and cache-invalidation queues (with DLQs).
    localstack.ensure_queues(client, localstack.queue_specs(bootstrap.settings()))
    return client


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@contextlib.contextmanager
def mysql_down(test_env):
    """The app's configuration points at a port where no MySQL answers."""
    dead = f"mysql://root:@127.0.0.1:{closed_port()}/{test_env['DATABASE_URL'].rsplit('/', 1)[1]}"
    bootstrap.reset(DATABASE_URL=dead, DB_CONNECT_TIMEOUT=0.5)
    try:
        yield
    finally:
        bootstrap.reset()


def send(sqs, url, *bodies):
    return [sqs.send_message(QueueUrl=url, MessageBody=b if isinstance(b, str) else json.dumps(b))["MessageId"]
            for b in bodies]


def receive_all(poller, count, timeout=15):
    """Receive until `count` distinct messages are in hand (not deleted)."""
    seen = {}
    deadline = time.time() + timeout
    while len(seen) < count and time.time() < deadline:
        for m in poller.receive():
            seen[m["MessageId"]] = m
    assert len(seen) == count, f"received {len(seen)} of {count}"
    return list(seen.values())


def depth(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                   "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def orders_for(prefix):
    return bootstrap.database().query(
        "SELECT id, user_id, client_order_id, batch_id FROM orders WHERE client_order_id LIKE %s ORDER BY id",
        (prefix + "%",))


def stock(product_id):
    return bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (product_id,))[0]["stock"]


def order(coid, product_id, quantity=1, user_id=1):
    return {"client_order_id": coid, "user_id": user_id, "items": [{"product_id": product_id, "quantity": quantity}]}


def test_duplicate_delivery_creates_each_order_once(clean_db, sqs, fast_queue):
    spec, url, _ = fast_queue
    product = make_product(bootstrap.catalog(), stock=50)
    body = {"batch_id": "dup-1", "orders": [order(f"dup-{i}", product["id"], 2) for i in range(3)],
            "positions": [0, 1, 2], "order_count": 3}
    send(sqs, url, body)
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    messages = receive_all(poller, 1)

    assert poller.invoke(messages) == set()
    assert poller.invoke(messages) == set()  # the same delivery handed over twice

    assert len(orders_for("dup-")) == 3
    assert stock(product["id"]) == 50 - 6
    batch = bootstrap.batch_store().get("dup-1")
    assert batch["status"] == "done"
    assert [r["client_order_id"] for r in batch["results"]] == ["dup-0", "dup-1", "dup-2"]
    assert all(r["status"] == "created" and r["duplicate"] is False for r in batch["results"])
    assert batch["summary"] == {"created": 3, "failed": 0, "pending": 0}


def test_redelivery_after_crash_between_commit_and_delete(clean_db, sqs, fast_queue):
    spec, url, _ = fast_queue
    product = make_product(bootstrap.catalog(), stock=10)
    send(sqs, url, {"batch_id": "crash-1", "orders": [order("crash-a", product["id"]), order("crash-b", product["id"])]})
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    first = receive_all(poller, 1)
    assert poller.invoke(first) == set()  # committed ... and the process dies before deleting
    first_ids = [r["order_id"] for r in bootstrap.batch_store().get("crash-1")["results"]]

    time.sleep(1.2)  # visibility timeout: SQS hands the message out again
    again = receive_all(poller, 1)
    assert again[0]["MessageId"] == first[0]["MessageId"]
    assert int(again[0]["Attributes"]["ApproximateReceiveCount"]) == 2
    assert poller.invoke(again) == set()
    poller.delete(again)

    assert len(orders_for("crash-")) == 2
    assert stock(product["id"]) == 8
    results = bootstrap.batch_store().get("crash-1")["results"]
    assert [r["order_id"] for r in results] == first_ids
    assert depth(sqs, url) == 0


class CountingOrders(OrderService):
    """The real OrderService, counting its runs of the batch loop."""

    def __init__(self, real):
        super().__init__(real.db, real.strategy, real.writes, real.repository, batch_writer=real.batch_writer)
        self.runs = 0

    def place_all(self, orders, batch_of=lambda key: None, recorded=None):
        self.runs += 1
        return super().place_all(orders, batch_of, recorded)


def test_records_of_several_batches_are_placed_in_one_run_and_recorded_under_their_batches(
        clean_db, sqs, fast_queue):
    spec, url, _ = fast_queue
    product = make_product(bootstrap.catalog(), stock=100)
    # Messages of three batches interleaved, as concurrent submits leave them on the queue; one
    # sent twice (both in this invocation), one position of "many-b" recorded by an earlier delivery.
    bodies = [{"batch_id": f"many-{b}", "orders": [order(f"many-{b}-{i}", product["id"], 1, user_id=10 + i)
                                                   for i in (2 * m, 2 * m + 1)],
               "positions": [2 * m, 2 * m + 1], "order_count": 4} for m in range(2) for b in "abc"]
    bodies.append(bodies[0])
    counting = CountingOrders(bootstrap.orders())
    ingest = async_orders.OrderIngest(counting, BatchStore(bootstrap.database()))
    ingest.process(json.dumps({"batch_id": "many-b", "orders": [order("many-b-0", product["id"], 1, user_id=10)],
                               "positions": [0], "order_count": 4}), "earlier")
    counting.runs = 0
    send(sqs, url, *bodies)
    poller = Poller(sqs, spec.name, lambda event, context: sqs_handlers.handle_order_event(event, context, ingest),
                    wait_seconds=1)
    messages = receive_all(poller, len(bodies))

    assert poller.invoke(messages) == set()
    assert counting.runs == 1
    rows = orders_for("many-")
    assert sorted((r["client_order_id"], r["batch_id"]) for r in rows) == sorted(
        (f"many-{b}-{i}", f"many-{b}") for b in "abc" for i in range(4))
    assert stock(product["id"]) == 100 - 12
    for b in "abc":
        batch = bootstrap.batch_store().get(f"many-{b}")
        assert batch["status"] == "done" and batch["summary"] == {"created": 4, "failed": 0, "pending": 0}
        assert [r["client_order_id"] for r in batch["results"]] == [f"many-{b}-{i}" for i in range(4)]
        assert all(r["duplicate"] is False for r in batch["results"])


class _RecordedThenHeld(BatchStore):
    """The real batch store; after reading which positions are recorded, waits for `go`."""

    def __init__(self, db, read, go):
        super().__init__(db)
        self.read, self.go = read, go

    def recorded_positions(self, wanted):
        found = super().recorded_positions(wanted)
        self.read.set()
        assert self.go.wait(30)
        return found


def test_two_deliveries_that_decide_apart_never_leave_a_failure_beside_an_order(clean_db):
    """Delivery B reads the recorded positions (none) and is held; delivery A, with the product
    inactive, fails the order and records the failure; the product comes back and B goes on."""
    catalog = bootstrap.catalog()
    pid = make_product(catalog, stock=10)["id"]
    body = json.dumps({"batch_id": "apart", "client": "dev", "orders": [order("apart-1", pid)]})
    read, go = threading.Event(), threading.Event()
    late = async_orders.OrderIngest(bootstrap.orders(), _RecordedThenHeld(bootstrap.database(), read, go))
    answers = {}
    delivery_b = threading.Thread(target=lambda: answers.update(b=late.process_all([(body, "m-b")])))
    delivery_b.start()
    try:
        assert read.wait(30)
        catalog.update(pid, {"status": "inactive"})
        async_orders.OrderIngest(bootstrap.orders(), bootstrap.batch_store()).process(body, "m-a")
        catalog.update(pid, {"status": "active"})
    finally:
        go.set()
        delivery_b.join(30)
    result = bootstrap.batch_store().get("apart")["results"][0]
    rows = orders_for("apart-")
    assert (result["status"], len(rows)) in {("failed", 0), ("created", 1)}, (result, rows)


class _HeldBeforeRecording(BatchStore):
    """The real batch store; waits for `go` before recording."""

    def __init__(self, db, placed, go):
        super().__init__(db)
        self.placed, self.go = placed, go

    def record_many(self, batches, settle=None):
        self.placed.set()
        assert self.go.wait(30)
        return super().record_many(batches, settle)


class _DiesBeforeRecording(BatchStore):
    def record_many(self, batches, settle=None):
        raise RuntimeError("the consumer died between its commit and its record")


def test_a_failure_recorded_after_another_delivery_created_the_order_becomes_its_replay(clean_db):
    """Delivery A fails the order (its product inactive) and is held before recording; the product
    comes back, delivery B creates the order and dies before recording; A then records."""
    catalog = bootstrap.catalog()
    pid = make_product(catalog, stock=10)["id"]
    body = json.dumps({"batch_id": "after", "client": "dev", "orders": [order("after-1", pid)]})
    placed, go = threading.Event(), threading.Event()
    first = async_orders.OrderIngest(bootstrap.orders(), _HeldBeforeRecording(bootstrap.database(), placed, go))
    catalog.update(pid, {"status": "inactive"})
    answers = {}
    delivery_a = threading.Thread(target=lambda: answers.update(a=first.process_all([(body, "m-a")])))
    delivery_a.start()
    try:
        assert placed.wait(30)
        catalog.update(pid, {"status": "active"})
        died = async_orders.OrderIngest(bootstrap.orders(), _DiesBeforeRecording(bootstrap.database()))
        assert isinstance(died.process_all([(body, "m-b")])["m-b"], RuntimeError)
    finally:
        go.set()
        delivery_a.join(30)
    rows = orders_for("after-")
    result = bootstrap.batch_store().get("after")["results"][0]
    assert len(rows) == 1 and stock(pid) == 9
    assert (result["status"], result["order_id"], result["duplicate"]) == ("created", rows[0]["id"], True)
    assert answers["a"]["m-a"]["status"] == "done"


def test_same_orders_by_api_and_by_queue_are_created_once(clean_db, sqs, fast_queue):
    spec, url, _ = fast_queue
    product = make_product(bootstrap.catalog(), stock=10)
    orders = [order("both-1", product["id"], 3), order("both-2", product["id"], 1)]
    sync = bootstrap.orders().place_batch(parse_batch({"orders": orders}))
    send(sqs, url, {"orders": orders})
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    result = poller.poll_once()
    assert result.received == 1 and result.failed == []

    assert stock(product["id"]) == 6
    assert len(orders_for("both-")) == 2
    [row] = bootstrap.database().query("SELECT id FROM batches")
    batch = bootstrap.batch_store().get(row["id"])
    assert batch["status"] == "done"
    assert [(r["order_id"], r["duplicate"]) for r in batch["results"]] == \
        [(r["order_id"], True) for r in sync["results"]]


def test_foreign_message_without_batch_id_is_processed_and_readable(clean_db, sqs, fast_queue):
    spec, url, _ = fast_queue
    product = make_product(bootstrap.catalog(), stock=5)
    [message_id] = send(sqs, url, {"orders": [order("ext-1", product["id"], 2), order("ext-2", product["id"], 9)]})
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    assert poller.poll_once().failed == []

    batch = bootstrap.batch_store().get(f"sqs-{message_id}")
    assert batch["status"] == "done"
    created, short = batch["results"]
    assert created["status"] == "created"
    assert short["status"] == "failed" and short["error"]["code"] == "INSUFFICIENT_STOCK"
    assert bootstrap.orders().get(created["order_id"])["client_order_id"] == "ext-1"
    assert orders_for("ext-")[0]["batch_id"] == f"sqs-{message_id}"


def test_poison_message_is_recorded_and_never_retried(clean_db, sqs, fast_queue):
    spec, url, dlq_url = fast_queue
    product = make_product(bootstrap.catalog(), stock=5)
    poison, bad_order, bad_shape = send(sqs, url, "{not json", {"orders": [{"client_order_id": "p-1", "user_id": 1}]},
                                        {"orders": "nope"})
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    messages = receive_all(poller, 3)
    assert poller.invoke(messages) == set()  # all done: permanent failures are results, not retries
    poller.delete(messages)

    batch = bootstrap.batch_store().get(f"sqs-{poison}")
    assert batch["status"] == "done"
    assert batch["results"] == [{"client_order_id": None, "status": "failed",
                                 "error": {"code": "VALIDATION_ERROR", "message": batch["results"][0]["error"]["message"]}}]
    assert "not valid JSON" in batch["results"][0]["error"]["message"]
    invalid = bootstrap.batch_store().get(f"sqs-{bad_order}")["results"][0]
    assert (invalid["client_order_id"], invalid["error"]["code"]) == ("p-1", "VALIDATION_ERROR")
    assert bootstrap.batch_store().get(f"sqs-{bad_shape}")["results"][0]["error"]["code"] == "VALIDATION_ERROR"

    time.sleep(1.5)
    assert poller.receive() == []
    assert depth(sqs, url) == 0 and depth(sqs, dlq_url) == 0
    assert stock(product["id"]) == 5


def test_transient_failure_is_retried_then_lands_in_the_dlq(clean_db, sqs, fast_queue, test_env):
    spec, url, dlq_url = fast_queue
    product = make_product(bootstrap.catalog(), stock=5)
    [message_id] = send(sqs, url, {"batch_id": "down-1", "orders": [order("down-1", product["id"])]})
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    attempts = 0
    with mysql_down(test_env):
        deadline = time.time() + 30
        while time.time() < deadline:
            result = poller.poll_once()
            if result.received:
                attempts += 1
                assert result.failed == [message_id]  # reported as failed, left for SQS to redeliver
            elif depth(sqs, dlq_url):
                break
            time.sleep(0.3)
    assert attempts == spec.max_receive_count
    dead = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert [m["MessageId"] for m in dead] == [message_id]
    assert depth(sqs, url) == 0
    assert not orders_for("down-") and stock(product["id"]) == 5

    # Redrive once MySQL is back: processed exactly once.
    send(sqs, url, dead[0]["Body"])
    assert Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1).poll_once().failed == []
    assert len(orders_for("down-")) == 1 and stock(product["id"]) == 4
    assert bootstrap.batch_store().get("down-1")["status"] == "done"


class FlakyOrders(OrderService):
    """The real OrderService, except that chosen users hit an outage or run out of retries."""

    def __init__(self, real, outage_users=(), contention_users=()):
        super().__init__(real.db, real.strategy, real.writes, real.repository)
        self.outage_users = set(outage_users)
        self.contention_users = set(contention_users)

    def place(self, session, order, batch_id=None, answered=None):
        if order.user_id in self.outage_users:
            raise ServiceUnavailable("simulated outage")
        if order.user_id in self.contention_users:
            return failed(order.client_order_id, ConcurrencyExhausted("Too much contention; retry shortly."))
        return super().place(session, order, batch_id, answered)


def test_mixed_batch_reports_only_the_failed_ids(clean_db, sqs, fast_queue):
    spec, url, _ = fast_queue
    product = make_product(bootstrap.catalog(), stock=1000)
    # Ten messages of two orders each, placed together in request order: message 2 hits contention (in its
    # second order), message 6 an outage (in its second order), which stops the run there.
    bodies = [{"batch_id": "mixed", "orders": [order(f"mix-{i}-a", product["id"], 1, user_id=100 + i),
                                              order(f"mix-{i}-b", product["id"], 1, user_id=i + 1)],
               "positions": [2 * i, 2 * i + 1], "order_count": 20} for i in range(10)]
    ids = send(sqs, url, *bodies)
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    messages = receive_all(poller, 10)
    flaky = async_orders.OrderIngest(FlakyOrders(bootstrap.orders(), outage_users={7}, contention_users={3}),
                               BatchStore(bootstrap.database()))
    poller.handler = lambda event, context: sqs_handlers.handle_order_event(event, context, ingest=flaky)

    response_ids = poller.invoke(messages)
    failed = {ids[2], *ids[6:]}
    assert response_ids == failed
    poller.delete([m for m in messages if m["MessageId"] not in response_ids])

    batch = bootstrap.batch_store().get("mixed")
    assert batch["status"] == "processing"
    # What committed before the outage is recorded; the contended order and everything after the outage is not.
    assert batch["summary"] == {"created": 12, "failed": 0, "pending": 8}, [r for r in batch["results"] if r["status"] != "created"]

    poller.handler = shop_app.handle_order_ingest  # the outage is over
    time.sleep(1.2)
    again = receive_all(poller, len(failed))
    assert {m["MessageId"] for m in again} == failed
    assert poller.invoke(again) == set()
    poller.delete(again)

    batch = bootstrap.batch_store().get("mixed")
    assert batch["status"] == "done" and batch["summary"] == {"created": 20, "failed": 0, "pending": 0}
    assert [r["client_order_id"] for r in batch["results"]] == [f"mix-{i}-{s}" for i in range(10) for s in "ab"]
    assert all(r["duplicate"] is False for r in batch["results"])
    assert len(orders_for("mix-")) == 20 and stock(product["id"]) == 980


def test_async_submit_while_mysql_is_down_is_accepted_and_processed_later(clean_db, sqs, fast_queue, test_env):
    spec, url, _ = fast_queue
    product = make_product(bootstrap.catalog(), stock=100)
    body = {"orders": [order(f"late-{i}", product["id"], 2) for i in range(15)]}
    with mysql_down(test_env):
        accepted = async_orders.AsyncBatches(bootstrap.publisher(), bootstrap.batch_store(), spec.name).submit(
            body["orders"])
        assert accepted["status"] == "queued"
        with pytest.raises(ServiceUnavailable):
            bootstrap.batch_store().get(accepted["batch_id"])
        poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
        down = poller.poll_once()
        assert down.received and down.deleted == 0  # nothing is lost while MySQL is down
    deadline = time.time() + 20
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    while time.time() < deadline and depth(sqs, url):
        poller.poll_once()
    batch = bootstrap.batch_store().get(accepted["batch_id"])
    assert batch["status"] == "done" and batch["summary"]["created"] == 15
    assert [r["client_order_id"] for r in batch["results"]] == [f"late-{i}" for i in range(15)]
    assert len(orders_for("late-")) == 15 and stock(product["id"]) == 70


def test_cache_invalidation_handler_reports_partial_failures(clean_db, sqs, test_env):
    product = make_product(bootstrap.catalog(), stock=3)
    event = {"Records": [
        {"messageId": "m-ok", "receiptHandle": "r1", "body": json.dumps({"product_ids": [product["id"]], "search": True}),
         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "",
         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"},
        {"messageId": "m-junk", "receiptHandle": "r2", "body": "junk",
         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "",
         "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"},
    ]}
    assert shop_app.handle_cache_invalidation(event, None) == {"batchItemFailures": []}
    with mysql_down(test_env):
        assert shop_app.handle_cache_invalidation(event, None) == {"batchItemFailures": [{"itemIdentifier": "m-ok"}]}


def test_garbage_orders_never_lose_the_message_or_a_valid_sibling(clean_db, sqs, fast_queue):
    spec, url, dlq_url = fast_queue
    product = make_product(bootstrap.catalog(), stock=5)
    huge = order("h" * 70_000, product["id"])  # once overflowed batch_results.result: retried into the DLQ
    odd_key = {**order("g-odd", product["id"]), "\ud800" * 3: 1}
    surrogate_id = order("g-\udc00", product["id"])
    mixed, deep = send(sqs, url, {"batch_id": "garbage-1", "orders": [
        order("g-1", product["id"]), huge, odd_key, surrogate_id, order("g-2", product["id"], 2)]},
        '{"orders": ' + "[" * 5000 + "]" * 5000 + "}")
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=1)
    messages = receive_all(poller, 2)
    assert poller.invoke(messages) == set()  # nothing to retry: every position has a result
    poller.delete(messages)

    batch = bootstrap.batch_store().get("garbage-1")
    assert batch["status"] == "done" and batch["summary"] == {"created": 2, "failed": 3, "pending": 0}
    ok_1, too_long, odd, bad_id, ok_2 = batch["results"]
    assert ok_1["status"] == ok_2["status"] == "created"
    assert too_long["error"]["code"] == "VALIDATION_ERROR" and too_long["client_order_id"] == "h" * 63 + "\u2026"
    assert odd["error"]["code"] == "VALIDATION_ERROR" and "\ufffd" in odd["error"]["message"]
    assert bad_id["client_order_id"] == "g-\ufffd" and bad_id["error"]["code"] == "VALIDATION_ERROR"
    assert [o["client_order_id"] for o in orders_for("g-")] == ["g-1", "g-2"]
    assert stock(product["id"]) == 5 - 3
    too_deep = bootstrap.batch_store().get(f"sqs-{deep}")
    assert too_deep["status"] == "done" and "nested deeper" in too_deep["results"][0]["error"]["message"]
    assert depth(sqs, url) == 0 and depth(sqs, dlq_url) == 0

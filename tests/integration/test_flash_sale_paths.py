"""Flash sales on the paths besides sync batches, against the real Redis,
MariaDB and local SQS endpoint: async batches and messages put on the
order-ingest queue go through the gate (never oversold, never written twice,
also under duplicate and concurrent deliveries), a cancelled or expired sale
order returns its units to the sale exactly once (concurrent cancels racing
reconcile, a give-back that missed Redis), the written orders carry their
outbox event and payment window, and garbage on the new message fields is
refused without losing anything."""
import json
import threading
import time
import uuid

import pytest

import app as shop_app
from chalicelib import bootstrap
from chalicelib.domain.reservations import customer_key, owner_key
from chalicelib.domain import flash_message
from chalicelib.domain.orders import parse_order
from chalicelib.entrypoints import sqs as sqs_handlers
from chalicelib.service import async_orders
from chalicelib.service import expiry_and_outbox
from scripts import localstack
from scripts.poller import Poller
from tests.conftest import make_product
from tests.integration.test_flash_sale import (  # noqa: F401 - fixtures
    closed_port, consume, flash_queue, on_sale, order, place, receive, reconcile, remaining, reset, sqs, stock,
)


@pytest.fixture
def ingest_queue(sqs, clean_db):
    """An order-ingest queue of this test's own (30 s visibility: nothing comes back while a test works)."""
    spec = localstack.QueueSpec(f"{clean_db['ORDER_QUEUE_NAME']}-{uuid.uuid4().hex[:8]}", visibility_timeout=30)
    url, dlq_url = localstack.ensure_queue(sqs, spec)
    yield spec, url
    for u in (url, dlq_url):
        sqs.delete_queue(QueueUrl=u)


def ingest(sqs, spec, count):
    """Receive `count` ingest messages (not deleted) and a poller that hands them to app.py's handler."""
    poller = Poller(sqs, spec.name, shop_app.handle_order_ingest, wait_seconds=0)
    seen, deadline = {}, time.time() + 15
    while len(seen) < count and time.time() < deadline:
        for m in poller.receive():
            seen[m["MessageId"]] = m
    assert len(seen) == count
    return poller, list(seen.values())


def submit(spec, *orders):
    batches = async_orders.AsyncBatches(bootstrap.publisher(), bootstrap.batch_store(), spec.name)
    return batches.submit(list(orders), client="dev")["batch_id"]


def batch(batch_id):
    return bootstrap.batch_store().get(batch_id, resolve=bootstrap.flash_sales().resolve)


def sale_rows(pid):
    return bootstrap.database().query(
        "SELECT o.id, o.client_order_id, o.batch_id, o.flash_reservation, i.flash_sale_id FROM orders o "
        "JOIN order_items i ON i.order_id = o.id WHERE i.product_id = %s ORDER BY o.id", (pid,))


def test_an_async_batch_goes_through_the_gate_and_shows_pending_until_written(sqs, flash_queue, ingest_queue):
    spec, _ = ingest_queue
    pid = on_sale(stock=10, sale_stock=6, price=300)
    plain = make_product(bootstrap.catalog(), stock=5)["id"]
    batch_id = submit(spec, order("a", 1, (pid, 2)), order("b", 2, (pid, 1)), order("c", 3, (plain, 1)),
                      order("d", 4, (pid, 1), (plain, 1)))
    poller, messages = ingest(sqs, spec, 1)

    assert poller.invoke(messages) == set()
    assert poller.invoke(messages) == set()  # a duplicate delivery takes nothing twice

    assert remaining(pid) == 3 and stock(pid) == 10 and stock(plain) == 4
    seen = batch(batch_id)
    assert [r["status"] for r in seen["results"]] == ["pending", "pending", "created", "failed"]
    assert seen["results"][3]["error"]["code"] == "VALIDATION_ERROR"  # sale and ordinary products mixed
    assert seen["status"] == "processing"  # done only once every result is final
    assert seen["summary"] == {"created": 1, "failed": 1, "pending": 2}
    rids = [r["reservation_id"] for r in seen["results"][:2]]
    assert bootstrap.flash_sales().reservation(rids[0])["status"] == "pending"

    consume(sqs, flash_queue)

    done = batch(batch_id)
    assert done["status"] == "done" and done["summary"] == {"created": 3, "failed": 1, "pending": 0}
    first = done["results"][0]
    assert first["status"] == "created" and first["total_cents"] == 600 and first["reservation_id"] == rids[0]
    assert bootstrap.orders().get(first["order_id"])["items"][0]["quantity"] == 2
    # The written orders belong to the batch and to the sale, and the final answers are kept in MySQL.
    rows = sale_rows(pid)
    assert {r["batch_id"] for r in rows} == {batch_id} and {r["flash_reservation"] for r in rows} == set(rids)
    assert {r["flash_sale_id"] for r in rows} == {bootstrap.flash_gate().sale(pid)["sale_id"]}
    stored = bootstrap.database().query("SELECT result FROM batch_results WHERE batch_id = %s AND position = 0",
                                        (batch_id,))[0]["result"]
    assert json.loads(stored) == first
    assert stock(pid) == 7 and remaining(pid) == 3
    reconcile(pid, 10)


def test_sqs_ingested_sale_orders_never_oversell_or_duplicate_under_concurrent_deliveries(
        sqs, flash_queue, ingest_queue):
    spec, url = ingest_queue
    pid = on_sale(stock=50, sale_stock=30, limit=1)
    # Messages another system put on the queue: no batch_id, 12 x 10 one-unit orders, 120 customers.
    for m in range(12):
        body = {"client": "dev", "orders": [order(f"q{m}-{k}", m * 10 + k + 1, (pid, 1)) for k in range(10)]}
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    # ...and every customer of the first message tries again in another message (the limit holds).
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(
        {"client": "dev", "orders": [order(f"again-{k}", k + 1, (pid, 1)) for k in range(10)]}))
    poller, messages = ingest(sqs, spec, 13)
    errors = []

    def deliver(chunk):
        try:
            assert poller.invoke(chunk) == set()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # Each message is handed over twice at the same time (SQS's at-least-once, two consumers).
    threads = [threading.Thread(target=deliver, args=(messages[i:i + 3],)) for i in range(0, 13, 3) for _ in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert remaining(pid) == 0

    consume(sqs, flash_queue)

    results = [r for m in messages for r in batch(f"sqs-{m['MessageId']}")["results"]]
    created = [r for r in results if r["status"] == "created"]
    assert len(results) == 130 and len(created) == 30
    assert {r["error"]["code"] for r in results if r["status"] == "failed"} <= {"INSUFFICIENT_STOCK",
                                                                                 "SALE_LIMIT_EXCEEDED"}
    assert len({r["order_id"] for r in created}) == 30
    assert stock(pid) == 20 and len(sale_rows(pid)) == 30
    report = bootstrap.flash_admin().reconcile(pid)
    assert report["action"] == "ok" and report["in_flight"] == 0 and report["remaining"] == 0
    reconcile(pid, 50)


def test_with_the_gate_down_an_ingested_sale_order_is_retried_not_recorded(sqs, flash_queue, ingest_queue):
    spec, _ = ingest_queue
    pid = on_sale(stock=5)
    batch_id = submit(spec, order("a", 1, (pid, 1)))
    poller, messages = ingest(sqs, spec, 1)
    reset(REDIS_STATE_URL=f"redis://127.0.0.1:{closed_port()}/0")
    try:
        assert poller.invoke(messages) == {messages[0]["MessageId"]}  # SQS redelivers it
    finally:
        reset()
    assert batch(batch_id)["results"] == [] and remaining(pid) == 5

    assert poller.invoke(messages) == set()
    assert batch(batch_id)["results"][0]["status"] == "pending" and remaining(pid) == 4


def test_garbage_orders_for_a_sale_product_fail_alone_and_take_nothing(sqs, flash_queue, ingest_queue):
    spec, url = ingest_queue
    pid = on_sale(stock=5)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"client": "dev", "orders": [
        {"client_order_id": "x", "user_id": 1, "items": [{"product_id": pid, "quantity": 0}]},
        {"client_order_id": "y", "user_id": 1, "items": [{"product_id": pid, "quantity": 1, "price": 1}]},
        {"client_order_id": "z", "user_id": "1", "items": [{"product_id": pid, "quantity": 1}]},
        order("ok", 2, (pid, 1))]}))
    poller, messages = ingest(sqs, spec, 1)

    assert poller.invoke(messages) == set()

    results = batch(f"sqs-{messages[0]['MessageId']}")["results"]
    assert [r["status"] for r in results] == ["failed", "failed", "failed", "pending"]
    assert {r["error"]["code"] for r in results[:3]} == {"VALIDATION_ERROR"}
    assert remaining(pid) == 4


def test_a_flash_message_with_a_garbage_batch_id_or_contact_email_is_dropped_and_its_siblings_written(
        sqs, flash_queue):
    pid = on_sale(stock=5)
    place(order("a", 1, (pid, 1)))
    records = receive(sqs, flash_queue)
    good = flash_message.decode(records[0]["body"])[0].to_json()
    bad = [{"messageId": str(uuid.uuid4()), "body": json.dumps({"reservations": [{**good, field: b}]})}
           for field, b in (("batch_id", ""), ("batch_id", 7), ("batch_id", "b" * 65),
                            ("contact_email", "not an address"), ("contact_email", 5), ("contact_email", "@" * 300))]

    assert sqs_handlers.handle_flash_event({"Records": [*bad, *records]})["batchItemFailures"] == []

    assert stock(pid) == 4 and remaining(pid) == 4
    reconcile(pid, 5)


def test_a_sale_orders_contact_email_reaches_its_order_row(sqs, flash_queue):
    """Where its emails go: the notification consumer reads the order row, as for any order."""
    pid = on_sale(stock=5)
    place({**order("a", 1, (pid, 1)), "contact_email": "ann@example.com"}, order("b", 2, (pid, 1)))
    consume(sqs, flash_queue)
    rows = bootstrap.database().query("SELECT client_order_id, contact_email FROM orders")
    assert {r["client_order_id"]: r["contact_email"] for r in rows} == {"a": "ann@example.com", "b": None}


def test_written_sale_orders_carry_their_created_event_in_the_same_transaction(sqs, flash_queue):
    pid = on_sale(stock=10)
    reply = place(order("a", 1, (pid, 2)), order("b", 2, (pid, 1)))
    records = receive(sqs, flash_queue)
    for _ in range(2):  # a duplicate delivery writes no second event
        assert sqs_handlers.handle_flash_event({"Records": records})["batchItemFailures"] == []

    for result in reply["results"]:
        written = bootstrap.flash_sales().reservation(result["reservation_id"])
        events = bootstrap.orders().events(written["order_id"])
        assert [(e["type"], e["sequence"]) for e in events] == [("order.created", 1)]
        assert events[0]["data"]["reservation_id"] == result["reservation_id"]
        assert events[0]["data"]["lifecycle"] == "paid" and events[0]["data"]["total_cents"] == written["total_cents"]
    assert bootstrap.database().query("SELECT COUNT(*) AS n FROM order_events")[0]["n"] == 2


def test_cancels_return_units_to_the_sale_exactly_once_racing_reconcile(sqs, flash_queue):
    pid = on_sale(stock=12, sale_stock=10, limit=2)
    reply = place(*[order(f"c{u}", u, (pid, 2)) for u in range(1, 6)])
    consume(sqs, flash_queue)
    order_ids = [bootstrap.flash_sales().reservation(r["reservation_id"])["order_id"] for r in reply["results"]]
    assert remaining(pid) == 0 and stock(pid) == 2
    errors, stop = [], threading.Event()

    def canceller():
        try:
            for order_id in order_ids:
                assert bootstrap.orders().cancel(order_id)["status"] == "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reconciler():
        while not stop.is_set():
            try:
                bootstrap.flash_admin().reconcile(pid)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    rec = threading.Thread(target=reconciler)
    rec.start()
    cancellers = [threading.Thread(target=canceller) for _ in range(4)]
    for t in cancellers:
        t.start()
    for t in cancellers:
        t.join()
    stop.set()
    rec.join()

    assert errors == []
    assert stock(pid) == 12 and remaining(pid) == 10
    gate = bootstrap.flash_gate()
    sale_id = gate.sale(pid)["sale_id"]
    # A late give-back (another cancel's, a retry's) changes nothing.
    assert gate.return_units(order_ids[0], customer_key("dev", 0, 1), [(pid, 2, sale_id)]) == 0
    final = bootstrap.flash_admin().reconcile(pid)
    assert final["action"] == "ok" and final["in_flight"] == 0 and final["returned_orders"] == 5
    # The customers hold nothing any more: each may buy up to the limit again.
    assert place(order("again", 1, (pid, 2)))["results"][0]["status"] == "pending"
    consume(sqs, flash_queue)
    assert stock(pid) == 10 and remaining(pid) == 8
    reconcile(pid, 12)


def test_a_give_back_that_missed_redis_is_made_by_reconcile_once(sqs, flash_queue):
    pid = on_sale(stock=6, limit=3)
    rid = place(order("a", 1, (pid, 3)))["results"][0]["reservation_id"]
    consume(sqs, flash_queue)
    order_id = bootstrap.flash_sales().reservation(rid)["order_id"]
    reset(REDIS_STATE_URL=f"redis://127.0.0.1:{closed_port()}/0")
    try:
        assert bootstrap.orders().cancel(order_id)["status"] == "cancelled"  # MySQL has the units back
    finally:
        reset()
    assert stock(pid) == 6 and remaining(pid) == 3

    report = bootstrap.flash_admin().reconcile(pid)
    assert report["action"] == "repaired" and report["remaining"] == 6 and remaining(pid) == 6
    gate = bootstrap.flash_gate()
    assert gate.return_units(order_id, customer_key("dev", 0, 1), [(pid, 3, gate.sale(pid)["sale_id"])]) == 0
    assert remaining(pid) == 6
    assert place(order("b", 1, (pid, 3)))["results"][0]["status"] == "pending"  # the customer's limit is free


def test_reconcile_never_overwrites_a_sale_that_moved_after_its_snapshot(flash_queue):
    pid = on_sale(stock=5)
    gate = bootstrap.flash_gate()
    live = gate.sale(pid)
    gate.admit(owner_key("dev", 0, 1, "a"), customer_key("dev", 0, 1), "ab" * 32, {pid: 2})

    assert gate.resync(pid, live["sale_id"], live.get("seq", 0), 5, 0) is None
    assert remaining(pid) == 3


def test_the_units_of_a_stopped_sale_go_back_to_stock_only(sqs, flash_queue):
    pid = on_sale(stock=5)
    rid = place(order("a", 1, (pid, 2)))["results"][0]["reservation_id"]
    consume(sqs, flash_queue)
    bootstrap.flash_admin().stop(pid)
    bootstrap.flash_admin().start(pid, {"sale_stock": 3})
    order_id = bootstrap.flash_sales().reservation(rid)["order_id"]

    bootstrap.orders().cancel(order_id)

    assert stock(pid) == 5 and remaining(pid) == 3  # the new sale offers what it was started with


def test_expired_sale_orders_return_their_units_to_the_sale(sqs, flash_queue):
    pid = on_sale(stock=4)
    reset(ORDER_PAYMENT_WINDOW_SECONDS="1")
    try:
        rid = place(order("a", 1, (pid, 3)))["results"][0]["reservation_id"]
        consume(sqs, flash_queue)
        order_id = bootstrap.flash_sales().reservation(rid)["order_id"]
        written = bootstrap.orders().get(order_id)
        assert written["lifecycle"] == "pending_payment" and written["expires_at"]
        assert bootstrap.orders().events(order_id)[0]["data"]["lifecycle"] == "pending_payment"
        assert remaining(pid) == 1 and stock(pid) == 1
        time.sleep(1.2)
        assert expiry_and_outbox.expire_due(bootstrap.orders(), bootstrap.outbox()) == 1
    finally:
        reset()
    assert bootstrap.orders().get(order_id)["lifecycle"] == "expired"
    assert stock(pid) == 4 and remaining(pid) == 4
    assert bootstrap.flash_admin().reconcile(pid)["action"] == "ok"


def test_a_replay_whose_reservation_was_given_back_meanwhile_is_told_to_retry(flash_queue):
    pid = on_sale(stock=5)
    gate = bootstrap.flash_gate()
    owner = owner_key("dev", 0, 1, "a")
    first = gate.admit(owner, customer_key("dev", 0, 1), parse_order(order("a", 1, (pid, 1)), 0, "dev").request_hash,
                       {pid: 1})
    read = gate.records

    def released_first(keys):
        # The first request's hand-off fails and gives the reservation back between the replay's two calls.
        gate.release([(keys[0], first.rid)])
        return read(keys)

    gate.records = released_first
    try:
        replay = place(order("a", 1, (pid, 1)))["results"][0]
    finally:
        del gate.records
    assert replay["status"] == "failed" and replay["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert remaining(pid) == 5
    assert place(order("a", 1, (pid, 1)))["results"][0]["status"] == "pending"  # the retry is accepted afresh


def test_mysqls_record_of_sales_is_not_narrowed_by_one_batchs_products(flash_queue):
    """Redis lost two sales; a batch for the first must not make the second look off sale to a
    batch within the same second (the process's copy of MySQL's record must stay whole)."""
    first, second = on_sale(stock=10), on_sale(stock=10)
    state = bootstrap.state_gateway()
    lost = [state.key("flash:active"), *[state.key(f"flash:sale:{pid}") for pid in (first, second)]]
    state.call(lambda r: r.delete(*lost))
    flash = bootstrap.flash_sales()
    assert flash.sale_products([first])[0] == {first}
    assert flash.sale_products([second])[0] == {second}  # refused as retryable, not sold outside the gate
    refused = place(order("late", 1, (second, 1)))["results"][0]
    assert refused["status"] == "failed" and refused["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert stock(second) == 10

"""Flash sales against the real Redis, MariaDB and the local SQS endpoint: the
gate's admission (idempotent, limited, sold out without MySQL), the hand-off
(a failed send gives the units back, an expired lease too), the coalescing
consumer (duplicate delivery, a crash between commit and settle, a Redis that
admitted more than MySQL has), each ending in a reconciliation: no unit
oversold, none lost, no order twice, Redis's remaining units = MySQL's stock
minus what is still in flight."""
import json
import socket
import threading
import time
import uuid

import pytest

from chalicelib import bootstrap
from chalicelib.adapters.queues import QueuePublisher
from chalicelib.domain.errors import CacheUnavailable
from chalicelib.domain.reservations import customer_key, owner_key
from chalicelib.domain import flash_message
from chalicelib.domain.flash_message import Reservation
from chalicelib.domain.orders import parse_batch, parse_order
from chalicelib.entrypoints import sqs as sqs_handlers
from chalicelib.service import flash_sales, flash_writer
from chalicelib.domain.errors import ServiceUnavailable
from scripts import localstack
from tests.conftest import make_product
from tests.support.tcp_proxy import TcpProxy
from scripts.servers import ThrowawayRedis


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    client = localstack.sqs_client(aws_endpoint.url)
    localstack.ensure_queues(client, localstack.queue_specs(bootstrap.settings()))
    return client


QUEUE = {}


def reset(**overrides):
    """bootstrap.reset that keeps this test's flash queue."""
    bootstrap.reset(FLASH_QUEUE_NAME=QUEUE["name"], **overrides)


@pytest.fixture
def flash_queue(sqs, clean_db):
    """A flash queue of this test's own: the reconcile reads its depth."""
    QUEUE["name"] = f"{clean_db['FLASH_QUEUE_NAME']}-{uuid.uuid4().hex[:8]}"
    url, dlq_url = localstack.ensure_queue(sqs, localstack.QueueSpec(QUEUE["name"], visibility_timeout=30))
    reset()
    yield url
    bootstrap.reset()
    for u in (url, dlq_url):
        sqs.delete_queue(QueueUrl=u)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_sale(stock=100, sale_stock=None, limit=None, price=500):
    product = make_product(bootstrap.catalog(), stock=stock, price_cents=price)
    body = {"sale_stock": sale_stock or stock}
    if limit:
        body["per_customer_limit"] = limit
    bootstrap.flash_admin().start(product["id"], body)
    return product["id"]


def order(coid, user, *lines):
    return {"client_order_id": coid, "user_id": user,
            "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


def place(*orders, client="dev"):
    return bootstrap.orders().place_batch(parse_batch({"orders": list(orders)}, client))


def receive(sqs, url):
    """Every message on the queue, not deleted (as a Lambda SQS event's records)."""
    records, empty = {}, 0
    while empty < 2:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                  VisibilityTimeout=60).get("Messages", [])
        empty = 0 if got else empty + 1
        for m in got:
            records[m["MessageId"]] = {"messageId": m["MessageId"], "body": m["Body"],
                                       "receiptHandle": m["ReceiptHandle"]}
    return list(records.values())


def consume(sqs, url):
    """Hand every queued message to the flash consumer in batches of 10, as the mapping would; delete the done ones."""
    records = receive(sqs, url)
    for start in range(0, len(records), 10):
        chunk = records[start:start + 10]
        failures = sqs_handlers.handle_flash_event({"Records": chunk})["batchItemFailures"]
        assert failures == []
        for r in chunk:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=r["receiptHandle"])
    return records


def stock(pid):
    return bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (pid,))[0]["stock"]


def sold(pid):
    rows = bootstrap.database().query(
        "SELECT COALESCE(SUM(i.quantity), 0) AS n FROM order_items i JOIN orders o ON o.id = i.order_id "
        "WHERE i.product_id = %s AND o.status = 'created'", (pid,))
    return int(rows[0]["n"])


def remaining(pid):
    return bootstrap.flash_gate().sale(pid)["remaining"]


def reconcile(pid, initial):
    """MySQL sold what it lost; Redis offers exactly what MySQL still has for the sale."""
    assert stock(pid) >= 0
    assert stock(pid) + sold(pid) == initial
    duplicates = bootstrap.database().query(
        "SELECT client, user_id, client_order_id, COUNT(*) AS n FROM orders GROUP BY 1, 2, 3 HAVING n > 1")
    assert not duplicates


def test_sale_orders_are_admitted_in_redis_and_written_by_the_consumer(sqs, flash_queue):
    pid = on_sale(stock=10, sale_stock=6, price=250)
    reply = place(order("a", 1, (pid, 2)), order("b", 2, (pid, 1), (pid, 1)))

    assert [r["status"] for r in reply["results"]] == ["pending", "pending"]
    assert reply["summary"] == {"created": 0, "failed": 0, "pending": 2}
    rids = [r["reservation_id"] for r in reply["results"]]
    assert remaining(pid) == 2
    assert stock(pid) == 10  # nothing written yet: the API did not touch the row
    assert bootstrap.flash_sales().reservation(rids[0])["status"] == "pending"

    records = consume(sqs, flash_queue)

    assert len(records) == 1  # both reservations of the batch in one message
    assert stock(pid) == 6
    first = bootstrap.flash_sales().reservation(rids[0])
    assert first["status"] == "created" and first["total_cents"] == 500
    order_row = bootstrap.orders().get(first["order_id"])
    assert order_row["items"] == [{"product_id": pid, "quantity": 2, "unit_price_cents": 250}]
    assert remaining(pid) == 2
    reconcile(pid, 10)


def test_sold_out_and_per_customer_limit_are_answered_by_the_gate(flash_queue):
    pid = on_sale(stock=3, limit=2)
    reply = place(order("a", 1, (pid, 2)), order("b", 1, (pid, 1)), order("c", 2, (pid, 1)), order("d", 3, (pid, 1)))

    assert [r["status"] for r in reply["results"]] == ["pending", "failed", "pending", "failed"]
    assert reply["results"][1]["error"]["code"] == "SALE_LIMIT_EXCEEDED"
    assert reply["results"][3]["error"] == {"code": "INSUFFICIENT_STOCK", "product_id": pid,
                                            "message": reply["results"][3]["error"]["message"]}
    assert remaining(pid) == 0
    # Refusals leave no reservation and no order row behind.
    assert bootstrap.database().query("SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0


def test_a_replay_gets_the_same_answer_and_other_lines_conflict(sqs, flash_queue):
    pid = on_sale(stock=5)
    first = place(order("a", 1, (pid, 1)))["results"][0]
    again = place(order("a", 1, (pid, 1)))["results"][0]
    other = place(order("a", 1, (pid, 2)))["results"][0]

    assert again == {**first, "duplicate": True}
    assert other["status"] == "failed" and other["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert remaining(pid) == 4

    consume(sqs, flash_queue)
    written = place(order("a", 1, (pid, 1)))["results"][0]
    assert written["status"] == "created" and written["duplicate"] is True
    assert written["reservation_id"] == first["reservation_id"]
    assert written["order_id"] == bootstrap.flash_sales().reservation(first["reservation_id"])["order_id"]
    reconcile(pid, 5)
    assert stock(pid) == 4 and remaining(pid) == 4


def test_orders_mixing_sale_and_ordinary_products_are_refused(flash_queue):
    sale_pid = on_sale(stock=5)
    plain = make_product(bootstrap.catalog(), stock=5)["id"]
    reply = place(order("mix", 1, (sale_pid, 1), (plain, 1)), order("plain", 1, (plain, 2)))

    assert reply["results"][0]["status"] == "failed"
    assert reply["results"][0]["error"]["code"] == "VALIDATION_ERROR"
    assert reply["results"][1]["status"] == "created"  # ordinary products keep today's path
    assert remaining(sale_pid) == 5 and stock(plain) == 3


def test_concurrent_buyers_with_duplicate_submits_never_oversell(sqs, flash_queue):
    pid = on_sale(stock=60, sale_stock=40)
    replies, errors = {}, []

    def buyer(user):
        try:
            # Every tenth buyer submits twice (a client retry racing itself).
            for _ in range(2 if user % 10 == 0 else 1):
                replies.setdefault(user, []).append(place(order(f"c{user}", user, (pid, 1)))["results"][0])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=buyer, args=(u,)) for u in range(1, 121)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    accepted = {u for u, rs in replies.items() if rs[0]["status"] == "pending"}
    assert len(accepted) == 40
    for rs in replies.values():  # a replay gets the same answer
        assert {r.get("reservation_id") for r in rs} == {rs[0].get("reservation_id")}
    assert remaining(pid) == 0

    consume(sqs, flash_queue)

    assert stock(pid) == 20 and sold(pid) == 40
    reconcile(pid, 60)


def test_duplicate_delivery_writes_once(sqs, flash_queue):
    pid = on_sale(stock=10)
    place(order("a", 1, (pid, 3)), order("b", 2, (pid, 2)))
    records = receive(sqs, flash_queue)

    for _ in range(2):
        assert sqs_handlers.handle_flash_event({"Records": records})["batchItemFailures"] == []

    assert stock(pid) == 5 and remaining(pid) == 5
    reconcile(pid, 10)


def test_a_crash_between_commit_and_settle_is_repaired_by_the_redelivery(sqs, flash_queue):
    pid = on_sale(stock=10)
    rid = place(order("a", 1, (pid, 4)))["results"][0]["reservation_id"]
    records = receive(sqs, flash_queue)
    writer = bootstrap.flash_writer()
    # The commit without the settle that would follow it: what a crash leaves.
    with writer.writes.session() as session:
        session.run(lambda tx: writer._write(tx, flash_message.decode(records[0]["body"]), writer.payment_windows))
    assert bootstrap.flash_sales().reservation(rid)["status"] == "pending"

    assert sqs_handlers.handle_flash_event({"Records": records})["batchItemFailures"] == []

    assert bootstrap.flash_sales().reservation(rid)["status"] == "created"
    assert stock(pid) == 6 and remaining(pid) == 6
    reconcile(pid, 10)


def test_redis_that_admitted_more_than_mysql_has_never_oversells(sqs, flash_queue):
    pid = on_sale(stock=10)
    # MySQL loses units the gate does not know about (as after a Redis failover that lost writes).
    bootstrap.catalog().adjust_stock(pid, {"delta": -6})
    reply = place(*[order(f"o{i}", i + 1, (pid, 1)) for i in range(10)])
    assert reply["summary"]["pending"] == 10

    consume(sqs, flash_queue)

    states = [bootstrap.flash_sales().reservation(r["reservation_id"]) for r in reply["results"]]
    assert sum(s["status"] == "created" for s in states) == 4
    assert {s["error"]["code"] for s in states if s["status"] == "failed"} == {"INSUFFICIENT_STOCK"}
    assert stock(pid) == 0 and remaining(pid) == 0  # Redis came down to MySQL: no drift left
    reconcile(pid, 4)


def test_a_failed_send_gives_the_units_back_and_answers_503(flash_queue, test_env):
    pid = on_sale(stock=5)
    reset(AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed_port()}")
    try:
        with pytest.raises(ServiceUnavailable):
            place(order("a", 1, (pid, 2)))
        assert remaining(pid) == 5
    finally:
        reset()
    # Nothing half-taken: the same order is accepted afresh once SQS is back.
    assert place(order("a", 1, (pid, 2)))["results"][0]["status"] == "pending"
    assert remaining(pid) == 3


def test_a_send_that_may_have_reached_sqs_keeps_its_units_for_the_buyers_retry(sqs, flash_queue, test_env):
    """SQS took the message but its answer was lost, and botocore's retry then found the endpoint
    down: the last error says "could not connect", yet the order is on its way. Given back, its unit
    would go to another buyer while the first is written after all and its retry refused as sold out."""
    pid = on_sale(stock=5, sale_stock=2)
    endpoint_port = int(test_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    with TcpProxy(endpoint_port) as proxy:
        reset(AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}")
        try:
            assert place(order("w", 3, (pid, 1)))["results"][0]["status"] == "pending"   # SQS reached; one unit left
            consume(sqs, flash_queue)
            proxy.deaf()

            def down_once_queued():
                while int(sqs.get_queue_attributes(QueueUrl=flash_queue, AttributeNames=[
                        "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]) == 0:
                    time.sleep(0.02)
                proxy.down()

            watcher = threading.Thread(target=down_once_queued, daemon=True)
            watcher.start()
            with pytest.raises(ServiceUnavailable):
                place(order("a", 1, (pid, 1)))
            watcher.join(5)
            assert remaining(pid) == 0   # still a's
            other = place(order("z", 2, (pid, 1)))["results"][0]
            assert other["status"] == "failed" and other["error"]["code"] == "INSUFFICIENT_STOCK"

            proxy.restore()
            retry = place(order("a", 1, (pid, 1)))["results"][0]
            assert retry["status"] == "pending"
            consume(sqs, flash_queue)   # the message the lost answer hid and the retry's: one order
            written = place(order("a", 1, (pid, 1)))["results"][0]
            assert written["status"] == "created" and written["duplicate"] is True
        finally:
            reset()
    rows = bootstrap.database().query("SELECT client_order_id FROM orders WHERE client_order_id IN ('a', 'z')")
    assert [r["client_order_id"] for r in rows] == ["a"]
    assert stock(pid) == 3
    reconcile(pid, 5)


def test_an_expired_lease_returns_the_units_and_a_late_message_takes_them_again(sqs, flash_queue):
    pid = on_sale(stock=5, limit=3)
    gate = bootstrap.flash_gate()
    owner = owner_key("dev", 0, 1, "late")
    admission = gate.admit(owner, customer_key("dev", 0, 1), "ab" * 32, {pid: 2}, now_ms=1_000)
    assert admission.outcome == "ACCEPTED" and remaining(pid) == 3

    # The process died before SQS: the lease expires and the units come back.
    assert gate.sweep(now_ms=1_000 + gate.lease_ms + 1) == 1
    assert remaining(pid) == 5
    assert gate.lookup(admission.rid) is None

    # ...unless its message did reach SQS (the confirm was lost): the write takes them again.
    late = Reservation(admission.rid, "dev", 0, 1, "late", "ab" * 32, admission.lines)
    sqs.send_message(QueueUrl=flash_queue, MessageBody=json.dumps(flash_message.pack([late], 0)[0]))
    consume(sqs, flash_queue)
    assert stock(pid) == 3 and remaining(pid) == 3
    reconcile(pid, 5)


def test_with_redis_down_sale_orders_are_refused_and_others_go_on(flash_queue):
    sale_pid = on_sale(stock=5)
    plain = make_product(bootstrap.catalog(), stock=5)["id"]
    reset(REDIS_STATE_URL=f"redis://127.0.0.1:{closed_port()}/0")
    try:
        reply = place(order("s", 1, (sale_pid, 1)), order("p", 1, (plain, 1)))
    finally:
        reset()
    assert reply["results"][0]["status"] == "failed"
    assert reply["results"][0]["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert reply["results"][1]["status"] == "created"
    assert stock(sale_pid) == 5 and remaining(sale_pid) == 5


def test_a_malformed_message_is_dropped_and_a_mysql_outage_retries_the_batch(sqs, flash_queue, test_env):
    pid = on_sale(stock=5)
    place(order("a", 1, (pid, 1)))
    records = receive(sqs, flash_queue)
    bad = {"messageId": str(uuid.uuid4()), "body": "{\"reservations\": 1}", "receiptHandle": "x"}

    dead = f"mysql://root:@127.0.0.1:{closed_port()}/{test_env['DATABASE_URL'].rsplit('/', 1)[1]}"
    reset(DATABASE_URL=dead, DB_CONNECT_TIMEOUT=0.5)
    try:
        failures = sqs_handlers.handle_flash_event({"Records": [bad, *records]})["batchItemFailures"]
    finally:
        reset()
    assert failures == [{"itemIdentifier": records[0]["messageId"]}]

    assert sqs_handlers.handle_flash_event({"Records": [bad, *records]})["batchItemFailures"] == []
    assert stock(pid) == 4
    reconcile(pid, 5)


def short_lease_sends(monkeypatch):
    """A lease of a second or two for the test: AWS calls bounded well inside it (the local endpoint answers in ms)."""
    monkeypatch.setattr(QueuePublisher, "call_seconds", 0.1)


def test_a_redis_restart_loses_the_sale_and_reconcile_rebuilds_it(sqs, flash_queue, monkeypatch):
    short_lease_sends(monkeypatch)
    redis_server = ThrowawayRedis().start()
    reset(REDIS_STATE_URL=redis_server.url)
    try:
        pid = on_sale(stock=10, sale_stock=8, limit=3)
        place(order("a", 1, (pid, 2)), order("b", 2, (pid, 1)))
        consume(sqs, flash_queue)
        in_flight = place(order("c", 1, (pid, 1)))["results"][0]
        assert in_flight["status"] == "pending"

        redis_server.kill()  # no persistence: it comes back empty
        redis_server.start()
        reset(REDIS_STATE_URL=redis_server.url, FLASH_LEASE_MS=500)
        # MySQL still says the product is on sale: its orders wait for the rebuild instead of skipping the gate.
        lost = place(order("d", 3, (pid, 1)))["results"][0]
        assert lost["status"] == "failed" and lost["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert stock(pid) == 7

        # A reservation is still on SQS: rebuilding now would offer its unit twice.
        assert bootstrap.flash_admin().reconcile(pid)["action"] == "waiting"
        consume(sqs, flash_queue)
        # Quiet, but an API process may still be sending what it was given before the loss: one lease first.
        assert bootstrap.flash_admin().reconcile(pid)["action"] == "waiting"
        time.sleep(bootstrap.flash_gate().lease_ms / 1000)
        report = bootstrap.flash_admin().reconcile(pid)
        assert report["action"] == "rebuilt" and report["sold"] == 4 and report["remaining"] == 4
        over = place(order("e", 1, (pid, 1)))["results"][0]  # customer 1 holds 3 again: 2 rebuilt + 1 written
        assert over["status"] == "failed" and over["error"]["code"] == "SALE_LIMIT_EXCEEDED"
        assert [r["status"] for r in place(order("f", 3, (pid, 2)), order("g", 4, (pid, 2)))["results"]] == \
            ["pending", "pending"]
        consume(sqs, flash_queue)

        final = bootstrap.flash_admin().reconcile(pid)
        assert final["action"] == "ok" and final["in_flight"] == 0
        assert stock(pid) == 2 and remaining(pid) == 0 and final["sold"] == 8
        reconcile(pid, 10)
    finally:
        reset()
        redis_server.close()


def test_an_order_sent_again_after_redis_lost_the_sale_replays_the_order_mysql_has(sqs, flash_queue, monkeypatch):
    """A buyer's app sends its order again (the same key) after Redis lost the sale: the one
    written before the loss and the one still on SQS at the loss both answer as the order
    they became, never as a new order of a sold-out sale or a key used for another request."""
    short_lease_sends(monkeypatch)
    redis_server = ThrowawayRedis().start()
    reset(REDIS_STATE_URL=redis_server.url)
    try:
        pid = on_sale(stock=5, sale_stock=2)
        assert place(order("a", 1, (pid, 1)))["results"][0]["status"] == "pending"
        consume(sqs, flash_queue)
        assert place(order("b", 2, (pid, 1)))["results"][0]["status"] == "pending"   # on SQS at the loss

        redis_server.kill()
        redis_server.start()
        reset(REDIS_STATE_URL=redis_server.url, FLASH_LEASE_MS=500)
        consume(sqs, flash_queue)
        assert bootstrap.flash_admin().reconcile(pid)["action"] == "waiting"   # one lease from here
        time.sleep(bootstrap.flash_gate().lease_ms / 1000)
        assert bootstrap.flash_admin().reconcile(pid)["action"] == "rebuilt"   # sold out: both units written

        ids = {r["client_order_id"]: r["id"] for r in bootstrap.database().query(
            "SELECT client_order_id, id FROM orders WHERE client_order_id IN ('a', 'b')")}
        again = place(order("a", 1, (pid, 1)), order("b", 2, (pid, 1)))["results"]
        assert [(r["status"], r.get("order_id"), r.get("duplicate")) for r in again] == \
            [("created", ids["a"], True), ("created", ids["b"], True)]
        conflict = place(order("a", 1, (pid, 2)))["results"][0]
        assert conflict["error"]["code"] == "IDEMPOTENCY_CONFLICT"
        assert stock(pid) == 3 and remaining(pid) == 0
        reconcile(pid, 5)
    finally:
        reset()
        redis_server.close()


def test_reconcile_sets_the_gate_to_what_mysql_can_still_sell(sqs, flash_queue):
    pid = on_sale(stock=10, sale_stock=10)
    bootstrap.catalog().adjust_stock(pid, {"delta": -7})
    report = bootstrap.flash_admin().reconcile(pid)
    assert report["action"] == "repaired" and report["remaining_before"] == 10 and report["remaining"] == 3
    assert remaining(pid) == 3
    assert bootstrap.flash_admin().reconcile(pid)["action"] == "ok"

    place(order("a", 1, (pid, 2)))
    # Units on their way are not drift: nothing is changed while the queue holds them.
    assert bootstrap.flash_admin().reconcile(pid)["action"] == "ok"
    assert remaining(pid) == 1
    consume(sqs, flash_queue)
    # Redis too low with nothing on its way (drift the other way): raised back to MySQL's.
    live = bootstrap.flash_gate().sale(pid)
    bootstrap.flash_gate().cap(pid, live["sale_id"], 0, live)
    fixed = bootstrap.flash_admin().reconcile(pid)
    assert fixed["action"] == "repaired" and fixed["remaining"] == 1 and remaining(pid) == 1


def test_with_mysql_down_sale_orders_are_still_accepted_and_others_get_503(sqs, flash_queue, test_env):
    sale_pid = on_sale(stock=5)
    plain = make_product(bootstrap.catalog(), stock=5)["id"]
    dead = f"mysql://root:@127.0.0.1:{closed_port()}/{test_env['DATABASE_URL'].rsplit('/', 1)[1]}"
    reset(DATABASE_URL=dead, DB_CONNECT_TIMEOUT=0.5)
    try:
        accepted = place(order("s", 1, (sale_pid, 2)))["results"][0]
        with pytest.raises(ServiceUnavailable) as refused:
            place(order("s2", 2, (sale_pid, 1)), order("p", 1, (plain, 1)))
    finally:
        reset()
    assert accepted["status"] == "pending"
    # The sale order of the refused batch was accepted all the same: the 503 names it, a retry replays it.
    assert refused.value.extra["details"] == {"committed_client_order_ids": ["s2"]}
    assert remaining(sale_pid) == 2
    consume(sqs, flash_queue)  # MySQL is back: both are written
    assert stock(sale_pid) == 2 and stock(plain) == 5
    reconcile(sale_pid, 5)


def test_a_confirm_redis_refuses_at_first_is_tried_again_so_the_lease_never_gives_queued_units_back(
        sqs, flash_queue, monkeypatch):
    """The message is on SQS once the send returns: if its confirm were left to
    the lease, the next admissions' sweep would give its units back and sell
    them twice (the consumer takes them again when it writes; a buyer already
    told "accepted" then gets INSUFFICIENT_STOCK)."""
    pid = on_sale(stock=5)
    gate = bootstrap.flash_gate()
    confirm, refusals = gate.confirm, []

    def refused_twice(handles):
        if len(refusals) < 2:
            refusals.append(handles)
            raise CacheUnavailable("connection pool exhausted")
        return confirm(handles)

    monkeypatch.setattr(gate, "confirm", refused_twice)
    assert place(order("c", 1, (pid, 2)))["results"][0]["status"] == "pending"
    assert len(refusals) == 2
    assert gate.sweep(now_ms=int(time.time() * 1000) + gate.lease_ms + 1) == 0
    assert remaining(pid) == 3
    consume(sqs, flash_queue)
    assert stock(pid) == 3 and remaining(pid) == 3
    reconcile(pid, 5)


def test_a_confirm_refused_past_the_breaker_window_is_tried_until_near_the_lease_end(sqs, flash_queue, monkeypatch):
    """Redis refuses for longer than a few quick tries (a failover, a busy pool):
    the confirm goes on until 80% of the lease, so the sweep never meets it."""
    reset(FLASH_LEASE_MS="1000")
    short_lease_sends(monkeypatch)
    monkeypatch.setattr(flash_sales, "CONFIRM_PAUSES", (0.05,))
    pid = on_sale(stock=5)
    gate = bootstrap.flash_gate()
    confirm, refusals, until = gate.confirm, [], time.time() + 0.5

    def refused_for_half_the_lease(handles):
        if time.time() < until:
            refusals.append(handles)
            raise CacheUnavailable("failing over")
        return confirm(handles)

    monkeypatch.setattr(gate, "confirm", refused_for_half_the_lease)
    assert place(order("c", 1, (pid, 2)))["results"][0]["status"] == "pending"
    assert len(refusals) > 5  # more tries than a fixed handful would have made
    assert gate.sweep(now_ms=int(time.time() * 1000) + gate.lease_ms + 1) == 0
    consume(sqs, flash_queue)
    assert stock(pid) == 3 and remaining(pid) == 3
    reconcile(pid, 5)


def test_a_confirm_refused_to_the_lease_end_is_counted_and_the_write_takes_the_units_again(
        sqs, flash_queue, monkeypatch):
    reset(FLASH_LEASE_MS="2000")
    short_lease_sends(monkeypatch)
    monkeypatch.setattr(flash_sales, "CONFIRM_PAUSES", (0.05,))
    pid = on_sale(stock=5)
    gate, service = bootstrap.flash_gate(), bootstrap.flash_sales()
    counted, tries = [], []
    monkeypatch.setattr(service, "emit", lambda name, value, **dims: counted.append((name, value)))

    def refused(handles):
        tries.append(time.time())
        raise CacheUnavailable("down")

    monkeypatch.setattr(gate, "confirm", refused)
    assert place(order("c", 1, (pid, 2)))["results"][0]["status"] == "pending"  # the message is on SQS
    lease_ends = bootstrap.state_gateway().call(
        lambda r: r.zscore(gate.gateway.key("flash:leases"), gate.reservation_key(owner_key("dev", 0, 1, "c"))))
    assert len(tries) > 5 and max(tries) * 1000 < lease_ends  # kept trying, and gave up before the lease ended
    assert ("FlashConfirmsFailed", 1) in counted
    assert gate.sweep(now_ms=int(lease_ends) + 1) == 1
    assert remaining(pid) == 5
    consume(sqs, flash_queue)
    assert stock(pid) == 3 and remaining(pid) == 3
    reconcile(pid, 5)


def test_a_replay_of_an_order_redis_admitted_but_nobody_handed_off_is_handed_off_by_the_replay(sqs, flash_queue):
    """The first request's caller gave up after Redis had admitted the order (or its
    process died before SQS): the replay must not answer "pending" for a reservation
    no message carries, which the lease would then give back."""
    pid = on_sale(stock=5)
    gate = bootstrap.flash_gate()
    request_hash = parse_order(order("a", 1, (pid, 2)), 0, "dev").request_hash
    first = gate.admit(owner_key("dev", 0, 1, "a"), customer_key("dev", 0, 1), request_hash, {pid: 2})
    assert first.outcome == "ACCEPTED"

    replay = place(order("a", 1, (pid, 2)))["results"][0]
    assert replay["status"] == "pending" and replay["reservation_id"] == first.rid and replay["duplicate"] is True
    assert gate.lookup(first.rid)["state"] == "queued"
    place(order("a", 1, (pid, 2)))  # a replay of a queued one sends nothing more
    assert len(consume(sqs, flash_queue)) == 1
    assert gate.sweep(now_ms=int(time.time() * 1000) + gate.lease_ms + 1) == 0
    assert bootstrap.flash_sales().reservation(first.rid)["status"] == "created"
    assert stock(pid) == 3 and remaining(pid) == 3
    reconcile(pid, 5)


def test_a_batch_is_admitted_in_one_round_trip_in_order(sqs, flash_queue, monkeypatch):
    """One call for the batch: its first reservation does not wait for the others'
    round trips before its hand-off; a customer's second order still sees the first."""
    pid = on_sale(stock=5, limit=3)
    gateway = bootstrap.state_gateway()
    calls, call = [], gateway.call
    monkeypatch.setattr(gateway, "call", lambda fn, key=None: calls.append(fn) or call(fn, key))
    results = place(order("a", 1, (pid, 2)), order("b", 1, (pid, 2)), order("c", 2, (pid, 3)),
                    order("d", 3, (pid, 1)))["results"]
    assert [r["status"] for r in results] == ["pending", "failed", "pending", "failed"]
    assert results[1]["error"]["code"] == "SALE_LIMIT_EXCEEDED"
    assert results[3]["error"]["code"] == "INSUFFICIENT_STOCK"
    assert len(calls) == 3  # which products are on sale, the admissions, the confirm
    consume(sqs, flash_queue)
    assert stock(pid) == 0 and remaining(pid) == 0
    reconcile(pid, 5)


def test_leases_an_admission_sweeps_are_counted(sqs, flash_queue, monkeypatch):
    """Each one is a hand-off that never confirmed: operators must see them."""
    pid = on_sale(stock=5)
    gate, service = bootstrap.flash_gate(), bootstrap.flash_sales()
    dead = gate.admit(owner_key("dev", 0, 1, "dead"), customer_key("dev", 0, 1), "ab" * 32, {pid: 2}, now_ms=1_000)
    assert dead.outcome == "ACCEPTED" and dead.swept == 0   # its process died before SQS
    counted = []
    monkeypatch.setattr(service, "emit", lambda name, value, **dims: counted.append((name, value)))
    assert place(order("b", 2, (pid, 1)))["results"][0]["status"] == "pending"
    assert ("FlashLeasesSwept", 1) in counted and remaining(pid) == 4
    consume(sqs, flash_queue)
    reconcile(pid, 5)


def test_the_consumer_locks_the_sale_row_only_for_its_closing_update(sqs, flash_queue, monkeypatch):
    """The consumer's concurrent environments overlap their batch writes: one held
    between its inserts and its stock update does not stop another's whole write."""
    pid = on_sale(stock=10)
    place(order("a", 1, (pid, 3)))
    first = receive(sqs, flash_queue)
    place(order("b", 2, (pid, 2)))
    second = receive(sqs, flash_queue)
    write, held, release = flash_writer.FlashWriter._write, threading.Event(), threading.Event()

    def held_before_its_update(self, tx, reservations, windows, lock=True):
        if threading.current_thread().name == "held":
            update = tx.update

            def later(*args, **kwargs):
                held.set()
                assert release.wait(60)
                return update(*args, **kwargs)
            tx.update = later
        return write(self, tx, reservations, windows, lock)

    monkeypatch.setattr(flash_writer.FlashWriter, "_write", held_before_its_update)
    outcomes = {}

    def handle(name, records):
        outcomes[name] = sqs_handlers.handle_flash_event({"Records": records})["batchItemFailures"]

    writer_held = threading.Thread(target=handle, args=("held", first), name="held")
    writer_held.start()
    try:
        assert held.wait(30)
        other = threading.Thread(target=handle, args=("other", second))
        other.start()
        other.join(20)  # with the row locked from the start, it would wait for the held one's commit
        assert not other.is_alive() and outcomes["other"] == [] and stock(pid) == 8
    finally:
        release.set()
        writer_held.join(30)
    assert outcomes["held"] == []
    assert stock(pid) == 5 and remaining(pid) == 5
    reconcile(pid, 10)


def test_stock_that_moved_after_the_consumer_read_it_is_decided_again_on_the_locked_row(
        sqs, flash_queue, monkeypatch):
    """The optimistic write read 10 units; before its guarded update, 7 are taken
    elsewhere. The guard falls short, and the batch is written again with the row
    locked: MySQL's 3 units decide, nothing is oversold."""
    pid = on_sale(stock=10)
    reply = place(*[order(f"o{i}", i + 1, (pid, 1)) for i in range(5)])
    records = receive(sqs, flash_queue)
    write, selects = flash_writer.FlashWriter._write, []

    def stock_taken_after_the_read(self, tx, reservations, windows, lock=True):
        select = tx.select

        def then_taken(*args, **kwargs):
            rows = select(*args, **kwargs)
            selects.append(kwargs.get("lock"))
            if len(selects) == 1:  # another connection commits while this transaction runs
                bootstrap.catalog().adjust_stock(pid, {"delta": -7})
            return rows
        tx.select = then_taken
        return write(self, tx, reservations, windows, lock)

    monkeypatch.setattr(flash_writer.FlashWriter, "_write", stock_taken_after_the_read)
    writer = bootstrap.flash_writer()
    counted = []
    monkeypatch.setattr(writer, "emit", lambda name, value, **dims: counted.append((name, value)))

    assert sqs_handlers.handle_flash_event({"Records": records}, writer=writer)["batchItemFailures"] == []

    assert selects[:2] == [False, True]
    assert ("FlashWritesLocked", 1) in counted
    states = [bootstrap.flash_sales().reservation(r["reservation_id"]) for r in reply["results"]]
    assert sum(s["status"] == "created" for s in states) == 3
    assert {s["error"]["code"] for s in states if s["status"] == "failed"} == {"INSUFFICIENT_STOCK"}
    assert stock(pid) == 0
    reconcile(pid, 3)


def test_concurrent_deliveries_of_the_same_batch_write_each_order_once(sqs, flash_queue):
    """SQS delivers at least once: the same messages in several environments at the
    same moment. Each optimistic write either finds the orders or meets their unique
    keys and writes again on the locked row; no order twice, no unit taken twice."""
    pid = on_sale(stock=200)
    place(*[order(f"o{i}", i + 1, (pid, 1)) for i in range(50)])
    place(*[order(f"p{i}", i + 1, (pid, 2)) for i in range(50)])
    records = receive(sqs, flash_queue)
    barrier, failures = threading.Barrier(4), []

    def deliver():
        barrier.wait()
        failures.extend(sqs_handlers.handle_flash_event({"Records": records})["batchItemFailures"])

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert failures == [] or sqs_handlers.handle_flash_event({"Records": records})["batchItemFailures"] == []
    assert stock(pid) == 50 and remaining(pid) == 50
    reconcile(pid, 200)


def test_a_hand_off_that_could_end_after_its_lease_gives_the_units_back_and_answers_503(
        sqs, flash_queue, monkeypatch):
    """A process stalled between the admission and the send: the sweep, or the rebuild of
    a sale Redis lost, may offer its units again before its message would arrive. It must
    not send, and its buyers must not be told "accepted"."""
    pid = on_sale(stock=5)
    gate, service = bootstrap.flash_gate(), bootstrap.flash_sales()
    lease = gate.lease_ms / 1000
    counted = []
    monkeypatch.setattr(service, "emit", lambda name, value, **dims: counted.append((name, value)))
    admit_many = gate.admit_many
    # Admitted as if the process then stalled until only call_seconds - 1 of the lease is left.
    monkeypatch.setattr(gate, "admit_many", lambda orders: admit_many(
        orders, now_ms=int((time.time() - lease + bootstrap.publisher().call_seconds - 1) * 1000)))

    with pytest.raises(ServiceUnavailable, match="waited too long"):
        place(order("a", 1, (pid, 2)), order("b", 2, (pid, 1)))

    assert ("FlashHandOffsTooLate", 2) in counted
    assert receive(sqs, flash_queue) == [] and remaining(pid) == 5 and gate.leases() == 0
    monkeypatch.setattr(gate, "admit_many", admit_many)
    assert [r["status"] for r in place(order("a", 1, (pid, 2)))["results"]] == ["pending"]  # a retry goes through
    consume(sqs, flash_queue)
    assert stock(pid) == 3 and remaining(pid) == 3
    reconcile(pid, 5)


def test_a_replay_hands_off_with_the_lease_of_its_first_admission(sqs, flash_queue, monkeypatch):
    """A replay that hands off a still-leased reservation counts the lease from the first
    admission, not from the replay: too close to its end, it answers 503 and sends nothing."""
    pid = on_sale(stock=5)
    gate = bootstrap.flash_gate()
    lease = gate.lease_ms / 1000
    request_hash = parse_order(order("a", 1, (pid, 2)), 0, "dev").request_hash
    stalled = int((time.time() - lease + bootstrap.publisher().call_seconds - 1) * 1000)
    first = gate.admit(owner_key("dev", 0, 1, "a"), customer_key("dev", 0, 1), request_hash, {pid: 2}, now_ms=stalled)
    assert first.outcome == "ACCEPTED"

    with pytest.raises(ServiceUnavailable, match="waited too long"):
        place(order("a", 1, (pid, 2)))

    assert receive(sqs, flash_queue) == []
    assert gate.lookup(first.rid)["state"] == "leased"  # not given back: its first request may have sent it
    assert gate.sweep(now_ms=stalled + gate.lease_ms + 1) == 1 and remaining(pid) == 5



def consumed_right_after_the_next_snapshot(sqs, flash_queue, monkeypatch):
    """The consumer commits and deletes what is queued just after reconcile's MySQL
    snapshot: the snapshot misses those orders, and the queue is empty by then."""
    service = bootstrap.flash_admin()
    snapshot, armed = service.records.snapshot, [True]

    def snapshot_then_consumed(*args, **kwargs):
        found = snapshot(*args, **kwargs)
        if armed:
            armed.clear()
            assert consume(sqs, flash_queue)
        return found

    monkeypatch.setattr(service.records, "snapshot", snapshot_then_consumed)
    return service


def test_reconcile_never_counts_orders_written_after_its_snapshot_as_units_to_offer(sqs, flash_queue, monkeypatch):
    pid = on_sale(stock=10)
    place(order("a", 1, (pid, 2)))
    service = consumed_right_after_the_next_snapshot(sqs, flash_queue, monkeypatch)

    report = service.reconcile(pid)

    assert report["action"] == "ok" and not report["queue_quiet"]  # the message was on its way at the check
    assert stock(pid) == 8 and remaining(pid) == 8  # not 10: the 2 written units are not offered again
    reconcile(pid, 10)


def test_a_rebuild_never_offers_again_what_was_written_after_its_snapshot(sqs, flash_queue, monkeypatch):
    """Redis lost the sale while a batch was on SQS; the consumer writes it just after the
    rebuild's snapshot. Rebuilding from that snapshot would offer the batch's units twice."""
    short_lease_sends(monkeypatch)
    redis_server = ThrowawayRedis().start()
    reset(REDIS_STATE_URL=redis_server.url)
    try:
        pid = on_sale(stock=10)
        place(order("a", 1, (pid, 3)))
        redis_server.kill()  # no persistence: it comes back empty
        redis_server.start()
        reset(REDIS_STATE_URL=redis_server.url, FLASH_LEASE_MS=300)
        assert bootstrap.flash_admin().reconcile(pid)["action"] == "waiting"   # finds the sale lost
        time.sleep(bootstrap.flash_gate().lease_ms / 1000)
        service = consumed_right_after_the_next_snapshot(sqs, flash_queue, monkeypatch)

        assert service.reconcile(pid)["action"] == "waiting"  # the batch was on its way at the check
        report = service.reconcile(pid)

        assert report["action"] == "rebuilt" and report["remaining"] == 7 and remaining(pid) == 7
        assert stock(pid) == 7
        reconcile(pid, 10)
    finally:
        reset()
        redis_server.close()

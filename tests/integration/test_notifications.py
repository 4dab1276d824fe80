"""stock.low and the notification consumer against the real MariaDB, Redis and
the local endpoint's SNS/SQS/SES (docs/api.md, "Notifications"): the
low-stock crossing written once in the crossing transaction (never for a
rolled-back one, once under concurrent orders), the relay publishing it, the
session's notification queue (subscribed with a filter policy) receiving the
events, one email per event read back from GET /_aws/ses (also under duplicate
and concurrent delivery), SES failures retried into the DLQ, MySQL down,
garbage messages."""
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import app as shop_app
from chalicelib import bootstrap
from chalicelib.adapters.mailer import SesMailer
from chalicelib.adapters.notification_log import MySQLNotificationLog
from chalicelib.adapters.inventory import STRATEGIES
from chalicelib.domain.orders import parse_batch
from chalicelib.entrypoints import sqs as sqs_handlers
from chalicelib.service import expiry_and_outbox
from chalicelib.service.notifications import EMAILS_IN_FLIGHT, Notifier
from scripts import localstack
from scripts.poller import Poller
from tests.conftest import make_product
from tests.integration.test_ingest import depth, mysql_down


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    return localstack.sqs_client(aws_endpoint.url)


def mailbox(aws_endpoint, to):
    """Emails the local SES sent to `to`, oldest first."""
    messages = requests.get(f"{aws_endpoint.url}/_aws/ses", timeout=10).json()["messages"]
    return [m for m in messages if to in m.get("Destination", {}).get("ToAddresses", [])]


def stock_low_events(product_id=None):
    where, args = ("AND product_id = %s", (product_id,)) if product_id else ("", ())
    return list(bootstrap.database().query(
        f"SELECT event_id, product_id, payload FROM order_events WHERE type = 'stock.low' {where} ORDER BY id", args))


def place(product_id, coid, qty=1, contact_email=None, strategy=None, customer_id=0):
    """A trusted server's order (contact_email in the body), or with `customer_id` a customer's
    (contact_email: the token's verified email)."""
    order = {"client_order_id": coid, "items": [{"product_id": product_id, "quantity": qty}]}
    if not customer_id:
        order["user_id"] = 1
        if contact_email:
            order["contact_email"] = contact_email
    batch = parse_batch({"orders": [order]}, "dev", customer_id, customer_email=contact_email)
    return bootstrap.orders(strategy).place_batch(batch)["results"][0]


def record(message_id, body, receives=1):
    return {"messageId": message_id, "receiptHandle": message_id, "body": body,
            "attributes": {"ApproximateReceiveCount": str(receives)}, "messageAttributes": {},
            "md5OfBody": "", "eventSource": "aws:sqs", "awsRegion": "us-east-1",
            "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:notifications"}


def deliver(*bodies):
    """Hand bodies to the consumer in one Lambda SQS event; the ids it reports failed."""
    event = {"Records": [record(f"m{i}", body) for i, body in enumerate(bodies)]}
    response = sqs_handlers.handle_notification_event(event)
    return {failure["itemIdentifier"] for failure in response["batchItemFailures"]}


def relay_and_drain(sqs, test_env):
    """Publish the outbox to the session's topic and hand whatever reached the session's
    notification queue to app.py's handler (as the poller does). The bodies it saw."""
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), bootstrap.event_publisher()) >= 0
    poller = Poller(sqs, test_env["NOTIFY_QUEUE_NAME"], shop_app.handle_notifications, wait_seconds=1)
    seen = []
    while True:
        messages = poller.receive()
        if not messages:
            return seen
        assert poller.invoke(messages) == set()
        poller.delete(messages)
        seen += [json.loads(m["Body"]) for m in messages]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stock_low_written_once_when_stock_crosses_the_threshold(clean_db, strategy):
    pid = make_product(bootstrap.catalog(), stock=10, low_stock_threshold=5)["id"]
    for coid, qty in (("a", 3), ("b", 2)):  # 10 -> 7 -> 5: not below yet
        assert place(pid, coid, qty, strategy=strategy)["status"] == "created"
    assert stock_low_events() == []
    assert place(pid, "c", 1, strategy=strategy)["status"] == "created"  # 5 -> 4: the crossing
    assert place(pid, "d", 1, strategy=strategy)["status"] == "created"  # 4 -> 3: stays below, no event
    [event] = stock_low_events()
    assert (event["product_id"], json.loads(event["payload"])) == (
        pid, {"product_id": pid, "stock": 4, "low_stock_threshold": 5})

    # Restocked above it and taken below again (by an admin stock write too): a new crossing each time.
    bootstrap.catalog().adjust_stock(pid, {"delta": 7})  # 3 -> 10
    bootstrap.catalog().adjust_stock(pid, {"delta": -6})  # 10 -> 4
    assert place(pid, "e", 1, strategy=strategy)["status"] == "created"
    assert [json.loads(e["payload"])["stock"] for e in stock_low_events()] == [4, 4]


def test_stock_low_not_written_by_a_rolled_back_order(clean_db):
    catalog = bootstrap.catalog()
    low, short = make_product(catalog, stock=5, low_stock_threshold=5)["id"], make_product(catalog, stock=1)["id"]
    result = bootstrap.orders().place_batch(parse_batch({"orders": [{"client_order_id": "x", "user_id": 1, "items": [
        {"product_id": low, "quantity": 1}, {"product_id": short, "quantity": 2}]}]}, "dev"))["results"][0]
    assert result["error"]["code"] == "INSUFFICIENT_STOCK"
    assert stock_low_events() == []
    # The threshold of 0 (the default) never alerts; a threshold set by PATCH counts from the next stock write.
    assert place(short, "y")["status"] == "created"
    catalog.update(low, {"low_stock_threshold": 10})
    assert stock_low_events() == []
    assert place(low, "z")["status"] == "created"
    assert stock_low_events() == []  # 5 -> 4 was already below 10: no crossing


def test_stock_low_once_under_concurrent_orders(clean_db):
    pid = make_product(bootstrap.catalog(), stock=60, low_stock_threshold=25)["id"]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: place(pid, f"c{i}"), range(60)))
    assert all(r["status"] == "created" for r in results)
    [event] = stock_low_events(pid)
    assert json.loads(event["payload"])["stock"] == 24


def test_each_event_type_mails_once_and_stock_low_mails_the_operator(clean_db, sqs, test_env, aws_endpoint):
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="1")
    try:
        to = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
        pid = make_product(bootstrap.catalog(), stock=3, low_stock_threshold=2, name="Lamp")["id"]
        paid = place(pid, "n-paid", contact_email=to)["order_id"]
        cancelled = place(pid, "n-cancel", contact_email=to)["order_id"]  # 2 -> 1: stock.low
        expired = place(pid, "n-expire", contact_email=to)["order_id"]
        bootstrap.orders().pay(paid, "pay-1")
        bootstrap.orders().cancel(cancelled)
        bootstrap.database().run(lambda cur: cur.execute(
            "UPDATE orders SET expires_at = CURRENT_TIMESTAMP(6) WHERE id = %s", (expired,)))
        assert bootstrap.orders().expire(expired)
        ours = {paid, cancelled, expired}
        # Other tests' relays publish to the session topic too: only this test's events count.
        seen = [e for e in relay_and_drain(sqs, test_env) if e["order_id"] in ours or e.get("product_id") == pid]
    finally:
        bootstrap.reset()
    assert sorted(e["type"] for e in seen) == sorted(
        ["order.created"] * 3 + ["order.paid", "order.cancelled", "order.expired", "stock.low"])
    mails = mailbox(aws_endpoint, to)
    assert sorted(m["Subject"] for m in mails) == sorted([
        f"Your order #{paid} is placed", f"Your order #{cancelled} is placed", f"Your order #{expired} is placed",
        f"Your order #{paid} is paid", f"Your order #{cancelled} is cancelled", f"Your order #{expired} expired"])
    # The shop's words, the order id, the items by their catalog name and totals; no client_order_id.
    for mail in mails:
        text = mail["Body"]["text_part"]
        assert f"1 x Lamp (product {pid}) at 10.00" in text
        assert "n-" not in mail["Subject"] + text
    [alert] = mailbox(aws_endpoint, test_env["OPERATOR_EMAIL"])[-1:]
    assert alert["Subject"] == f"Low stock: product {pid}" and "Lamp" in alert["Body"]["text_part"]
    assert alert["Source"] == test_env["NOTIFY_FROM_EMAIL"]

    # Redelivered, one at a time and two at once: nothing is sent again.
    bodies = [json.dumps(e) for e in seen]
    assert deliver(*bodies) == set()
    with ThreadPoolExecutor(4) as pool:
        assert all(f == set() for f in pool.map(lambda b: deliver(b), bodies * 2))
    assert len(mailbox(aws_endpoint, to)) == 6


def test_customer_orders_mail_the_tokens_verified_email_and_no_one_else(clean_db, aws_endpoint):
    email = f"cust-{uuid.uuid4().hex[:8]}@example.com"
    customer_id = bootstrap.customer_directory().id_for(bootstrap.settings().token_issuer, str(uuid.uuid4()))
    unverified_id = bootstrap.customer_directory().id_for(bootstrap.settings().token_issuer, str(uuid.uuid4()))
    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    order_id = place(pid, "tok-1", customer_id=customer_id, contact_email=email)["order_id"]
    # A customer whose token's email the pool did not verify, and a trusted server's order without contact.
    unverified = place(pid, "tok-2", customer_id=unverified_id)["order_id"]
    nobody = place(pid, "nobody")["order_id"]
    ours = (order_id, unverified, nobody)
    events = {row["order_id"]: row for row in bootstrap.database().query(
        "SELECT event_id, order_id, type, payload FROM order_events WHERE order_id IN (%s, %s, %s)", ours)}
    bodies = [json.dumps({"event_id": e["event_id"], "type": e["type"], "order_id": e["order_id"], "sequence": 1,
                          "occurred_at": "", "data": json.loads(e["payload"])}) for e in events.values()]
    assert deliver(*bodies) == set()
    assert [m["Subject"] for m in mailbox(aws_endpoint, email)] == [f"Your order #{order_id} is placed"]
    recorded = {r["event_id"]: r["recipient"] for r in bootstrap.database().query(
        "SELECT event_id, recipient FROM notifications_sent")}
    assert recorded == {events[order_id]["event_id"]: email, events[unverified]["event_id"]: None,
                        events[nobody]["event_id"]: None}


def _created_event(order_id):
    row = bootstrap.database().query("SELECT event_id, payload FROM order_events WHERE order_id = %s", (order_id,))[0]
    return json.dumps({"event_id": row["event_id"], "type": "order.created", "order_id": order_id, "sequence": 1,
                       "occurred_at": "", "data": json.loads(row["payload"])})


def test_ses_refusing_retries_into_the_dlq_and_orders_go_on(clean_db, sqs, fast_queue, test_env, aws_endpoint):
    spec, url, dlq_url = fast_queue
    to = f"dlq-{uuid.uuid4().hex[:8]}@example.com"
    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    body = _created_event(place(pid, "ses-down", contact_email=to)["order_id"])
    sqs.send_message(QueueUrl=url, MessageBody=body)
    # SES refuses every send (the sender is not a verified identity): a real SES failure.
    refused = Notifier(MySQLNotificationLog(bootstrap.database()), SesMailer(test_env["AWS_ENDPOINT_URL"], "us-east-1", "nobody@example.org"))
    poller = Poller(sqs, spec.name, lambda event, context: sqs_handlers.handle_notification_event(
        event, context, notifier=refused), wait_seconds=1)
    attempts = 0
    for _ in range(60):
        result = poller.poll_once()
        if result.received:
            attempts += 1
            assert len(result.failed) == 1
        elif depth(sqs, dlq_url):
            break
    assert attempts == spec.max_receive_count and depth(sqs, dlq_url) == 1 and depth(sqs, url) == 0
    assert mailbox(aws_endpoint, to) == []
    assert not bootstrap.database().query("SELECT * FROM notifications_sent")  # nothing recorded half-way
    assert place(pid, "after")["status"] == "created"  # orders never wait for mail

    # Redriven once SES works: sent once.
    [dead] = sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=1)["Messages"]
    assert deliver(dead["Body"]) == set() and len(mailbox(aws_endpoint, to)) == 1


def test_mysql_down_sends_nothing_and_records_nothing(clean_db, test_env, aws_endpoint):
    to = f"down-{uuid.uuid4().hex[:8]}@example.com"
    body = _created_event(place(make_product(bootstrap.catalog(), stock=5)["id"], "db-down", contact_email=to)["order_id"])
    with mysql_down(test_env):
        assert deliver(body) == {"m0"}
    assert mailbox(aws_endpoint, to) == [] and not bootstrap.database().query("SELECT * FROM notifications_sent")
    assert deliver(body) == set() and len(mailbox(aws_endpoint, to)) == 1


GARBAGE = ["", "{not json", "[]", "null", "42", json.dumps({"type": "order.created"}),
           json.dumps({"event_id": "x", "type": "order.created", "order_id": 1, "data": {}}),
           json.dumps({"event_id": str(uuid.uuid4()), "type": "order.created", "order_id": "1", "data": {}}),
           json.dumps({"event_id": str(uuid.uuid4()), "type": "order.paid", "order_id": 0, "data": {}}),
           json.dumps({"event_id": str(uuid.uuid4()), "type": "order.paid", "order_id": True, "data": {}}),
           json.dumps({"event_id": str(uuid.uuid4()), "type": "order.paid", "order_id": 1, "data": []}),
           json.dumps({"event_id": str(uuid.uuid4()), "type": "stock.low", "product_id": 1, "data": {"stock": -1}}),
           json.dumps({"event_id": str(uuid.uuid4()), "type": "x" * 33, "order_id": 1, "data": {}}),
           "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "x" * 200_000]


def test_garbage_messages_are_reported_and_kept_for_the_dlq(clean_db, aws_endpoint):
    to = f"ok-{uuid.uuid4().hex[:8]}@example.com"
    good = _created_event(place(make_product(bootstrap.catalog(), stock=5)["id"], "good", contact_email=to)["order_id"])
    # The bad records are reported failed (SQS keeps them, then the DLQ); the good one in the same batch is sent.
    for start in range(0, len(GARBAGE), 9):
        chunk = GARBAGE[start:start + 9]
        assert deliver(*chunk, good) == {f"m{i}" for i in range(len(chunk))}
    assert len(mailbox(aws_endpoint, to)) == 1
    # An event of a type it does not mail (order.fulfilled) is done, not failed.
    assert deliver(json.dumps({"event_id": str(uuid.uuid4()), "type": "order.fulfilled", "order_id": 1,
                               "data": {}})) == set()


def test_unsubscribed_types_never_reach_the_queue(clean_db, sqs, test_env):
    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    order_id = place(pid, "ful")["order_id"]
    bootstrap.orders().fulfil(order_id)
    seen = [e for e in relay_and_drain(sqs, test_env) if e["order_id"] == order_id]
    assert [e["type"] for e in seen] == ["order.created"]  # the filter policy keeps order.fulfilled away


def test_concurrent_duplicates_send_one_email(clean_db, aws_endpoint):
    to = f"dup-{uuid.uuid4().hex[:8]}@example.com"
    body = _created_event(place(make_product(bootstrap.catalog(), stock=5)["id"], "dup", contact_email=to)["order_id"])
    start = threading.Barrier(6)

    def one(_):
        start.wait()
        return deliver(body)

    with ThreadPoolExecutor(6) as pool:
        assert all(f == set() for f in pool.map(one, range(6)))
    assert len(mailbox(aws_endpoint, to)) == 1


class MeetingMailer:
    """The local SES behind a meeting point: each send waits (at most 10 s) until `together` sends
    are in flight, so a consumer that sends one after another fails them all."""

    def __init__(self, mailer, together):
        self.mailer, self.meeting = mailer, threading.Barrier(together, timeout=10)

    def send(self, to, subject, text):
        self.meeting.wait()
        return self.mailer.send(to, subject, text)


def test_an_invocations_emails_are_sent_together_each_once(clean_db, test_env, aws_endpoint):
    product = make_product(bootstrap.catalog(), stock=50)
    to = f"together-{uuid.uuid4().hex[:8]}@example.com"
    bodies = [_created_event(place(product["id"], f"t{i}", contact_email=to)["order_id"])
              for i in range(EMAILS_IN_FLIGHT)]
    mailer = MeetingMailer(SesMailer(test_env["AWS_ENDPOINT_URL"], "us-east-1", test_env.get("NOTIFY_FROM_EMAIL")),
                           EMAILS_IN_FLIGHT)
    notifier = Notifier(MySQLNotificationLog(bootstrap.database()), mailer)
    event = {"Records": [record(f"m{i}", body) for i, body in enumerate(bodies)]}
    assert sqs_handlers.handle_notification_event(event, notifier=notifier) == {"batchItemFailures": []}
    assert len(mailbox(aws_endpoint, to)) == len(bodies)
    # Delivered again, twice in one invocation this time: nothing more is sent.
    twice = {"Records": [record(f"again{i}", body) for i, body in enumerate(bodies + bodies)]}
    assert sqs_handlers.handle_notification_event(twice) == {"batchItemFailures": []}
    assert len(mailbox(aws_endpoint, to)) == len(bodies)


def test_two_deliveries_of_one_event_in_one_invocation_send_one_email(clean_db, aws_endpoint):
    to = f"pair-{uuid.uuid4().hex[:8]}@example.com"
    body = _created_event(place(make_product(bootstrap.catalog(), stock=5)["id"], "pair", contact_email=to)["order_id"])
    assert deliver(body, body, body) == set()
    assert len(mailbox(aws_endpoint, to)) == 1


class RefusingMailer:
    """The local SES, except that it refuses to mail `refused`."""

    def __init__(self, mailer, refused):
        self.mailer, self.refused = mailer, refused

    def send(self, to, subject, text):
        if to == self.refused:
            raise RuntimeError("SES refused the message")
        return self.mailer.send(to, subject, text)


def test_a_refused_email_fails_its_record_alone_and_records_nothing_for_it(clean_db, test_env, aws_endpoint):
    product = make_product(bootstrap.catalog(), stock=50)
    tag = uuid.uuid4().hex[:8]
    addresses = [f"r{i}-{tag}@example.com" for i in range(3)]
    bodies = [_created_event(place(product["id"], f"r{i}", contact_email=to)["order_id"])
              for i, to in enumerate(addresses)]
    ses = SesMailer(test_env["AWS_ENDPOINT_URL"], "us-east-1", test_env.get("NOTIFY_FROM_EMAIL"))
    refusing = Notifier(MySQLNotificationLog(bootstrap.database()), RefusingMailer(ses, addresses[1]))
    event = {"Records": [record(f"m{i}", body) for i, body in enumerate(bodies)]}
    assert sqs_handlers.handle_notification_event(event, notifier=refusing) == {
        "batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert [len(mailbox(aws_endpoint, to)) for to in addresses] == [1, 0, 1]
    assert deliver(*bodies) == set()   # SQS redelivers the whole batch: only the refused one is sent
    assert [len(mailbox(aws_endpoint, to)) for to in addresses] == [1, 1, 1]

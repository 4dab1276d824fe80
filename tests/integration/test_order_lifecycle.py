"""Order lifecycle against the real MariaDB, Redis and the local endpoint's
SNS/SQS (docs/api.md, "Order lifecycle"): transitions and their 409s, expiry
that returns stock exactly once racing payments and cancels, the outbox in the
same transaction, and the relay publishing at least once, in order per order."""
import json
import threading
import time
import uuid

import boto3
import pytest

from chalicelib import bootstrap
from chalicelib.adapters.queues import EventPublisher
from chalicelib.domain.errors import (
    AlreadyPaid,
    OrderExpired,
    OrderFulfilled,
    OrderNotPaid,
    PaymentReferenceUsed,
)
from chalicelib.domain.orders import parse_batch
from chalicelib.service import expiry_and_outbox
from tests.conftest import make_product


def _stock(product_id):
    return bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (product_id,))[0]["stock"]


def _events(order_id=None):
    where, args = ("WHERE order_id = %s", (order_id,)) if order_id else ("", ())
    return bootstrap.database().query(f"SELECT order_id, sequence, type, published_at FROM order_events {where} "
                                      "ORDER BY id", args)


@pytest.fixture
def window(clean_db):
    """Orders wait 1 s for payment."""
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="1")
    yield
    bootstrap.reset()


def place(product_id, coid, qty=1, user_id=1):
    result = bootstrap.orders().place_batch(parse_batch({"orders": [
        {"client_order_id": coid, "user_id": user_id, "items": [{"product_id": product_id, "quantity": qty}]}]},
        "dev"))["results"][0]
    assert result["status"] == "created", result
    return result["order_id"]


def test_payment_fulfilment_and_the_409s(window):
    orders = bootstrap.orders()
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    first, second = place(pid, "a"), place(pid, "b")
    pending = orders.get(first)
    assert pending["lifecycle"] == "pending_payment" and pending["expires_at"] and pending["status"] == "created"
    with pytest.raises(OrderNotPaid):
        orders.fulfil(first)
    assert orders.pay(first, "pay-1")["lifecycle"] == "paid"
    assert orders.pay(first, "pay-1")["payment_reference"] == "pay-1"  # the webhook again: same answer
    with pytest.raises(AlreadyPaid):
        orders.pay(first, "pay-2")
    with pytest.raises(PaymentReferenceUsed):
        orders.pay(second, "pay-1")
    assert orders.get(second)["lifecycle"] == "pending_payment"  # the refused payment changed nothing
    assert orders.fulfil(first)["lifecycle"] == "fulfilled"
    with pytest.raises(OrderFulfilled):
        orders.cancel(first)
    assert [e["type"] for e in orders.events(first)] == ["order.created", "order.paid", "order.fulfilled"]
    assert [e["sequence"] for e in orders.events(first)] == [1, 2, 3]


def test_an_expired_order_gives_its_stock_back_once_and_cannot_be_paid(window):
    orders = bootstrap.orders()
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    order_id = place(pid, "late", qty=4)
    assert _stock(pid) == 6
    time.sleep(1.2)
    assert expiry_and_outbox.expire_due(orders, bootstrap.outbox()) == 1
    assert expiry_and_outbox.expire_due(orders, bootstrap.outbox()) == 0
    assert _stock(pid) == 10
    assert orders.get(order_id)["lifecycle"] == "expired" and orders.get(order_id)["status"] == "cancelled"
    with pytest.raises(OrderExpired):
        orders.pay(order_id, "too-late")
    assert orders.cancel(order_id)["lifecycle"] == "expired"  # already closed: answered as it is
    assert _stock(pid) == 10
    assert [e["type"] for e in orders.events(order_id)] == ["order.created", "order.expired"]


def test_orders_not_due_yet_are_left_alone(window):
    pid = make_product(bootstrap.catalog(), stock=3)["id"]
    order_id = place(pid, "early")
    assert not bootstrap.orders().expire(order_id)
    assert bootstrap.orders().get(order_id)["lifecycle"] == "pending_payment"


def test_a_rolled_back_order_leaves_no_event(clean_db):
    pid = make_product(bootstrap.catalog(), stock=1)["id"]
    before = len(_events())
    failed = bootstrap.orders().place_batch(parse_batch({"orders": [
        {"client_order_id": "too-many", "user_id": 1, "items": [{"product_id": pid, "quantity": 5}]}]}, "dev"))
    assert failed["results"][0]["status"] == "failed"
    assert len(_events()) == before


# ------------------------------------------------------------------ the relay
@pytest.fixture
def subscriber(test_env):
    """The order-events topic with an SQS queue subscribed, on the local endpoint."""
    kwargs = dict(endpoint_url=test_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
    sns, sqs = boto3.client("sns", **kwargs), boto3.client("sqs", **kwargs)
    queue_url = sqs.create_queue(QueueName=f"events-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    subscription = sns.subscribe(TopicArn=test_env["ORDER_EVENTS_TOPIC_ARN"], Protocol="sqs", Endpoint=queue_arn,
                                 Attributes={"RawMessageDelivery": "true"})["SubscriptionArn"]

    def received():
        bodies = []
        while True:
            batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages")
            if not batch:
                return bodies
            bodies += [json.loads(m["Body"]) for m in batch]
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])

    yield received
    # First the subscription: the local endpoint's SNS fails every later publish to a deleted queue.
    sns.unsubscribe(SubscriptionArn=subscription)
    sqs.delete_queue(QueueUrl=queue_url)


class CrashAfterFirstBatch:
    """Publishes for real, then dies (as a relay killed after SNS accepted, before the stamp)."""

    def __init__(self, publisher):
        self.publisher = publisher

    def publish_batch(self, events):
        self.publisher.publish_batch(events)
        raise SystemExit("relay killed")


def test_the_relay_publishes_every_event_at_least_once_in_order_per_order(window, subscriber, test_env):
    orders = bootstrap.orders()
    pid = make_product(bootstrap.catalog(), stock=50)["id"]
    ids = [place(pid, f"e-{i}") for i in range(4)]
    orders.pay(ids[0], "p-0")
    orders.cancel(ids[1])
    orders.pay(ids[2], "p-2")
    orders.fulfil(ids[2])
    real = EventPublisher(test_env["AWS_ENDPOINT_URL"], "us-east-1", test_env["ORDER_EVENTS_TOPIC_ARN"])
    with pytest.raises(SystemExit):
        expiry_and_outbox.publish_pending(bootstrap.outbox(), CrashAfterFirstBatch(real))
    assert all(e["published_at"] is None for e in _events())  # the crash left no stamp: they go again
    # 4 created, 2 paid, 1 cancelled, 1 fulfilled
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), real) == 8
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), real) == 0
    got = subscriber()
    assert len(got) > 8  # some twice: at least once
    unique = {e["event_id"]: e for e in got}
    assert len(unique) == 8 and {e["event_id"] for e in got} == set(unique)
    for order_id in ids:
        sequences = [e["sequence"] for e in got if e["order_id"] == order_id]
        deduped = list(dict.fromkeys(sequences))
        assert deduped == sorted(deduped) and deduped == list(range(1, len(deduped) + 1))
    assert [unique[e]["type"] for e in unique if unique[e]["order_id"] == ids[2]] == \
        ["order.created", "order.paid", "order.fulfilled"]


def test_an_event_sns_refused_holds_back_the_rest_of_its_order_only(window):
    """SNS may refuse single entries of a PublishBatch: the refused event and the
    later ones of its order wait for the next call; other orders go on."""
    orders = bootstrap.orders()
    pid = make_product(bootstrap.catalog(), stock=50)["id"]
    held, other = place(pid, "h-1"), place(pid, "h-2")
    assert held % expiry_and_outbox.RELAY_LANES != other % expiry_and_outbox.RELAY_LANES
    for order_id in (held, other):
        orders.pay(order_id, f"pay-{order_id}")
        orders.fulfil(order_id)
    calls = []

    class RefusesHeldPayment:
        def publish_batch(self, events):
            calls.append([(e["order_id"], e["type"]) for e in events])
            refused = [i for i, e in enumerate(events) if (e["order_id"], e["type"]) == (held, "order.paid")]
            return refused[0] if refused else len(events)

    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), RefusesHeldPayment()) == 4
    stamped = {(e["order_id"], e["type"]): e["published_at"] is not None for e in _events()}
    assert stamped == {(held, "order.created"): True, (held, "order.paid"): False, (held, "order.fulfilled"): False,
                       (other, "order.created"): True, (other, "order.paid"): True, (other, "order.fulfilled"): True}
    assert sorted(map(len, calls)) == [3, 3]  # one call per lane, each lane in sequence order


def orders_in_one_lane(pid, count):
    """`count` orders whose events share one relay lane, each paid (two events each)."""
    ids = []
    while len(ids) < count:
        order_id = place(pid, f"lane-{uuid.uuid4().hex[:8]}")
        bootstrap.orders().pay(order_id, f"pay-{order_id}")
        if not ids or order_id % expiry_and_outbox.RELAY_LANES == ids[0] % expiry_and_outbox.RELAY_LANES:
            ids.append(order_id)
    return ids


class RefusesOrder:
    """SNS refusing every event of one order (a poison event), as a failed entry or by raising."""

    def __init__(self, order_id, raises=False):
        self.order_id, self.raises, self.calls = order_id, raises, []

    def publish_batch(self, events):
        self.calls.append(len(events))
        bad = [i for i, e in enumerate(events) if e["order_id"] == self.order_id]
        if bad and self.raises:
            raise ValueError("an entry the SDK cannot serialise")
        return bad[0] if bad else len(events)


@pytest.mark.parametrize("raises", [False, True], ids=["refused-entry", "call-raises"])
def test_an_event_sns_keeps_refusing_holds_its_own_order_not_its_lane(window, raises, monkeypatch):
    """A poison event: the later events of its order wait behind it, the other orders
    of its lane go out. With the lane stopped at it, the lane's events would pile up
    until the relay's window of the oldest events held nothing else."""
    pid = make_product(bootstrap.catalog(), stock=50)["id"]
    poisoned, *others = orders_in_one_lane(pid, 5)
    publisher = RefusesOrder(poisoned, raises)
    counted = []
    monkeypatch.setattr(expiry_and_outbox, "emit", lambda name, value, **dims: counted.append((name, value)))

    rounds = [expiry_and_outbox.publish_pending(bootstrap.outbox(), publisher, limit=4) for _ in range(len(_events()))]

    assert sum(rounds) == len(_events()) - 2 and rounds[-1] == 0
    assert all(e["published_at"] is not None for o in others for e in _events(o))
    assert [e["published_at"] for e in _events(poisoned)] == [None, None]
    assert counted == [("OrderEventsRefused", 1)] * len(rounds)  # every call, the one order held back
    orders = bootstrap.orders()
    orders.fulfil(others[0])  # a new event of the same lane still goes out
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), publisher, limit=4) == 1


@pytest.mark.parametrize("raises", [False, True], ids=["refused-entries", "calls-raise"])
def test_sns_refusing_every_event_costs_a_lane_a_few_calls_not_one_per_order(window, raises):
    """Throttling, a KMS key SNS cannot use: every event fails alike. Holding back one
    order per call would make a call per order every pass; the lane stops instead."""
    pid = make_product(bootstrap.catalog(), stock=50)["id"]
    ids = orders_in_one_lane(pid, 6)

    lanes = []

    class RefusesAll:
        def publish_batch(self, events):
            lanes.append(events[0]["order_id"] % expiry_and_outbox.RELAY_LANES)
            if raises:
                raise RuntimeError("KMS.DisabledException")
            return 0

    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), RefusesAll()) == 0
    # The lane of the 6 orders: one call, then at most two alone; not a call per order.
    assert 1 <= lanes.count(ids[0] % expiry_and_outbox.RELAY_LANES) <= 3
    assert all(e["published_at"] is None for o in ids for e in _events(o))


def test_the_lifecycle_function_reports_how_long_the_oldest_event_has_waited(window, monkeypatch):
    """What the outbox-stalled alarm watches: SNS refusing an event shows as its age."""
    from chalicelib.entrypoints import expiry_and_outbox as function

    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    stuck = place(pid, "stuck-1")
    counted = []
    monkeypatch.setattr(function, "emit", lambda name, value, **dims: counted.append((name, value)))
    monkeypatch.setattr(bootstrap, "event_publisher", lambda: RefusesOrder(stuck))
    time.sleep(0.3)

    report = function.handle_lifecycle({}, None)

    assert report["published"] == 0 and report["outbox_oldest_seconds"] >= 0.3
    reported = [value for name, value in counted if name == "OutboxOldestSeconds"]
    assert reported == [pytest.approx(report["outbox_oldest_seconds"], abs=0.05)]
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), PublishesAll()) == 1
    assert expiry_and_outbox.oldest_unpublished_seconds(bootstrap.outbox()) == 0


class PublishesAll:
    def publish_batch(self, events):
        return len(events)


def test_events_wait_in_the_outbox_while_sns_is_down(window, test_env):
    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    place(pid, "w-1")
    down = EventPublisher("http://127.0.0.1:9", "us-east-1", test_env["ORDER_EVENTS_TOPIC_ARN"])  # nothing listens
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), down) == 0
    assert [e["published_at"] for e in _events()] == [None]


def test_the_relay_holds_no_lock_that_makes_new_orders_wait_for_sns(window, test_env):
    """While the relay waits on SNS, the order path still writes its outbox rows:
    a session that waits at most 1 s for a lock inserts one from inside publish()."""
    import pymysql

    from chalicelib.settings import parse_database_url

    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    place(pid, "n-1")
    target = parse_database_url(test_env["DATABASE_URL"])
    inserted = []

    class SlowSns:
        def publish_batch(self, events):
            conn = pymysql.connect(host=target.host, port=target.port, user=target.user, password=target.password,
                                   database=target.database, autocommit=True)
            try:
                with conn.cursor() as cur:
                    cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
                    cur.execute("INSERT INTO order_events (event_id, order_id, sequence, type, payload) "
                                "VALUES (%s, 999999, 1, 'order.created', '{}')", (str(uuid.uuid4()),))
                    inserted.append(cur.lastrowid)
            finally:
                conn.close()
            return len(events)

    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), SlowSns()) == 1
    assert inserted  # a lock wait timeout (1205) would have raised instead


# ------------------------------------------------------------------ expiry timers
@pytest.fixture
def expiry_queue(test_env):
    """A private expiry queue on the local endpoint (what EXPIRY_QUEUE_NAME names)."""
    sqs = boto3.client("sqs", endpoint_url=test_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    name = f"{test_env['EXPIRY_QUEUE_NAME']}-{uuid.uuid4().hex[:8]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    yield sqs, name, url
    sqs.delete_queue(QueueUrl=url)
    bootstrap.reset()


def _queue_counts(sqs, url):
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesDelayed"])


def test_timers_expire_orders_on_time_without_the_sweep(clean_db, expiry_queue, test_env):
    """The relay starts a timer per pending order; the expiry consumer (as the
    poller runs it) expires each when it fires. No sweep runs, so only the timers
    can have done it; none fires before `expires_at`, and stock comes back once."""
    from chalicelib.entrypoints.expiry_and_outbox import handle_expiry_event
    from scripts.poller import Poller

    sqs, name, url = expiry_queue
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="5", EXPIRY_QUEUE_NAME=name)
    pids = [make_product(bootstrap.catalog(), stock=100)["id"] for _ in range(3)]
    ids = [place(pids[i % 3], f"t-{i}", qty=1 + i % 2, user_id=1 + i % 5) for i in range(60)]
    bootstrap.orders().pay(ids[0], "paid-in-time")  # paid before the relay ran: it needs no timer
    real = EventPublisher(test_env["AWS_ENDPOINT_URL"], "us-east-1", test_env["ORDER_EVENTS_TOPIC_ARN"])
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), real, timers=bootstrap.expiry_timers()) == 61
    visible, delayed = _queue_counts(sqs, url)
    # One timer per pending order; hidden until due (unless placing them took longer than the window).
    assert visible + delayed == 59 and delayed > 0

    poller = Poller(sqs, name, handle_expiry_event, wait_seconds=1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum(_queue_counts(sqs, url)):
        poller.poll_once()
    rows = bootstrap.database().query(
        "SELECT o.id, o.lifecycle, TIMESTAMPDIFF(MICROSECOND, o.expires_at, e.created_at) AS late_us "
        "FROM orders o LEFT JOIN order_events e ON e.order_id = o.id AND e.type = 'order.expired'")
    assert {r["id"]: r["lifecycle"] for r in rows} == {i: "paid" if i == ids[0] else "expired" for i in ids}
    assert all(r["late_us"] >= 0 for r in rows if r["id"] != ids[0])  # never before the window closed
    paid_qty = 1  # ids[0] is t-0: one unit of pids[0]
    assert [_stock(pid) for pid in pids] == [100 - paid_qty, 100, 100]
    assert sum(_queue_counts(sqs, url)) == 0


def test_a_window_longer_than_sqs_delays_is_waited_out_in_steps(clean_db, expiry_queue):
    from chalicelib.service.expiry_and_outbox import SQS_MAX_DELAY_SECONDS, fire_expiry_timer

    sqs, name, url = expiry_queue
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="3600", EXPIRY_QUEUE_NAME=name)
    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    order_id = place(pid, "long")
    timers = bootstrap.expiry_timers()
    # The timer fired after SQS's longest delay: the order is not due; a new timer waits again.
    assert fire_expiry_timer(bootstrap.orders(), bootstrap.outbox(), timers, order_id) == "waiting"
    assert _queue_counts(sqs, url) == (0, 1)
    assert bootstrap.orders().get(order_id)["lifecycle"] == "pending_payment" and _stock(pid) == 4
    assert SQS_MAX_DELAY_SECONDS == 900  # the most SQS allows; a longer DelaySeconds is refused
    bootstrap.orders().cancel(order_id)
    assert fire_expiry_timer(bootstrap.orders(), bootstrap.outbox(), timers, order_id) == "closed"
    assert _queue_counts(sqs, url) == (0, 1) and _stock(pid) == 5  # nothing restarted, stock back once


def test_garbage_timers_are_dropped_and_real_ones_still_act(window, expiry_queue):
    from chalicelib.entrypoints.expiry_and_outbox import handle_expiry_event
    from scripts.poller import sqs_event

    _, name, _ = expiry_queue
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="1", EXPIRY_QUEUE_NAME=name)
    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    order_id = place(pid, "g-1", qty=2)
    time.sleep(1.1)
    bodies = ["", "not json", "[]", "null", '{"order_id": "1"}', '{"order_id": true}', '{"order_id": -4}',
              '{"order_id": 1.5}', '{"id": 1}', '{"order_id": 99999999}', json.dumps({"order_id": order_id})]
    messages = [{"MessageId": f"m-{i}", "ReceiptHandle": f"r-{i}", "Body": body, "Attributes": {},
                 "MD5OfBody": "", "MessageAttributes": {}} for i, body in enumerate(bodies)]
    result = handle_expiry_event(sqs_event(messages, "arn:aws:sqs:us-east-1:000000000000:x", "us-east-1"))
    assert result == {"batchItemFailures": []}  # nothing to retry: garbage is dropped, the unknown order is closed
    assert bootstrap.orders().get(order_id)["lifecycle"] == "expired" and _stock(pid) == 5


def test_the_relay_publishes_when_timers_cannot_be_sent(window, test_env):
    """SQS down: the events still go out and are stamped; the sweep is the backstop."""
    from chalicelib.adapters.queues import QueuePublisher
    from chalicelib.service.expiry_and_outbox import ExpiryTimers

    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    place(pid, "nt-1")
    real = EventPublisher(test_env["AWS_ENDPOINT_URL"], "us-east-1", test_env["ORDER_EVENTS_TOPIC_ARN"])
    down = ExpiryTimers(QueuePublisher("http://127.0.0.1:9", "us-east-1"), "nowhere")
    assert expiry_and_outbox.publish_pending(bootstrap.outbox(), real, timers=down) == 1
    assert [e["published_at"] is not None for e in _events()] == [True]


@pytest.mark.slow
def test_thousands_of_orders_paid_cancelled_expired_by_timers_and_sweeps_reconcile(clean_db, expiry_queue):
    """1,500 pending orders over five products. Payers reach them around the
    moment their windows close, a canceller takes a third from the start, and
    timers and sweeps expire them concurrently. Every order ends in exactly one
    closing state with one closing event; each product's stock is its initial
    stock minus what the paid orders hold."""
    from chalicelib.service.expiry_and_outbox import fire_expiry_timer

    _, name, _ = expiry_queue
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="4", EXPIRY_QUEUE_NAME=name)
    orders, db, timers = bootstrap.orders(), bootstrap.database(), bootstrap.expiry_timers()
    pids = [make_product(bootstrap.catalog(), stock=5000)["id"] for _ in range(5)]
    first_due = time.monotonic() + 4
    ids = [place(pids[i % 5], f"k-{i}", qty=1 + i % 3, user_id=1 + i % 11) for i in range(1500)]
    last_due = time.monotonic() + 4
    errors = []

    def guarded(work):
        def run(*args):
            try:
                work(*args)
            except Exception as exc:  # noqa: BLE001 - any failure is the test's finding
                errors.append(exc)
        return run

    def payer(chunk):
        time.sleep(max(0.0, first_due - 0.3 - time.monotonic()))  # payments arrive at the edge
        for order_id in chunk:
            try:
                orders.pay(order_id, f"ref-{order_id}")
            except OrderExpired:
                pass

    def canceller(chunk):
        for order_id in chunk:
            orders.cancel(order_id)

    def timer(chunk):  # timers firing as their windows close (early ones wait again)
        time.sleep(max(0.0, first_due - time.monotonic()))
        while time.monotonic() < last_due + 1:
            for order_id in chunk:
                fire_expiry_timer(orders, bootstrap.outbox(), timers, order_id)

    def sweeper():
        while time.monotonic() < last_due + 1:
            expiry_and_outbox.expire_due(orders, bootstrap.outbox())

    threads = [threading.Thread(target=guarded(payer), args=(ids[0::3],)),
               threading.Thread(target=guarded(payer), args=(ids[1::6],)),
               threading.Thread(target=guarded(canceller), args=(ids[2::3],)),
               threading.Thread(target=guarded(timer), args=(ids[0::2],)),
               threading.Thread(target=guarded(timer), args=(ids[1::2],)),
               threading.Thread(target=guarded(sweeper)), threading.Thread(target=guarded(sweeper))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[:3]
    expiry_and_outbox.expire_due(orders, bootstrap.outbox(), limit=2000)
    rows = db.query("SELECT o.id, o.lifecycle, i.product_id, i.quantity FROM orders o "
                    "JOIN order_items i ON i.order_id = o.id")
    states = {r["lifecycle"] for r in rows}
    assert states <= {"paid", "cancelled", "expired"} and {"paid", "cancelled", "expired"} <= states
    for pid in pids:
        held = sum(r["quantity"] for r in rows if r["product_id"] == pid and r["lifecycle"] == "paid")
        assert _stock(pid) == 5000 - held, pid
    closing = db.query("SELECT order_id, COUNT(*) AS n FROM order_events WHERE type IN ('order.paid', "
                       "'order.cancelled', 'order.expired') GROUP BY order_id")
    assert len(closing) == len(ids) and all(row["n"] == 1 for row in closing)


def test_dedupe_records_past_the_retention_are_pruned_oldest_first_and_a_bounded_number_per_call(clean_db):
    """Records of events no copy of which can still arrive go; younger ones
    (one just inside the retention) stay, whatever their number."""
    db = bootstrap.database()
    ages = {"r-35": 35, "r-34": 34, "r-33": 33, "r-32": 32, "r-31": 31,
            "r-edge": expiry_and_outbox.DEDUPE_RETENTION_DAYS - 1, "r-now": 0}

    def add(cur):
        for event_id, days in ages.items():
            cur.execute("INSERT INTO related_events (event_id, processed_at) VALUES "
                        "(%s, CURRENT_TIMESTAMP(6) - INTERVAL %s DAY)", (event_id, days))
        for event_id, days in (("n-40", 40), ("n-45", 45), ("n-now", 0)):
            cur.execute("INSERT INTO notifications_sent (event_id, event_type, recipient, sent_at) VALUES "
                        "(%s, 'order.paid', NULL, CURRENT_TIMESTAMP(6) - INTERVAL %s DAY)", (event_id, days))

    db.run(add)

    def left():
        return (sorted(r["event_id"] for r in db.query("SELECT event_id FROM related_events")),
                sorted(r["event_id"] for r in db.query("SELECT event_id FROM notifications_sent")))

    # At most 3 per table, 2 per transaction: the three oldest of related_events, both old notifications.
    assert expiry_and_outbox.prune_dedupe_records(bootstrap.outbox(), batch=2, most=3) == 3 + 2
    assert left() == (["r-31", "r-32", "r-edge", "r-now"], ["n-now"])
    assert expiry_and_outbox.prune_dedupe_records(bootstrap.outbox()) == 2
    assert left() == (["r-edge", "r-now"], ["n-now"])
    assert expiry_and_outbox.prune_dedupe_records(bootstrap.outbox()) == 0

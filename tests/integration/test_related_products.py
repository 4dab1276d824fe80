""""Bought together" against the real MariaDB, Redis and the local endpoint's
SNS/SQS: co-purchase counts from the order events the relay publishes to the
session's topic (the session's related queue is subscribed, as in the cloud),
exactly once per event under concurrent duplicate deliveries; the ranking, its
filters and freshness; garbage on the queue kept, never a crash."""
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter

import boto3
import pytest

from chalicelib import bootstrap
from chalicelib.adapters.pair_counts import MySQLPairCounts
from chalicelib.adapters.queues import EventPublisher
from chalicelib.domain import related as rules
from chalicelib.domain.orders import parse_batch
from chalicelib.entrypoints import sqs as consumers
from chalicelib.service import expiry_and_outbox
from chalicelib.service.related import RelatedProducts
from scripts.poller import FakeLambdaContext, Poller, sqs_event
from tests.conftest import make_product

REGION = "us-east-1"


@pytest.fixture(scope="module")
def sqs(test_env):
    return boto3.client("sqs", endpoint_url=test_env["AWS_ENDPOINT_URL"], region_name=REGION,
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture
def related_queue(clean_db, sqs, test_env):
    """The session's related queue, emptied of events other tests published."""
    url = sqs.get_queue_url(QueueName=test_env["RELATED_QUEUE_NAME"])["QueueUrl"]
    _receive_all(sqs, url, wait_seconds=0)  # PurgeQueue is allowed once a minute
    return url


def _relay(test_env):
    publisher = EventPublisher(test_env["AWS_ENDPOINT_URL"], REGION, test_env["ORDER_EVENTS_TOPIC_ARN"])
    while expiry_and_outbox.publish_pending(bootstrap.outbox(), publisher):
        pass


def _receive_all(sqs, url, wait_seconds=1):
    """Every message on the queue, deleted from it."""
    messages = []
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds,
                                    AttributeNames=["All"]).get("Messages", [])
        if not batch:
            return messages
        messages += batch
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])


def _deliver(messages, queue_arn="arn:aws:sqs:us-east-1:000000000000:related"):
    """One consumer invocation on `messages` (a Lambda SQS event); returns the failed message ids."""
    result = consumers.handle_related_event(sqs_event(messages, queue_arn, REGION),
                                            FakeLambdaContext("related"))
    return {item["itemIdentifier"] for item in result["batchItemFailures"]}


def _pairs():
    return {(r["product_id"], r["other_id"]): r["orders"]
            for r in bootstrap.database().query("SELECT product_id, other_id, orders FROM product_pairs")}


def _expected_pairs():
    """Every pair of distinct products in the orders that still count (not cancelled or expired), from MySQL."""
    rows = bootstrap.database().query(
        "SELECT o.id, i.product_id, i.quantity FROM orders o JOIN order_items i ON i.order_id = o.id "
        "WHERE o.lifecycle NOT IN ('cancelled', 'expired')")
    by_order = {}
    for row in rows:
        by_order.setdefault(row["id"], {})[row["product_id"]] = row["quantity"]
    expected = Counter()
    for quantities in by_order.values():
        expected.update(rules.pair_rows(quantities))
    return dict(expected)


def _place(orders, client_order_id, product_ids, user_id=1):
    result = orders.place_batch(parse_batch({"orders": [{
        "client_order_id": client_order_id, "user_id": user_id,
        "items": [{"product_id": pid, "quantity": 1} for pid in product_ids]}]}, "dev"))["results"][0]
    assert result["status"] == "created", result
    return result["order_id"]


def test_counts_match_the_orders_after_concurrent_duplicate_deliveries(related_queue, sqs, test_env):
    """Hundreds of orders placed, paid, cancelled and expired concurrently; every
    event delivered twice, in shuffled batches, to four concurrent consumers."""
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="1")
    try:
        catalog, orders = bootstrap.catalog(), bootstrap.orders()
        products = [make_product(catalog, stock=100_000)["id"] for _ in range(8)]
        rng = random.Random(16)
        plans = [rng.sample(products, rng.randint(1, 6)) for _ in range(240)]
        placed, errors = [], []

        def customer(worker):
            try:
                for i in range(worker, len(plans), 4):
                    order_id = _place(orders, f"rel-{i}", plans[i], user_id=worker + 1)
                    placed.append(order_id)
                    fate = i % 4  # 0: paid, 1: cancelled, 2: paid then cancelled, 3: left to expire
                    if fate in (0, 2):
                        orders.pay(order_id, f"pay-{order_id}")
                    if fate in (1, 2):
                        orders.cancel(order_id)
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=customer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        time.sleep(1.1)
        while expiry_and_outbox.expire_due(orders, bootstrap.outbox()):
            pass
    finally:
        bootstrap.reset()
    lifecycles = Counter(r["lifecycle"] for r in bootstrap.database().query("SELECT lifecycle FROM orders"))
    assert lifecycles == {"paid": 60, "cancelled": 120, "expired": 60}

    _relay(test_env)
    messages = _receive_all(sqs, related_queue)
    types = Counter(json.loads(m["Body"])["type"] for m in messages)
    # The filter policy keeps order.paid away; every other event arrived once.
    assert types == {"order.created": 240, "order.cancelled": 120, "order.expired": 60}

    copies = [dict(m, MessageId=f"{m['MessageId']}-{n}") for m in messages for n in (1, 2)]
    random.Random(5).shuffle(copies)
    batches = [copies[i:i + 10] for i in range(0, len(copies), 10)]
    failed = []

    def consumer(worker):
        for batch in batches[worker::4]:
            failed.extend(_deliver(batch))

    threads = [threading.Thread(target=consumer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    assert _pairs() == {pair: n for pair, n in _expected_pairs().items()} | \
        {pair: 0 for pair in _pairs() if pair not in _expected_pairs()}
    assert any(n > 0 for n in _pairs().values())
    assert bootstrap.database().query("SELECT COUNT(*) AS n FROM related_events")[0]["n"] == len(messages)

    # Delivered once more, later: nothing changes.
    before = _pairs()
    assert _deliver(messages[:10]) == set()
    assert _pairs() == before


def test_a_cancel_applied_before_its_creation_still_nets_zero(related_queue, sqs, test_env):
    catalog, orders = bootstrap.catalog(), bootstrap.orders()
    a, b = (make_product(catalog, stock=5)["id"] for _ in range(2))
    order_id = _place(orders, "early-cancel", [a, b])
    orders.cancel(order_id)
    _relay(test_env)
    messages = _receive_all(sqs, related_queue)
    by_type = {json.loads(m["Body"])["type"]: m for m in messages}
    assert _deliver([by_type["order.cancelled"]]) == set()
    assert _pairs() == {(a, b): -1, (b, a): -1}
    assert bootstrap.related_products().related(a)[0]["items"] == []  # never shown below 1
    assert _deliver([by_type["order.created"]]) == set()
    assert _pairs() == {(a, b): 0, (b, a): 0}


def test_a_big_order_costs_a_bounded_number_of_pairs(related_queue, sqs, test_env):
    catalog = bootstrap.catalog()
    products = [make_product(catalog, stock=5)["id"] for _ in range(30)]
    _place(bootstrap.orders(), "big", products)
    _relay(test_env)
    assert _deliver(_receive_all(sqs, related_queue)) == set()
    pairs = _pairs()
    assert len(pairs) == rules.MAX_LINES * (rules.MAX_LINES - 1)
    assert {a for a, _ in pairs} == set(products[:rules.MAX_LINES])  # equal quantities: the lowest ids


def _count(a, b, orders=1):
    """`orders` co-purchases of a and b, as consumed events."""
    for _ in range(orders):
        event = rules.decode(json.dumps({"event_id": str(uuid.uuid4()), "type": "order.created", "order_id": 1,
                                         "data": {"items": [{"product_id": a, "quantity": 1},
                                                            {"product_id": b, "quantity": 1}]}}))
        bootstrap.related_products().apply(event)


def test_ranking_order_filters_cache_and_freshness(clean_db, test_env):
    catalog = bootstrap.catalog()
    base, b, c, d, e, f, g = (make_product(catalog, stock=5)["id"] for _ in range(7))
    for other, n in ((b, 3), (c, 2), (d, 2), (e, 4), (f, 5), (g, 1)):
        _count(base, other, n)
    catalog.adjust_stock(e, {"delta": -5})      # out of stock before the ranking
    catalog.update(f, {"status": "inactive"})   # inactive before the ranking
    related = bootstrap.related_products()
    body, state = related.related(base)
    assert state == "MISS"
    assert [(i["product"]["id"], i["bought_together"]) for i in body["items"]] == [(b, 3), (c, 2), (d, 2), (g, 1)]
    assert body["product_id"] == base and body["items"][0]["product"]["name"] == "Test product"
    assert [i["product"]["id"] for i in related.related(base, limit=2)[0]["items"]] == [b, c]
    assert related.related(b)[0]["items"][0]["product"]["id"] == base  # both directions

    # A partner that sells out after the ranking was cached leaves it at once
    # (its product copy is fenced); one that changes shows its new fields.
    body, state = related.related(base)
    assert state == "HIT"
    catalog.adjust_stock(c, {"delta": -5})
    catalog.update(d, {"name": "Renamed"})
    body, state = related.related(base)
    assert state == "HIT"
    assert [i["product"]["id"] for i in body["items"]] == [b, d, g]
    assert body["items"][1]["product"]["name"] == "Renamed"

    # New co-purchases show once the cached ranking's TTL has passed.
    _count(base, g, 5)
    assert [i["product"]["id"] for i in related.related(base)[0]["items"]][0] == b
    bootstrap.redis_gateway().call(lambda r: r.pexpire(bootstrap.redis_gateway().key(f"related:{base}"), 1))
    time.sleep(0.01)
    body, state = related.related(base)
    assert state == "MISS" and [i["product"]["id"] for i in body["items"]] == [g, b, d]
    # Partners are read a few at a time: when all of the first few sold out, the next ones answer.
    catalog.adjust_stock(g, {"delta": -5})
    catalog.adjust_stock(b, {"delta": -5})
    assert [i["product"]["id"] for i in related.related(base, limit=1)[0]["items"]] == [d]
    assert bootstrap.redis_gateway().call(lambda r: r.ttl(bootstrap.redis_gateway().key(f"related:{base}"))) \
        <= int(test_env.get("RELATED_TTL_SECONDS", 30))


def test_unknown_product_is_not_found_and_a_lonely_one_has_no_partners(clean_db):
    from chalicelib.domain.errors import ProductNotFound

    with pytest.raises(ProductNotFound):
        bootstrap.related_products().related(10**17)
    lonely = make_product(bootstrap.catalog())["id"]
    assert bootstrap.related_products().related(lonely) == ({"product_id": lonely, "items": []}, "MISS")


def test_redis_down_answers_from_mysql(clean_db, test_env):
    catalog = bootstrap.catalog()
    a, b = (make_product(catalog, stock=5)["id"] for _ in range(2))
    _count(a, b, 2)
    bootstrap.reset(REDIS_URL="redis://127.0.0.1:1/0", REDIS_TIMEOUT="0.05")
    try:
        body, state = bootstrap.related_products().related(a)
    finally:
        bootstrap.reset()
    assert state == "BYPASS" and [(i["product"]["id"], i["bought_together"]) for i in body["items"]] == [(b, 2)]


GARBAGE = ["not json", "[1, 2]", json.dumps({"type": "order.created"}),
           json.dumps({"event_id": "g-1", "type": "order.created", "order_id": 1, "data": {"items": "all"}}),
           json.dumps({"event_id": "g-2", "type": "order.cancelled", "order_id": -4}), "\u0000" * 10]


def test_garbage_is_reported_kept_and_ends_in_the_dlq(clean_db, sqs, fast_queue):
    """Through the app's own handler and the local poller, on a queue with 1 s
    visibility and a DLQ after 3 receives: the good event in the same batch counts
    once, every garbage body ends in the DLQ unchanged, and nothing raises."""
    import app

    spec, url, dlq_url = fast_queue
    catalog = bootstrap.catalog()
    a, b = (make_product(catalog, stock=5)["id"] for _ in range(2))
    good = json.dumps({"event_id": "good-1", "type": "order.created", "order_id": 1,
                       "data": {"items": [{"product_id": a, "quantity": 1}, {"product_id": b, "quantity": 2}]}})
    ignored = json.dumps({"event_id": "paid-1", "type": "order.paid", "order_id": 1})
    for body in [good, ignored, *GARBAGE]:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    poller = Poller(sqs, spec.name, app.handle_related_products, wait_seconds=1)
    deadline = time.time() + 30
    in_dlq = []
    while time.time() < deadline and len(in_dlq) < len(GARBAGE):
        poller.poll_once()
        in_dlq += [m["Body"] for m in sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10,
                                                           WaitTimeSeconds=0, VisibilityTimeout=60)
                   .get("Messages", [])]
    assert sorted(in_dlq) == sorted(GARBAGE)
    assert _pairs() == {(a, b): 1, (b, a): 1}
    assert [r["event_id"] for r in bootstrap.database().query("SELECT event_id FROM related_events")] == ["good-1"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0


def test_mysql_down_fails_the_records_for_redelivery(clean_db):
    event = {"event_id": "down-1", "type": "order.created", "order_id": 1,
             "data": {"items": [{"product_id": 1, "quantity": 1}, {"product_id": 2, "quantity": 1}]}}
    messages = [{"MessageId": "m-1", "ReceiptHandle": "r", "Body": json.dumps(event)}]
    bootstrap.reset(DATABASE_URL="mysql://root:@127.0.0.1:1/shop", DB_CONNECT_TIMEOUT="0.2")
    try:
        assert _deliver(messages) == {"m-1"}
    finally:
        bootstrap.reset()
    assert _deliver(messages) == set()
    assert _pairs() == {(1, 2): 1, (2, 1): 1}


class OneAttempt:
    """The database with db.run's deadlock retries off."""

    def __init__(self, db):
        self.db = db

    def run(self, work):
        return self.db.run(work, attempts=1)


def test_locks_are_taken_in_one_order_so_concurrent_batches_never_deadlock(clean_db):
    """Orders over the same eight products in every line order, each event in
    eight batches at other positions, applied from eight threads at once with
    no deadlock retry: a deadlock (event ids or pair rows locked in different
    orders by two batches) fails the test."""
    ids = list(range(1, 9))
    rng = random.Random(3)
    events = [rules.decode(json.dumps({"event_id": f"dl-{n}", "type": "order.created", "order_id": 1,
                                       "data": {"items": [{"product_id": p, "quantity": 1}
                                                          for p in rng.sample(ids, 8)]}}))
              for n in range(50)]
    copies = events * 8
    rng.shuffle(copies)
    batches = [copies[i:i + 10] for i in range(0, len(copies), 10)]
    related, errors = RelatedProducts(MySQLPairCounts(OneAttempt(bootstrap.database())), None, None), []

    def worker(mine):
        try:
            for batch in mine:
                related.apply_many(batch)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(batches[w::8],)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _pairs() == {(a, b): 50 for a, b in itertools.permutations(ids, 2)}

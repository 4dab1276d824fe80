"""The local stack against the real LocalStack-compatible endpoint (moto server
on 127.0.0.1:4566 under `make test`; started here if nothing answers): queues
with DLQ and redrive, the SQS poller's partial-batch contract, redelivery into
the DLQ, inspection and redrive. No mocks."""
import json
import time

import pytest
from chalice import Chalice

from chalicelib.settings import QUEUES
from scripts import localstack
from scripts.poller import FakeLambdaContext, Poller, failed_message_ids, resolve_handler
from scripts.stack import setup_queues
from tests.support.sqs import drain


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    return localstack.sqs_client(aws_endpoint.url)


def attributes(sqs, url):
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def send(sqs, url, *bodies):
    return [sqs.send_message(QueueUrl=url, MessageBody=json.dumps(b))["MessageId"] for b in bodies]


def test_configured_queues_have_dlq_and_redrive(sqs, test_env, monkeypatch):
    from chalicelib.settings import Settings

    monkeypatch.setenv("SQS_VISIBILITY_TIMEOUT", "45")
    specs = setup_queues(Settings())
    assert [s.name for s in specs] == [test_env[q.setting] for q in QUEUES]
    for spec in specs:
        url, dlq_url = localstack.queue_url(sqs, spec.name), localstack.queue_url(sqs, spec.dlq_name)
        assert url and dlq_url
        attrs = attributes(sqs, url)
        assert attrs["VisibilityTimeout"] == "45"
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == attributes(sqs, dlq_url)["QueueArn"]
        assert int(redrive["maxReceiveCount"]) == 5
        assert int(attributes(sqs, dlq_url)["MessageRetentionPeriod"]) == localstack.DLQ_RETENTION_SECONDS


def test_queues_are_subscribed_to_their_topic_once_with_raw_delivery_and_a_filter(test_env):
    """The session's subscriptions (tests/conftest.py, as `make run`): subscribing
    again returns the same subscription, with the attributes QueueDef asks for."""
    import boto3

    subscribed = [q for q in QUEUES if q.topic_setting]
    first = localstack.subscribe_queues(test_env["AWS_ENDPOINT_URL"], test_env)
    assert len(first) == len(subscribed) and localstack.subscribe_queues(test_env["AWS_ENDPOINT_URL"], test_env) == first
    sns = boto3.client("sns", endpoint_url=test_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    for q, arn in zip(subscribed, first):
        attrs = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
        assert attrs["TopicArn"] == test_env[q.topic_setting] and attrs["RawMessageDelivery"] == "true"
        assert attrs["Endpoint"].endswith(":" + test_env[q.setting])
        assert json.loads(attrs["FilterPolicy"]) == {"event_type": list(q.event_types)}


def test_setup_is_idempotent_and_converges(sqs, test_env):
    spec = localstack.QueueSpec(f"{test_env['INVALIDATION_QUEUE_NAME']}-idem", max_receive_count=5, visibility_timeout=30)
    first = localstack.ensure_queue(sqs, spec)
    assert localstack.ensure_queue(sqs, spec) == first
    # A changed setting is applied to the existing queue rather than failing.
    changed = localstack.QueueSpec(spec.name, max_receive_count=2, visibility_timeout=7)
    assert localstack.ensure_queue(sqs, changed) == first
    attrs = attributes(sqs, first[0])
    assert attrs["VisibilityTimeout"] == "7"
    assert int(json.loads(attrs["RedrivePolicy"])["maxReceiveCount"]) == 2
    for url in first:
        sqs.delete_queue(QueueUrl=url)


def test_poller_deletes_only_successes_with_real_event_shape(sqs, fast_queue):
    spec, url, _ = fast_queue
    ids = send(sqs, url, {"product_ids": [1]}, {"product_ids": [2]}, {"search": True})
    bad = ids[1]
    seen = []

    def handler(event, context):
        seen.append((event, context))
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]}
                                      for r in event["Records"] if r["messageId"] == bad]}

    poller = Poller(sqs, spec.name, handler, wait_seconds=1)
    received = set()
    assert drain(poller, lambda: received.update(r["messageId"] for e, _ in seen for r in e["Records"]) or received >= set(ids))

    event, context = seen[0]
    record = event["Records"][0]
    assert set(record) >= {"messageId", "receiptHandle", "body", "attributes", "messageAttributes",
                           "md5OfBody", "eventSource", "eventSourceARN", "awsRegion"}
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].startswith("arn:aws:sqs:us-east-1:") and record["eventSourceARN"].endswith(":" + spec.name)
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert json.loads(record["body"]) in ({"product_ids": [1]}, {"product_ids": [2]}, {"search": True})
    assert context.function_name and context.aws_request_id and context.memory_limit_in_mb
    assert context.invoked_function_arn.startswith("arn:aws:lambda:us-east-1:")
    assert 0 < context.get_remaining_time_in_millis() <= 30_000

    # Only the failed message comes back (after the 1 s visibility timeout), received a second time.
    time.sleep(1.2)
    redelivered = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2,
                                      AttributeNames=["All"]).get("Messages", [])
    assert [m["MessageId"] for m in redelivered] == [bad]
    assert int(redelivered[0]["Attributes"]["ApproximateReceiveCount"]) >= 2


def test_poller_drives_a_real_chalice_sqs_handler(sqs, fast_queue):
    """The contract with Chalice: @app.on_sqs_message's wrapper returns what the function returns."""
    spec, url, _ = fast_queue
    app = Chalice(app_name="poller-contract")
    bodies = []

    @app.on_sqs_message(queue=spec.name, batch_size=10)
    def handle_things(event):
        failures = []
        for record in event:
            bodies.append(json.loads(record.body))
            if json.loads(record.body).get("fail"):
                failures.append({"itemIdentifier": record.to_dict()["messageId"]})
        assert event.context.get_remaining_time_in_millis() > 0
        return {"batchItemFailures": failures}

    class Module:
        pass

    module = Module()
    module.app = app
    module.handle_things = handle_things
    handler, batch_size = resolve_handler(module, "handle_things", spec.name)
    assert handler is handle_things and batch_size == 10
    send(sqs, url, {"ok": 1}, {"fail": True})
    poller = Poller(sqs, spec.name, handler, batch_size=batch_size, wait_seconds=1)
    assert drain(poller, lambda: len(bodies) >= 2)
    time.sleep(1.2)
    left = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=2).get("Messages", [])
    assert [json.loads(m["Body"]) for m in left] == [{"fail": True}]


def test_handler_lookup_skips_missing_handlers():
    class Module:
        app = Chalice(app_name="empty")

    assert resolve_handler(Module, "handle_order_ingest", "q") == (None, None)


def test_batch_failure_rules():
    ids = ["a", "b"]
    assert failed_message_ids(None, ids) == set()
    assert failed_message_ids({}, ids) == set()
    assert failed_message_ids({"batchItemFailures": []}, ids) == set()
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "b"}]}, ids) == {"b"}
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "zzz"}]}, ids) == {"a", "b"}
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": ""}]}, ids) == {"a", "b"}
    assert failed_message_ids("ok", ids) == {"a", "b"}
    ctx = FakeLambdaContext("f", timeout_seconds=1)
    assert ctx.get_remaining_time_in_millis() <= 1000


def test_always_failing_message_lands_in_dlq_then_redrive_returns_it(sqs, fast_queue):
    spec, url, dlq_url = fast_queue
    (message_id,) = send(sqs, url, {"orders": [], "batch_id": "poison"})
    calls = []

    def handler(event, context):
        calls.append(event["Records"][0]["attributes"]["ApproximateReceiveCount"])
        raise RuntimeError("transient failure")

    poller = Poller(sqs, spec.name, handler, wait_seconds=1)

    def in_dlq():
        return localstack.inspect_queues(sqs, [spec])[0]["dlq_depth"]["visible"] == 1

    assert drain(poller, in_dlq, timeout=20), f"not in DLQ after {len(calls)} receives"
    assert len(calls) == spec.max_receive_count  # delivered exactly maxReceiveCount times, then moved

    report = localstack.inspect_queues(sqs, [spec])[0]
    assert report["depth"]["visible"] == 0
    assert [json.loads(m["body"]) for m in report["dlq_messages"]] == [{"orders": [], "batch_id": "poison"}]
    assert report["dlq_messages"][0]["messageId"] == message_id
    assert "poison" in localstack.format_report([report])
    # Inspecting leaves the DLQ message visible.
    assert localstack.inspect_queues(sqs, [spec])[0]["dlq_depth"]["visible"] == 1

    assert localstack.redrive(sqs, spec) == 1
    report = localstack.inspect_queues(sqs, [spec])[0]
    assert report["dlq_depth"]["visible"] == 0 and report["depth"]["visible"] == 1
    back = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages", [])
    assert json.loads(back[0]["Body"]) == {"orders": [], "batch_id": "poison"}


def test_demo_seed_fills_an_empty_catalog_once(clean_db):
    from chalicelib import bootstrap
    from scripts.seed import product_count, seed_catalog

    catalog, db = bootstrap.catalog(), bootstrap.database()
    assert seed_catalog(catalog, db, count=120, chunk=50) == 120
    assert product_count(db) == 120
    assert seed_catalog(catalog, db, count=120) == 0  # not empty: left alone
    assert seed_catalog(catalog, db, count=130, top_up=True) == 10  # top-up adds only what is missing
    names = [r["name"] for r in db.query("SELECT name FROM products")]
    assert any(any("\u4e00" <= ch <= "\u9fff" for ch in n) for n in names)
    assert any(n.isascii() for n in names)

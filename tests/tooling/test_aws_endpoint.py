"""The local AWS endpoint's SQS (scripts/aws_endpoint.py, or whatever answers at
$AWS_ENDPOINT_URL) over real connections: delays, long polling, visibility,
batch calls with partial failure, redrive to a DLQ, and concurrent consumers
that neither share nor lose a message. Plus: every speed-up of
scripts/moto_patches.py still matches the pinned moto."""
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from scripts import localstack, moto_patches


@pytest.fixture(scope="module")
def sqs(aws_endpoint):
    return localstack.sqs_client(aws_endpoint.url)


@pytest.fixture
def queue(sqs, test_env):
    """A plain queue of its own (30 s visibility), deleted afterwards."""
    url = sqs.create_queue(QueueName=f"{test_env['ORDER_QUEUE_NAME']}-ep-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


def receive(sqs, url, wait=0, visibility=30, count=10):
    return sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=count, WaitTimeSeconds=wait,
                               VisibilityTimeout=visibility, AttributeNames=["All"]).get("Messages", [])


def test_every_speed_up_matches_the_pinned_moto():
    # An upgrade that changed a patched function serves plain moto (correct, slow):
    # this names what to re-check in scripts/moto_patches.py.
    assert moto_patches.stale() == []


def test_delayed_message_is_hidden_until_its_delay_passes(sqs, queue):
    sqs.send_message(QueueUrl=queue, MessageBody="later", DelaySeconds=2)
    assert receive(sqs, queue) == []
    assert [m["Body"] for m in receive(sqs, queue, wait=10)] == ["later"]


def test_long_poll_returns_a_message_sent_while_it_waits(sqs, queue):
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(receive, localstack.sqs_client(sqs.meta.endpoint_url), queue, 10)
        threading.Event().wait(0.5)
        sqs.send_message(QueueUrl=queue, MessageBody="wake up")
        assert [m["Body"] for m in waiting.result(timeout=15)] == ["wake up"]


def test_received_message_is_invisible_until_released(sqs, queue):
    sqs.send_message(QueueUrl=queue, MessageBody="once")
    first = receive(sqs, queue)
    assert len(first) == 1 and receive(sqs, queue) == []
    sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=first[0]["ReceiptHandle"], VisibilityTimeout=0)
    again = receive(sqs, queue)
    assert [m["MessageId"] for m in again] == [first[0]["MessageId"]]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"


def test_batch_calls_report_each_entry(sqs, queue):
    sent = sqs.send_message_batch(QueueUrl=queue, Entries=[
        {"Id": f"m{i}", "MessageBody": json.dumps({"n": i})} for i in range(10)])
    assert len(sent["Successful"]) == 10 and not sent.get("Failed")
    messages = receive(sqs, queue)
    assert len(messages) == 10
    entries = [{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    entries.append({"Id": "bogus", "ReceiptHandle": "not-a-receipt-handle"})
    deleted = sqs.delete_message_batch(QueueUrl=queue, Entries=entries)
    assert len(deleted["Successful"]) == 10
    assert [f["Id"] for f in deleted["Failed"]] == ["bogus"]
    assert sum(localstack._depth(sqs, queue).values()) == 0


def test_message_moves_to_the_dlq_after_max_receives(sqs, test_env):
    spec = localstack.QueueSpec(f"{test_env['ORDER_QUEUE_NAME']}-ep-{uuid.uuid4().hex[:8]}", max_receive_count=2,
                                visibility_timeout=30)
    url, dlq_url = localstack.ensure_queue(sqs, spec)
    try:
        sqs.send_message(QueueUrl=url, MessageBody="poison")
        for _ in range(2):
            assert [m["Body"] for m in receive(sqs, url, visibility=0)] == ["poison"]
        assert receive(sqs, url) == []  # the third receive moves it instead of delivering it
        moved = receive(sqs, dlq_url)
        assert [m["Body"] for m in moved] == ["poison"]
    finally:
        for u in (url, dlq_url):
            sqs.delete_queue(QueueUrl=u)


def test_concurrent_consumers_get_each_message_once_while_producers_send(sqs, queue):
    """Four consumers receive and delete while two producers send: every message
    is delivered exactly once (generous visibility, so no legitimate redelivery)
    and the queue ends empty."""
    total, producers = 600, 2
    seen, lock, done = [], threading.Lock(), threading.Event()

    def produce(offset):
        client = localstack.sqs_client(sqs.meta.endpoint_url)
        for start in range(offset, total, 10 * producers):
            client.send_message_batch(QueueUrl=queue, Entries=[
                {"Id": str(i), "MessageBody": str(start + i)} for i in range(10)])

    def consume():
        client = localstack.sqs_client(sqs.meta.endpoint_url)
        while not done.is_set():
            messages = receive(client, queue, wait=1, visibility=120)
            if messages:
                client.delete_message_batch(QueueUrl=queue, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
                with lock:
                    seen.extend(m["Body"] for m in messages)
                    if len(seen) >= total:
                        done.set()

    with ThreadPoolExecutor(producers + 4) as pool:
        consumers = [pool.submit(consume) for _ in range(4)]
        for f in [pool.submit(produce, p * 10) for p in range(producers)]:
            f.result(timeout=120)
        done.wait(120)
        done.set()
        for f in consumers:
            f.result(timeout=30)
    assert sorted(seen, key=int) == [str(n) for n in range(total)]
    assert sum(localstack._depth(sqs, queue).values()) == 0

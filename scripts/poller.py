"""Local SQS event source: long-polls one queue and invokes the Chalice SQS
handler with a real Lambda SQS event, as the Lambda event source mapping does
in AWS (`chalice local` delivers no SQS events; docs/design.md section 5).

Handler contract (what the poller expects):
- The handler is the object `@app.on_sqs_message(...)` returns, called as
  `handler(event_dict, context)`. Chalice's EventSourceHandler.__call__ wraps
  the dict in an `SQSEvent` (iterate it for `SQSRecord`s with `.body` and
  `.receipt_handle`; `event.to_dict()` is the raw event, `event.context` the
  context), runs the SQS middleware and returns the user function's return
  value unchanged. So the user function must *return* the partial-batch
  response, e.g. with Powertools:
      return process_partial_response(event=event.to_dict(), record_handler=...,
                                      processor=BatchProcessor(EventType.SQS),
                                      context=event.context)
- Return value, interpreted as Lambda does with ReportBatchItemFailures:
  `None`, `{}`, or `{"batchItemFailures": []}` -> every message succeeded and
  is deleted; `{"batchItemFailures": [{"itemIdentifier": messageId}, ...]}` ->
  all messages except those are deleted; an item without a known messageId,
  or a return value that is not a dict -> the whole batch failed.
- Raising -> nothing is deleted: the batch comes back after the visibility
  timeout and SQS's redrive policy moves a message to the DLQ once it was
  received maxReceiveCount times.

Run: `python scripts/poller.py --queue shop-order-ingest --handler handle_order_ingest`
(the stack does this for each queue), or drive `Poller` in-process (tests).
"""
import argparse
import base64
import importlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib.settings import QUEUES  # noqa: E402
log = logging.getLogger("poller")

ACCOUNT_FALLBACK = "000000000000"
NO_HANDLER_EXIT = 3

# Settings name of the queue -> name of the handler in app.py.
QUEUE_HANDLERS = {q.setting: q.handler for q in QUEUES}


class FakeLambdaContext:
    """The parts of the Lambda context object that handlers and Powertools read."""

    def __init__(self, function_name, timeout_seconds=30, memory_limit_in_mb=512, region="us-east-1",
                 account_id=ACCOUNT_FALLBACK):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self.identity = None
        self.client_context = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _lambda_message_attributes(message_attributes):
    out = {}
    for name, value in (message_attributes or {}).items():
        binary = value.get("BinaryValue")
        out[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(binary).decode() if isinstance(binary, (bytes, bytearray)) else binary,
            "stringListValues": list(value.get("StringListValues", [])),
            "binaryListValues": [base64.b64encode(b).decode() for b in value.get("BinaryListValues", [])],
            "dataType": value.get("DataType"),
        }
    return out


def sqs_record(message, queue_arn, region):
    """One SQS ReceiveMessage message -> one Lambda event record."""
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {k: str(v) for k, v in (message.get("Attributes") or {}).items()},
        "messageAttributes": _lambda_message_attributes(message.get("MessageAttributes")),
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if message.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def sqs_event(messages, queue_arn, region):
    return {"Records": [sqs_record(m, queue_arn, region) for m in messages]}


def failed_message_ids(result, message_ids):
    """Which messages to keep, from the handler's return value (Lambda's rules)."""
    message_ids = list(message_ids)
    if result is None:
        return set()
    if not isinstance(result, dict):
        log.error("handler returned %r, not a dict; treating the whole batch as failed", type(result).__name__)
        return set(message_ids)
    failures = result.get("batchItemFailures")
    if not failures:
        return set()
    known = set(message_ids)
    failed = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not identifier or identifier not in known:
            log.error("batchItemFailures has an invalid item %r; treating the whole batch as failed", item)
            return set(message_ids)
        failed.add(identifier)
    return failed


@dataclass
class PollResult:
    received: int = 0
    deleted: int = 0
    failed: list = field(default_factory=list)
    error: str = None


class Poller:
    def __init__(self, sqs, queue_name, handler, *, batch_size=10, wait_seconds=2, timeout_seconds=30,
                 region="us-east-1", function_name=None):
        if not 1 <= batch_size <= 10:
            raise ValueError("batch_size must be 1..10")
        if not 0 <= wait_seconds <= 20:
            raise ValueError("wait_seconds must be 0..20")
        self.sqs = sqs
        self.queue_name = queue_name
        self.handler = handler
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.timeout_seconds = timeout_seconds
        self.region = region
        self.function_name = function_name or f"shop-local-{queue_name}"
        self._url = None
        self._arn = None

    @property
    def queue_url(self):
        if self._url is None:
            self._url = self.sqs.get_queue_url(QueueName=self.queue_name)["QueueUrl"]
        return self._url

    @property
    def queue_arn(self):
        if self._arn is None:
            try:
                self._arn = self.sqs.get_queue_attributes(
                    QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            except Exception:
                self._arn = f"arn:aws:sqs:{self.region}:{ACCOUNT_FALLBACK}:{self.queue_name}"
        return self._arn

    def _account_id(self):
        parts = self.queue_arn.split(":")
        return parts[4] if len(parts) > 5 and parts[4] else ACCOUNT_FALLBACK

    def receive(self):
        return self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])

    def invoke(self, messages):
        """Call the handler on `messages`; returns the set of message ids to keep."""
        ids = [m["MessageId"] for m in messages]
        event = sqs_event(messages, self.queue_arn, self.region)
        context = FakeLambdaContext(self.function_name, self.timeout_seconds, region=self.region,
                                    account_id=self._account_id())
        started = time.monotonic()
        try:
            result = self.handler(event, context)
        except Exception:
            log.exception("%s: handler raised on %d message(s); all stay in the queue for redelivery",
                          self.queue_name, len(ids))
            return set(ids)
        elapsed = time.monotonic() - started
        if elapsed > self.timeout_seconds:
            log.warning("%s: handler took %.1fs, longer than the %ss consumer timeout",
                        self.queue_name, elapsed, self.timeout_seconds)
        return failed_message_ids(result, ids)

    def delete(self, messages):
        deleted = 0
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
            ])
            deleted += len(response.get("Successful", []))
            for failure in response.get("Failed", []):
                log.error("%s: could not delete message: %s", self.queue_name, failure)
        return deleted

    def poll_once(self):
        """One receive (long poll) and, if messages came, one handler invocation."""
        messages = self.receive()
        if not messages:
            return PollResult()
        failed = self.invoke(messages)
        done = [m for m in messages if m["MessageId"] not in failed]
        deleted = self.delete(done) if done else 0
        result = PollResult(received=len(messages), deleted=deleted,
                            failed=[m["MessageId"] for m in messages if m["MessageId"] in failed])
        if result.failed:
            log.info("%s: %d received, %d done, %d failed (left for redelivery)",
                     self.queue_name, result.received, deleted, len(result.failed))
        else:
            log.info("%s: %d received, %d done", self.queue_name, result.received, deleted)
        return result

    def run(self, stop_event, idle_backoff=1.0, max_backoff=10.0):
        """Poll until `stop_event` is set; endpoint errors back off instead of crashing."""
        backoff = idle_backoff
        log.info("polling %s (batch %d, wait %ss)", self.queue_name, self.batch_size, self.wait_seconds)
        while not stop_event.is_set():
            try:
                self.poll_once()
                backoff = idle_backoff
            except Exception as exc:
                self._url = self._arn = None  # the queue may have been recreated
                log.warning("%s: polling failed (%s); retrying in %.0fs", self.queue_name, exc, backoff)
                stop_event.wait(backoff)
                backoff = min(max_backoff, backoff * 2)
        log.info("stopped polling %s", self.queue_name)


def resolve_handler(app_module, attr, queue_name=None):
    """The Chalice SQS handler for a queue: `app.<attr>`, else a handler of that
    name registered on the app (Blueprints), else one registered for `queue_name`.
    Returns (handler, batch_size) or (None, None)."""
    chalice_app = getattr(app_module, "app", None)
    sources = [s for s in getattr(chalice_app, "event_sources", []) if type(s).__name__ == "SQSEventConfig"]
    handler_map = getattr(chalice_app, "handler_map", {}) or {}

    def batch_size_of(name):
        for source in sources:
            if source.name == name:
                return source.batch_size
        return None

    handler = getattr(app_module, attr, None)
    if callable(handler):
        return handler, batch_size_of(attr)
    if attr in handler_map:
        return handler_map[attr], batch_size_of(attr)
    for source in sources:
        if queue_name and (source.queue == queue_name or (source.queue_arn or "").endswith(":" + queue_name)):
            if source.name in handler_map:
                return handler_map[source.name], source.batch_size
            module_name, func = source.handler_string.rsplit(".", 1)
            return getattr(importlib.import_module(module_name), func), source.batch_size
    return None, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", required=True, help="queue name")
    parser.add_argument("--handler", required=True, help="handler attribute in app.py, e.g. handle_order_ingest")
    parser.add_argument("--wait", type=int, default=int(os.environ.get("POLLER_WAIT_SECONDS", "2")))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the handler's batch_size, else 10")
    parser.add_argument("--timeout", type=int, default=int(os.environ.get("LAMBDA_TIMEOUT_SECONDS", "30")))
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    os.environ.setdefault("STAGE", "local")
    from chalicelib.settings import get_settings
    from scripts.localstack import sqs_client

    import app as app_module

    handler, batch_size = resolve_handler(app_module, args.handler, args.queue)
    if handler is None:
        log.warning("app.py has no SQS handler %r for queue %s yet; not polling it (messages stay queued)",
                    args.handler, args.queue)
        return NO_HANDLER_EXIT
    settings = get_settings()
    poller = Poller(
        sqs_client(settings.aws_endpoint_url, settings.region), args.queue, handler,
        batch_size=max(1, min(10, args.batch_size or batch_size or 10)), wait_seconds=args.wait,
        timeout_seconds=args.timeout, region=settings.region, function_name=f"shop-{args.handler}",
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    poller.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())

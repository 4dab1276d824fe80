"""SQS access through the LocalStack-compatible endpoint locally, real SQS in AWS."""
import json
import os
import threading

from chalicelib.domain.errors import NothingSent

# Every AWS call gives up after ATTEMPTS tries of at most CONNECT_TIMEOUT + READ_TIMEOUT seconds
# each, with botocore's standard-mode backoff between them (its default mode: at most 1 s, then
# 2 s for throttling; 50 ms, then 100 ms otherwise): CALL_SECONDS bounds one call. The flash
# hand-off counts on it to end inside its reservations' lease.
CONNECT_TIMEOUT, READ_TIMEOUT, ATTEMPTS = 1, 3, 3
CALL_SECONDS = ATTEMPTS * (CONNECT_TIMEOUT + READ_TIMEOUT) + sum(2 ** i for i in range(ATTEMPTS - 1))
SQS_BATCH = 10  # SendMessageBatch's most entries per call


def aws_client(service, endpoint_url, region):
    import boto3  # lazy: keeps cold start short
    from botocore.config import Config

    # A local endpoint (moto/LocalStack) accepts any credentials.
    local_credentials = {} if not endpoint_url or os.environ.get("AWS_ACCESS_KEY_ID") else {
        "aws_access_key_id": "test", "aws_secret_access_key": "test"}
    return boto3.client(service, endpoint_url=endpoint_url, region_name=region, **local_credentials,
                        config=Config(connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
                                      retries={"mode": "standard", "total_max_attempts": ATTEMPTS}))


class QueuePublisher:
    batch_size = SQS_BATCH
    call_seconds = CALL_SECONDS

    def __init__(self, endpoint_url, region):
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = None
        self._urls = {}
        self._lock = threading.Lock()
        self._sends = threading.local()  # whether this thread's failing send may have reached SQS

    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

                    client = aws_client("sqs", self.endpoint_url, self.region)
                    self._not_connected = (EndpointConnectionError, ConnectTimeoutError)
                    client.meta.events.register_first("needs-retry.sqs.SendMessageBatch", self._attempt_ended)
                    self._client = client
        return self._client

    def _attempt_ended(self, response=None, caught_exception=None, **_):
        """botocore's note after each attempt of a SendMessageBatch (its retries hide all but the last
        error): whether this one may have reached SQS. Returns None: the retry decision stays botocore's."""
        if caught_exception is not None:
            reached = not isinstance(caught_exception, self._not_connected)
        else:  # SQS answered; a 5xx may follow work it did
            reached = (response or [None, {}])[1].get("ResponseMetadata", {}).get("HTTPStatusCode", 200) >= 500
        if reached:
            self._sends.reached = True

    def queue_url(self, name):
        """Looked up once per process; a failed lookup raises NothingSent (nothing went through it)."""
        if name not in self._urls:
            try:
                self._urls[name] = self.client.get_queue_url(QueueName=name)["QueueUrl"]
            except Exception as exc:
                raise NothingSent(f"{type(exc).__name__}: {exc}") from exc
        return self._urls[name]

    def send(self, queue_name, body):
        return self.client.send_message(QueueUrl=self.queue_url(queue_name), MessageBody=json.dumps(body))["MessageId"]

    def send_batch(self, queue_name, bodies, delays=None):
        """Send up to 10 bodies per SQS call, each hidden for its `delays` seconds
        (SQS: 0-900) if given; raises if any message was refused."""
        url = self.queue_url(queue_name)
        for start in range(0, len(bodies), SQS_BATCH):
            chunk = bodies[start:start + SQS_BATCH]
            entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(chunk)]
            if delays is not None:
                for entry, delay in zip(entries, delays[start:start + SQS_BATCH]):
                    entry["DelaySeconds"] = delay
            self._sends.reached = False
            try:
                response = self.client.send_message_batch(QueueUrl=url, Entries=entries)
            except Exception as exc:
                if start == 0 and not self._sends.reached:
                    raise NothingSent(f"{type(exc).__name__}: {exc}") from exc
                raise
            if response.get("Failed"):
                raise RuntimeError(f"SQS refused {len(response['Failed'])} message(s): {response['Failed']}")

    def depth(self, queue_name):
        """Messages on the queue, visible or being processed (SQS's approximate counts)."""
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.queue_url(queue_name),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


class EventPublisher:
    """Order events to the SNS topic (the local endpoint's SNS locally)."""

    def __init__(self, endpoint_url, region, topic_arn):
        self.endpoint_url, self.region, self.topic_arn = endpoint_url, region, topic_arn
        self._client = None
        self._lock = threading.Lock()  # the relay's lanes share one client; boto3 clients are thread-safe

    @property
    def client(self):
        with self._lock:  # creating one is not
            if self._client is None:
                self._client = aws_client("sns", self.endpoint_url, self.region)
        return self._client

    def publish_batch(self, events):
        """Publish up to 10 events in one call; returns how many of them, counted
        from the first, SNS accepted (an entry it refused ends the count)."""
        response = self.client.publish_batch(TopicArn=self.topic_arn, PublishBatchRequestEntries=[
            {"Id": str(i), "Message": json.dumps(event, ensure_ascii=False),
             "MessageAttributes": {"event_type": {"DataType": "String", "StringValue": event["type"]},
                                   "event_id": {"DataType": "String", "StringValue": event["event_id"]}}}
            for i, event in enumerate(events)])
        refused = {int(entry["Id"]) for entry in response.get("Failed", [])}
        return min(refused, default=len(events))

"""The LocalStack-compatible AWS endpoint and the SQS queues (docs/design.md section 5).

`aws_endpoint(url)` uses whatever already answers SQS calls at `url` (a real
LocalStack, or an endpoint someone else started) and otherwise starts
`scripts/aws_endpoint.py` there (moto with the speed-ups of
scripts/moto_patches.py, served by waitress), waits until it answers, and
stops it when the last user leaves: several commands (`make run`, two `make
test` runs from two checkouts) may share one endpoint (scripts/shared_server.py).

Queues: `ensure_queue(sqs, spec)` creates the queue and its dead-letter queue
(`<name>-dlq`) with the redrive policy, or brings an existing pair to the
wanted attributes (safe to run any number of times). `inspect_queues` and
`redrive` back `make queues` and `make redrive`.
"""
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib.settings import QUEUES  # noqa: E402
from scripts.shared_server import command_line, port_open, shared_server  # noqa: E402

log = logging.getLogger("localstack")

DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
REGION = "us-east-1"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DLQ_RETENTION_SECONDS = 14 * 24 * 3600
# Cloud: consumer (Lambda) timeout 30 s, visibility 6x that.
CONSUMER_TIMEOUT_SECONDS = 30
CLOUD_VISIBILITY_TIMEOUT = 6 * CONSUMER_TIMEOUT_SECONDS
# Local: short, so redelivery and DLQ can be watched (env SQS_VISIBILITY_TIMEOUT).
LOCAL_VISIBILITY_TIMEOUT = 180  # 6x the 30 s consumer timeout (docs/design.md); tests set short ones themselves


def aws_env(endpoint_url=None):
    """Variables every process of the local stack gets (dummy credentials, region, endpoint)."""
    env = dict(DUMMY_CREDENTIALS)
    env["AWS_DEFAULT_REGION"] = os.environ.get("AWS_DEFAULT_REGION") or REGION
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    return env


def sqs_client(endpoint_url, region=REGION, timeout=5):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "sqs",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "test",
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "test",
        config=Config(connect_timeout=timeout, read_timeout=timeout + 25, retries={"max_attempts": 3}),
    )


# --- endpoint ---------------------------------------------------------------


def endpoint_answers(endpoint_url, timeout=10.0):
    """True when an SQS API answers at `endpoint_url`.

    A closed port fails at once; an open one gets `timeout` seconds to answer
    (a busy machine can make moto slow, and slow is not absent)."""
    import boto3
    from botocore.config import Config

    host, port = _host_port(endpoint_url)
    if host in LOCAL_HOSTS and not port_open(host, port):
        return False
    client = boto3.client(
        "sqs", endpoint_url=endpoint_url, region_name=REGION,
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(connect_timeout=min(timeout, 3), read_timeout=timeout, retries={"max_attempts": 2}),
    )
    try:
        client.list_queues(MaxResults=1)
        return True
    except Exception:
        return False


def _host_port(endpoint_url):
    parsed = urlparse(endpoint_url)
    return parsed.hostname or "127.0.0.1", parsed.port or 4566


def set_parent_death_signal():
    """Runs in the child before exec: if the parent dies without cleaning up
    (SIGKILL), the kernel sends the child SIGTERM. Linux only; harmless elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


ENDPOINT_SCRIPT = ROOT / "scripts" / "aws_endpoint.py"


def _is_our_moto(pid):
    """True for an endpoint a shop stack starts (this one, or the plain
    `python -m moto.server` that checkouts from before it start)."""
    args = command_line(pid) if pid else []
    return b"moto.server" in args or any(arg.endswith(b"scripts/aws_endpoint.py") for arg in args)


class Endpoint:
    """A handle on the endpoint for as long as the caller uses it."""

    def __init__(self, url, started_pid=None):
        self.url = url
        self.started_pid = started_pid


def start_moto(host, port, log_path, python=sys.executable, wait_seconds=60):
    """Start the local endpoint (scripts/aws_endpoint.py) at host:port; returns the Popen once it answers SQS calls."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "ab")
    env = {**os.environ, **aws_env()}
    proc = subprocess.Popen(
        [python, str(ENDPOINT_SCRIPT), "-H", host, "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
        # Own session: a Ctrl-C meant for us must not kill moto before the
        # processes that use it are stopped; the last user stops it. No
        # parent-death signal either: other commands may still be using it
        # when the one that started it exits (a leftover moto is found and
        # reused, and stopped, by the next shop command).
        start_new_session=True,
    )
    log_file.close()
    url = f"http://{host}:{port}"
    deadline = time.time() + wait_seconds
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the AWS endpoint exited with {proc.returncode} (port {port} taken?); see {log_path}")
            if port_open(host, port, timeout=0.5) and endpoint_answers(url, timeout=5):
                return proc
            time.sleep(0.2)
        raise RuntimeError(f"the AWS endpoint did not answer on {url} within {wait_seconds}s; see {log_path}")
    except BaseException:  # including Ctrl-C while waiting: never leave it behind
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        raise


@contextlib.contextmanager
def aws_endpoint(endpoint_url="http://127.0.0.1:4566", log_path=None):
    """Yield an Endpoint that answers SQS at `endpoint_url` for the duration of the block.

    Uses an endpoint already there; otherwise starts scripts/aws_endpoint.py. On
    exit, stops an endpoint that this or another shop stack started if nobody
    else still uses it.
    A non-local endpoint (a real LocalStack elsewhere) is only checked."""
    host, port = _host_port(endpoint_url)
    if host not in LOCAL_HOSTS:
        if not endpoint_answers(endpoint_url):
            raise RuntimeError(f"No AWS endpoint answers at {endpoint_url}")
        yield Endpoint(endpoint_url)
        return
    log_path = Path(log_path or (ROOT / ".run" / "moto.log"))

    def start():
        log.info("starting the AWS endpoint (moto, patched) on %s:%s (log: %s)", host, port, log_path)
        proc = start_moto(host, port, log_path)
        log.info("the AWS endpoint is up (pid %s)", proc.pid)
        return proc.pid

    with shared_server("aws-endpoint", "the AWS endpoint", host, port, start=start, ours=_is_our_moto,
                       answers=lambda: endpoint_answers(endpoint_url, timeout=30),
                       refusal=f"something listens on {host}:{port} but does not answer SQS calls "
                               "(not LocalStack/moto?); free the port or set AWS_ENDPOINT_URL") as started:
        if started is None:
            log.info("AWS endpoint already answering at %s; using it", endpoint_url)
        yield Endpoint(endpoint_url, started)


# --- queues -----------------------------------------------------------------


@dataclass(frozen=True)
class QueueSpec:
    name: str
    max_receive_count: int = 5
    visibility_timeout: int = LOCAL_VISIBILITY_TIMEOUT

    @property
    def dlq_name(self):
        return f"{self.name}-dlq"


def local_visibility_timeout(environ=None):
    environ = os.environ if environ is None else environ
    return int(environ.get("SQS_VISIBILITY_TIMEOUT") or LOCAL_VISIBILITY_TIMEOUT)


def queue_specs(settings, visibility_timeout=None):
    """The shop's queues as configured: order ingest and cache invalidation."""
    visibility = local_visibility_timeout() if visibility_timeout is None else visibility_timeout
    return [QueueSpec(settings.get(q.setting), max_receive_count=q.max_receive_count, visibility_timeout=visibility)
            for q in QUEUES]


def queue_url(sqs, name):
    """The queue's URL, or None when it does not exist."""
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return None
    except Exception as exc:  # some emulators answer with a generic error code
        if "NonExistentQueue" in str(exc) or "QueueDoesNotExist" in str(exc):
            return None
        raise


def _create_or_update(sqs, name, attributes):
    url = queue_url(sqs, name)
    if url is None:
        try:
            url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        except Exception as exc:  # created concurrently, with other attributes
            url = queue_url(sqs, name)
            if url is None:
                raise exc
    # Real SQS refuses CreateQueue on an existing queue with other attributes,
    # so converge with SetQueueAttributes (idempotent).
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def queue_arn(sqs, url):
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def ensure_queue(sqs, spec):
    """Create (or converge) `spec.name` and its DLQ with redrive; returns (url, dlq_url)."""
    dlq_url = _create_or_update(sqs, spec.dlq_name, {
        "MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS),
        "VisibilityTimeout": str(spec.visibility_timeout),
    })
    redrive = json.dumps({"deadLetterTargetArn": queue_arn(sqs, dlq_url), "maxReceiveCount": str(spec.max_receive_count)})
    url = _create_or_update(sqs, spec.name, {
        "VisibilityTimeout": str(spec.visibility_timeout),
        "MessageRetentionPeriod": str(4 * 24 * 3600),
        "RedrivePolicy": redrive,
    })
    return url, dlq_url


def ensure_queues(sqs, specs):
    return {spec.name: ensure_queue(sqs, spec) for spec in specs}


def _depth(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed",
    ])["Attributes"]
    return {
        "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)),
    }


def peek(sqs, url, limit=100):
    """Up to `limit` visible messages, left visible afterwards (receive, then visibility 0)."""
    seen = {}
    handles = []
    while len(seen) < limit:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=30,
            AttributeNames=["All"], MessageAttributeNames=["All"],
        ).get("Messages", [])
        fresh = [m for m in batch if m["MessageId"] not in seen]
        if not fresh:
            break
        for message in fresh:
            seen[message["MessageId"]] = message
            handles.append(message["ReceiptHandle"])
    for start in range(0, len(handles), 10):
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0}
            for i, h in enumerate(handles[start:start + 10])
        ])
    return list(seen.values())[:limit]


def inspect_queues(sqs, specs, bodies=True, limit=100):
    """Depth of each queue and its DLQ, plus the DLQ message bodies."""
    report = []
    for spec in specs:
        url, dlq_url = queue_url(sqs, spec.name), queue_url(sqs, spec.dlq_name)
        entry = {"name": spec.name, "exists": url is not None, "dlq": spec.dlq_name}
        if url:
            entry["depth"] = _depth(sqs, url)
        if dlq_url:
            entry["dlq_depth"] = _depth(sqs, dlq_url)
            if bodies:
                entry["dlq_messages"] = [
                    {"messageId": m["MessageId"], "body": m["Body"],
                     "receiveCount": m.get("Attributes", {}).get("ApproximateReceiveCount")}
                    for m in peek(sqs, dlq_url, limit)
                ]
        report.append(entry)
    return report


def format_report(report):
    lines = []
    for entry in report:
        if not entry["exists"]:
            lines.append(f"{entry['name']}: (does not exist)")
            continue
        d = entry["depth"]
        lines.append(f"{entry['name']}: {d['visible']} visible, {d['in_flight']} in flight, {d['delayed']} delayed")
        if "dlq_depth" in entry:
            dd = entry["dlq_depth"]
            lines.append(f"  {entry['dlq']}: {dd['visible']} visible, {dd['in_flight']} in flight")
            for message in entry.get("dlq_messages", []):
                lines.append(f"    [{message['messageId']}] (received {message['receiveCount']}x) {message['body']}")
        else:
            lines.append(f"  {entry['dlq']}: (does not exist)")
    return "\n".join(lines)


def _to_send_attributes(message_attributes):
    out = {}
    for key, value in (message_attributes or {}).items():
        item = {"DataType": value["DataType"]}
        for field in ("StringValue", "BinaryValue"):
            if field in value:
                item[field] = value[field]
        out[key] = item
    return out


def redrive(sqs, spec, limit=None):
    """Move the DLQ's visible messages back to the source queue; returns how many moved.

    Done by hand (receive, send, delete) because emulators do not all
    implement StartMessageMoveTask. A message is deleted from the DLQ only
    after the source queue accepted it (at-least-once: a crash in between
    duplicates, never loses, which the idempotent consumers absorb)."""
    url, dlq_url = queue_url(sqs, spec.name), queue_url(sqs, spec.dlq_name)
    if url is None or dlq_url is None:
        raise RuntimeError(f"queue {spec.name} or {spec.dlq_name} does not exist")
    moved = 0
    while limit is None or moved < limit:
        batch = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            break
        entries = [{"Id": str(i), "MessageBody": m["Body"], "MessageAttributes": _to_send_attributes(m.get("MessageAttributes"))}
                   for i, m in enumerate(batch)]
        for entry in entries:
            if not entry["MessageAttributes"]:
                del entry["MessageAttributes"]
        sent = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        ok = {e["Id"] for e in sent.get("Successful", [])}
        if sent.get("Failed"):
            log.error("source queue refused %d message(s): %s", len(sent["Failed"]), sent["Failed"])
        done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch) if str(i) in ok]
        if done:
            sqs.delete_message_batch(QueueUrl=dlq_url, Entries=done)
        moved += len(done)
        if not done:
            break
    return moved


# --- customer sign-in (Cognito) ---------------------------------------------

CUSTOMER_POOL = "shop-customers"
DEMO_CUSTOMER = ("customer@example.com", "Customer-Passw0rd!")


def cognito_client(endpoint_url, region=REGION):
    import boto3

    return boto3.client("cognito-idp", endpoint_url=endpoint_url, region_name=region,
                        aws_access_key_id="test", aws_secret_access_key="test")


# What the app client reads into its ID tokens (infra/template.yml's too): the app mails a verified email only.
APP_CLIENT_ATTRIBUTES = ["email", "email_verified"]


def ensure_customer_pool(cognito, name=CUSTOMER_POOL):
    """The customers' user pool with its app client (password sign-in, no
    secret, as a mobile app has); (pool id, client id)."""
    pool = next((p for p in cognito.list_user_pools(MaxResults=60)["UserPools"] if p["Name"] == name), None)
    pool_id = pool["Id"] if pool else cognito.create_user_pool(
        PoolName=name, UsernameAttributes=["email"], AutoVerifiedAttributes=["email"])["UserPool"]["Id"]
    clients = cognito.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)["UserPoolClients"]
    client = next((c for c in clients if c["ClientName"] == "app"), None)
    settings = {"UserPoolId": pool_id, "ClientName": "app", "ReadAttributes": APP_CLIENT_ATTRIBUTES,
                "ExplicitAuthFlows": ["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]}
    if client is None:
        return pool_id, cognito.create_user_pool_client(GenerateSecret=False, **settings)["UserPoolClient"]["ClientId"]
    # A pool made before its tokens carried email_verified gets the attributes now.
    cognito.update_user_pool_client(ClientId=client["ClientId"], **settings)
    return pool_id, client["ClientId"]


def ensure_customer(cognito, pool_id, email, password, groups=(), email_verified=True):
    """A confirmed customer with a permanent password (what sign-up and
    confirmation would leave: the pool verifies the email with a code it
    mails); `email_verified=False`: one whose email the pool has not verified."""
    from botocore.exceptions import ClientError

    attributes = [{"Name": "email", "Value": email}, {"Name": "email_verified", "Value": str(email_verified).lower()}]
    try:
        cognito.admin_create_user(UserPoolId=pool_id, Username=email, MessageAction="SUPPRESS",
                                  UserAttributes=attributes)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "UsernameExistsException":
            raise
        cognito.admin_update_user_attributes(UserPoolId=pool_id, Username=email, UserAttributes=attributes)
    cognito.admin_set_user_password(UserPoolId=pool_id, Username=email, Password=password, Permanent=True)
    for group in groups:
        cognito.admin_add_user_to_group(UserPoolId=pool_id, Username=email, GroupName=group)


def sign_in(cognito, client_id, email, password):
    """The customer's ID token, as the app gets it from InitiateAuth."""
    answer = cognito.initiate_auth(ClientId=client_id, AuthFlow="USER_PASSWORD_AUTH",
                                   AuthParameters={"USERNAME": email, "PASSWORD": password})
    return answer["AuthenticationResult"]["IdToken"]


# --- order events (SNS) -------------------------------------------------------

ORDER_EVENTS_TOPIC = "shop-order-events"


def verify_sender(endpoint_url, email, region=REGION):
    """SES sends only from a verified identity; the local endpoint verifies at once."""
    import boto3

    ses = boto3.client("ses", endpoint_url=endpoint_url, region_name=region,
                       aws_access_key_id="test", aws_secret_access_key="test")
    ses.verify_email_identity(EmailAddress=email)


def ensure_topic(endpoint_url, name=ORDER_EVENTS_TOPIC, region=REGION):
    """The topic's ARN (CreateTopic is idempotent)."""
    import boto3

    sns = boto3.client("sns", endpoint_url=endpoint_url, region_name=region,
                       aws_access_key_id="test", aws_secret_access_key="test")
    return sns.create_topic(Name=name)["TopicArn"]


def _sns_client(endpoint_url, region=REGION):
    import boto3

    return boto3.client("sns", endpoint_url=endpoint_url, region_name=region,
                        aws_access_key_id="test", aws_secret_access_key="test")


def subscribe_queues(endpoint_url, values, region=REGION):
    """Subscribe every queue whose QueueDef names a `topic_setting` to that topic,
    as infra does in the cloud: raw message delivery (the body is the event) and,
    with `event_types`, a filter policy on the `event_type` attribute. `values`
    maps settings (queue and topic names) to their values here; a topic that is
    not set is skipped. Subscribing again is a no-op. Returns the subscription ARNs."""
    sns, sqs = _sns_client(endpoint_url, region), sqs_client(endpoint_url, region)
    subscriptions = []
    for q in QUEUES:
        topic = values.get(q.topic_setting) if q.topic_setting else None
        if not topic:
            continue
        attributes = {"RawMessageDelivery": "true"}
        if q.event_types:
            attributes["FilterPolicy"] = json.dumps({"event_type": list(q.event_types)})
        arn = queue_arn(sqs, sqs.get_queue_url(QueueName=values[q.setting])["QueueUrl"])
        subscriptions.append(sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=attributes,
                                           ReturnSubscriptionArn=True)["SubscriptionArn"])
    return subscriptions


def unsubscribe(endpoint_url, subscriptions, region=REGION):
    """Before their queues go: the local endpoint fails every publish to a topic with a dead subscriber."""
    sns = _sns_client(endpoint_url, region)
    for arn in subscriptions:
        with contextlib.suppress(Exception):
            sns.unsubscribe(SubscriptionArn=arn)

"""Shared fixtures. Integration and e2e tests run against the real MariaDB and
Redis on this machine, in a database and a Redis key prefix of their own
(created here, dropped afterwards); the shared services are never flushed."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pymysql
import pytest
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chalicelib import bootstrap  # noqa: E402
from chalicelib.ops import metrics  # noqa: E402
from chalicelib.adapters.migrate import migrate  # noqa: E402
from chalicelib.settings import DEFAULTS, Settings, parse_database_url, queue_names  # noqa: E402
from scripts import localstack  # noqa: E402
from scripts.stack import setup_queues  # noqa: E402

BASE_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "mysql://root:@127.0.0.1:3306/")
BASE_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The state store of the tests: another database of the same server, so a key written through the
# wrong role (cache or state) is not found where the code reads it.
BASE_REDIS_STATE_URL = os.environ.get("TEST_REDIS_STATE_URL", "redis://127.0.0.1:6379/1")
ADMIN_KEY = "shop-local-admin-key-0001"
DEV_KEY = "shop-local-dev-key-0001"
LIMITED_KEY = "shop-local-limited-key-0001"
pytest_plugins = ["tests.support.failed_tests"]
# Wiped before each test. Not `customers`: the app never deletes one, and a server process keeps
# the ids it has seen (CustomerDirectory), which a customer's order locks by.
TABLES = ("notifications_sent", "product_pairs", "related_events", "order_events", "order_items",
          "payment_references", "orders", "batch_results", "batches", "flash_sales", "products")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url(name):
    return BASE_DATABASE_URL.rstrip("/") + "/" + name


def _drop_database(url):
    target = parse_database_url(url)
    conn = pymysql.connect(host=target.host, port=target.port, user=target.user, password=target.password)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{target.database}`")
    finally:
        conn.close()


def _delete_queues(specs):
    settings = Settings()
    sqs = localstack.sqs_client(settings.aws_endpoint_url, settings.region)
    for spec in specs:
        for name in (spec.name, spec.dlq_name):
            url = localstack.queue_url(sqs, name)
            if url:
                sqs.delete_queue(QueueUrl=url)


def delete_prefix(redis_url, prefix):
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


@pytest.fixture(scope="session")
def test_env(tmp_path_factory):
    """Environment for this test session: its own database, key prefix and queues."""
    run_id = uuid.uuid4().hex[:10]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    env = {
        "STAGE": "local",
        "DATABASE_URL": _database_url(f"shop_test_{worker}_{run_id}"),
        "REDIS_URL": BASE_REDIS_URL,
        "REDIS_STATE_URL": BASE_REDIS_STATE_URL,
        "REDIS_KEY_PREFIX": f"test:{run_id}:",
        "AWS_ENDPOINT_URL": os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        **queue_names(f"test-{run_id}"),
        "APP_RATE_LIMIT": "true",
        "APP_API_KEYS": "true",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bootstrap.reset()
    migrate(bootstrap.database())
    # The AWS endpoint (moto unless one answers already) and this session's queues.
    with localstack.aws_endpoint(env["AWS_ENDPOINT_URL"]):
        specs = setup_queues(Settings())
        # The customers' user pool of this session (tokens: tests/e2e/test_customer_tokens.py).
        cognito = localstack.cognito_client(env["AWS_ENDPOINT_URL"])
        pool_id, app_client = localstack.ensure_customer_pool(cognito, f"shop-customers-{run_id}")
        topic = localstack.ensure_topic(env["AWS_ENDPOINT_URL"], f"test-{run_id}-order-events")
        pool_env = {"COGNITO_USER_POOL_ID": pool_id, "COGNITO_APP_CLIENT_IDS": app_client,
                    "ORDER_EVENTS_TOPIC_ARN": topic, "OPERATOR_EMAIL": f"ops-{run_id}@example.com",
                    "NOTIFY_FROM_EMAIL": f"shop-{run_id}@example.com"}
        saved.update({k: os.environ.get(k) for k in pool_env})
        env.update(pool_env)
        os.environ.update(pool_env)
        subscriptions = localstack.subscribe_queues(env["AWS_ENDPOINT_URL"], env)
        localstack.verify_sender(env["AWS_ENDPOINT_URL"], env["NOTIFY_FROM_EMAIL"])
        yield env
        localstack.unsubscribe(env["AWS_ENDPOINT_URL"], subscriptions)
        _delete_queues(specs)
        with contextlib.suppress(Exception):
            cognito.delete_user_pool(UserPoolId=pool_id)
    bootstrap.reset()
    _drop_database(env["DATABASE_URL"])
    for url in (BASE_REDIS_URL, BASE_REDIS_STATE_URL):
        delete_prefix(url, env["REDIS_KEY_PREFIX"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def aws_endpoint(test_env):
    """The LocalStack-compatible endpoint (moto in server mode, started if nothing answers)."""
    with localstack.aws_endpoint(test_env["AWS_ENDPOINT_URL"]) as endpoint:
        yield endpoint


@pytest.fixture
def fast_queue(sqs, test_env):
    """A queue of its own with its DLQ: 1 s visibility, DLQ after 3 receives
    (`sqs` is the requesting module's client fixture)."""
    spec = localstack.QueueSpec(f"{test_env['ORDER_QUEUE_NAME']}-{uuid.uuid4().hex[:8]}",
                                max_receive_count=3, visibility_timeout=1)
    url, dlq_url = localstack.ensure_queue(sqs, spec)
    yield spec, url, dlq_url
    for u in (url, dlq_url):
        with contextlib.suppress(Exception):
            sqs.delete_queue(QueueUrl=u)


@pytest.fixture
def clean_db(test_env):
    """An empty catalog and order book, and no cached copies, for each test."""
    # Clients built under another test's settings (a Chalice test client runs the
    # app with the local stage's config in os.environ) must not pick the database
    # to wipe: start from this session's environment, and check it.
    bootstrap.reset()
    assert bootstrap.settings().get("DATABASE_URL") == test_env["DATABASE_URL"], "not this session's database"
    conn = bootstrap.database().connect()
    try:
        # A plain cursor: wiping the tables between tests is no product write to cache.
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM {table}")
            for table in ("search_terms", "search_typos"):
                cur.execute("SHOW TABLES LIKE %s", (table,))
                if cur.fetchone():
                    cur.execute(f"DELETE FROM {table}")
    finally:
        conn.close()
    # Metrics this process emitted in the previous test are written by a flusher
    # thread up to a second later: write them now, before the window is wiped,
    # so they cannot land in this test's window (the dashboard test compares it).
    metrics.METRICS.flush()
    for url in (test_env["REDIS_URL"], test_env["REDIS_STATE_URL"]):
        delete_prefix(url, test_env["REDIS_KEY_PREFIX"])
    bootstrap.reset()
    yield test_env


def session_settings(test_env):
    """This session's settings as bootstrap.reset overrides: a Chalice test client
    (Client(app, stage_name="local")) puts the local stage's config in os.environ
    while it runs the app, and these must win over it."""
    return {k: v for k, v in test_env.items() if k in DEFAULTS}


@pytest.fixture
def catalog(clean_db):
    return bootstrap.catalog()


def make_product(catalog, **overrides):
    body = {"sku": f"SKU-{uuid.uuid4().hex[:12]}", "name": "Test product", "description": "",
            "category": "test", "price_cents": 1000, "stock": 10}
    body.update(overrides)
    return catalog.create(body)


class ApiClient:
    def __init__(self, base_url):
        self.base_url = base_url
        self.session = requests.Session()

    def request(self, method, path, key=DEV_KEY, **kwargs):
        headers = kwargs.pop("headers", {})
        if key:
            headers["x-api-key"] = key
        return self.session.request(method, self.base_url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def patch(self, path, **kwargs):
        return self.request("PATCH", path, **kwargs)


def start_server(env, port, log_path):
    """`scripts/serve.py` (chalice local) on `port`; returns the process once /health answers."""
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "serve.py"), "--port", str(port)],
        cwd=ROOT, env={**os.environ, **env, "PORT": str(port)}, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early; see {log_path}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log_path}")


@pytest.fixture(scope="session")
def live_server(test_env, tmp_path_factory):
    """The API over real HTTP: chalice local on a free port, on this session's database."""
    port = free_port()
    proc = start_server(test_env, port, tmp_path_factory.mktemp("server") / "server.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def api(live_server, clean_db):
    return ApiClient(live_server)

"""Fault-test fixtures: a throwaway mariadbd and redis-server of our own (never
the shared 3306/6379), each behind a TcpProxy the test can cut, blackhole or
take down; the app (in-process and over HTTP) reaches them only through the
proxies, so a dead proxy is a dead dependency and a killed server is a
server restart."""
import contextlib
import os
import uuid

import pytest

from chalicelib import bootstrap
from chalicelib.adapters.migrate import migrate
from chalicelib.settings import QUEUES, queue_names
from tests.support.tcp_proxy import TcpProxy
from scripts.servers import ThrowawayMariaDB, ThrowawayRedis

DB_NAME = "shop_faults"
TABLES = ("order_items", "payment_references", "orders", "batch_results", "batches", "products")


class Stack:
    def __init__(self, mariadb, redis, mysql_proxy, redis_proxy, env):
        self.mariadb = mariadb
        self.redis = redis
        self.mysql_proxy = mysql_proxy
        self.redis_proxy = redis_proxy
        self.env = env

    def heal(self):
        """Every dependency up and reachable, nothing cached in-process."""
        if not self.mariadb.running:
            self.mariadb.start()
        if not self.redis.running:
            self.redis.start()
        self.mysql_proxy.restore()
        self.redis_proxy.restore()
        bootstrap.reset()

    def clean(self):
        for table in TABLES:
            self.mariadb.execute(f"DELETE FROM {table}", database=DB_NAME)
        self.mariadb.execute("DELETE FROM search_terms", database=DB_NAME)
        import redis

        client = redis.Redis(port=self.redis.port)
        client.flushall()  # our own throwaway server
        client.close()


def _create_queues(env):
    """Best effort: the invalidation and order-ingest queues on the local
    SQS endpoint, so deferred invalidations and async batches have somewhere to go."""
    try:
        import boto3
        from botocore.config import Config

        sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test",
                           config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1}))
        names = [q.setting for q in QUEUES]
        urls = [sqs.create_queue(QueueName=env[name])["QueueUrl"] for name in names]
        return sqs, urls
    except Exception:
        return None, []


# Package scope: the throwaway servers and the environment pointing at them are
# gone once tests/faults is done, so later tests see their own session's settings.
@pytest.fixture(scope="package")
def fault_stack(tmp_path_factory):
    mariadb = ThrowawayMariaDB(tmp_path_factory.mktemp("mariadb"))
    redis_server = ThrowawayRedis()
    mysql_proxy = redis_proxy = None
    saved = {}
    sqs, urls = None, []
    try:
        mariadb.start()
        redis_server.start()
        mariadb.execute(f"CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4")
        mysql_proxy = TcpProxy(mariadb.port)
        redis_proxy = TcpProxy(redis_server.port)
        run_id = uuid.uuid4().hex[:8]
        env = {
            "STAGE": "local",
            "DATABASE_URL": f"mysql://root:@127.0.0.1:{mysql_proxy.port}/{DB_NAME}",
            "REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0",
            "REDIS_STATE_URL": "",   # the one throwaway Redis is the cache and the state store
            "REDIS_KEY_PREFIX": "",
            "AWS_ENDPOINT_URL": os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            **queue_names(f"faults-{run_id}"),
            "APP_RATE_LIMIT": "true",
            "APP_API_KEYS": "true",
            "INVENTORY_STRATEGY": "guarded",
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        bootstrap.reset()
        migrate(bootstrap.database())
        sqs, urls = _create_queues(env)
        yield Stack(mariadb, redis_server, mysql_proxy, redis_proxy, env)
    finally:
        bootstrap.reset()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for url in urls:
            with contextlib.suppress(Exception):
                sqs.delete_queue(QueueUrl=url)
        for thing in (mysql_proxy, redis_proxy, redis_server, mariadb):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()


@pytest.fixture
def stack(fault_stack, monkeypatch):
    """The fault stack, healed and emptied before and healed after each test."""
    fault_stack.heal()
    fault_stack.clean()
    bootstrap.reset()
    yield fault_stack
    fault_stack.heal()


def seed_products(n=8, stock=200, price=500):
    catalog = bootstrap.catalog()
    products = [catalog.create({"sku": f"F-{uuid.uuid4().hex[:10]}", "name": f"Fault product {i}",
                                "category": "faults", "price_cents": price + i, "stock": stock}) for i in range(n)]
    return {p["id"]: p["stock"] for p in products}

"""SnapStart's runtime hooks (chalicelib/snapstart.py), run as the Lambda
runtime runs them: every environment restored from one snapshot must serve
with connections of its own and draw its own random numbers.

The packaged API from the zip, on the runtime's interpreter with the runtime's
hooks library (requirements-runtime.txt), snapshotted and restored by
tests/support/lambda_driver.py --snapstart; and the hooks in this process
against connections it holds, on the real MariaDB and Redis."""
import pytest
from snapshot_restore_py import get_after_restore, get_before_snapshot

from chalicelib import bootstrap, snapstart  # noqa: F401 - registers the hooks, as app.py does
from tests.support.lambda_environments import (ExecutionEnvironment, body, cloud_endpoints, function_environment,
                                               open_connections, packaged_functions, proxy_event, runtime_python,
                                               sqs_event)

MYSQL_PORT, REDIS_PORT = 3306, 6379


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    return packaged_functions(tmp_path_factory.mktemp("snapstart"))


@pytest.fixture(scope="module")
def endpoints(test_env):
    with cloud_endpoints(test_env) as values:
        yield values


def _snapshot(packaged, endpoints, name, log):
    """Function `name` from the package, initialised and snapshotted (its before-snapshot hooks run)."""
    template, task_root = packaged
    properties = template["Resources"][name]["Properties"]
    assert properties["SnapStart"] == {"ApplyOn": "PublishedVersions"}
    runtime = runtime_python(properties["Runtime"][len("python"):])
    env = function_environment(properties, endpoints, task_root, name)
    return ExecutionEnvironment(runtime, task_root, env, log, snapstart=True)


@pytest.fixture(scope="module")
def snapshot(packaged, endpoints, tmp_path_factory):
    """The packaged API's snapshot."""
    environment = _snapshot(packaged, endpoints, "APIHandler", tmp_path_factory.mktemp("api") / "snapshot.log")
    yield environment
    environment.close()


def restored(snapshot):
    """An environment restored from the snapshot, its first request served; ends it."""
    restore = snapshot.restore()
    try:
        health = snapshot.invoke(proxy_event("GET", "/health"))
        assert health["statusCode"] == 200 and body(health)["status"] == "ok", health
        missing = snapshot.invoke(proxy_event("GET", "/products/999999"))  # MySQL, through the cache (Redis)
        assert missing["statusCode"] == 404, missing
        restore["mysql"] = open_connections(restore["pid"], MYSQL_PORT)
        restore["redis"] = open_connections(restore["pid"], REDIS_PORT)
    finally:
        snapshot.end_restored()
    return restore


def test_each_restored_environment_connects_anew_and_draws_its_own_random_numbers(snapshot):
    assert snapshot.snapshot["hooks"] >= 1, "no before-snapshot hook registered"
    first, second = restored(snapshot), restored(snapshot)
    for restore in (first, second):
        assert restore["hooks"] >= 1, "no after-restore hook registered"
        assert restore["mysql"] >= 1 and restore["redis"] >= 1, restore  # its own, opened after the restore
    # Without a reseed every copy of the snapshot would draw the same jitter.
    assert len({snapshot.snapshot["random"], first["random"], second["random"]}) == 3
    # The snapshot itself holds no connection a restored copy could inherit.
    assert open_connections(snapshot.proc.pid, MYSQL_PORT) == 0
    assert open_connections(snapshot.proc.pid, REDIS_PORT) == 0


def test_a_restored_consumer_serves_its_queue(packaged, endpoints, test_env, tmp_path):
    consumer = _snapshot(packaged, endpoints, "HandleOrderIngest", tmp_path / "ingest.log")
    try:
        restore = consumer.restore()
        assert restore["hooks"] >= 1
        # Not an order message: recorded as a permanent failure of its batch (MySQL), not retried.
        event = sqs_event("sqs_order_ingest.json", test_env["ORDER_QUEUE_NAME"], ["not an order"])
        assert consumer.invoke(event) == {"batchItemFailures": []}
        assert open_connections(restore["pid"], MYSQL_PORT) >= 1
        consumer.end_restored()
        assert open_connections(consumer.proc.pid, MYSQL_PORT) == 0
    finally:
        consumer.close()


def _run_before_snapshot():
    for func, args, kwargs in reversed(get_before_snapshot()):  # as the runtime runs them
        func(*args, **kwargs)


def _run_after_restore():
    for func, args, kwargs in get_after_restore():
        func(*args, **kwargs)


def _connection_id():
    return bootstrap.database().query("SELECT CONNECTION_ID() AS id")[0]["id"]


def test_the_hooks_close_this_process_clients_and_the_next_ones_are_new(clean_db):
    before = _connection_id()
    database = bootstrap.database()
    [mysql] = list(database._idle.queue)  # noqa: SLF001 - the pooled connection the query used
    redis_client = bootstrap.redis_gateway().client
    assert redis_client.ping()
    pooled = [c for c in redis_client.connection_pool._connections if c._sock is not None]  # noqa: SLF001
    assert pooled and mysql.open

    _run_before_snapshot()
    # Closed, not left open in a snapshot every restored copy would share.
    assert not mysql.open
    assert all(c._sock is None for c in pooled)  # noqa: SLF001
    _run_after_restore()

    assert bootstrap.database() is not database
    assert _connection_id() != before
    assert bootstrap.redis_gateway().client.ping()

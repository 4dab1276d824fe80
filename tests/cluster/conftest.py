"""The Redis-touching suites on a real Redis Cluster: three redis-servers of our own in
cluster mode (scripts/servers.py ThrowawayRedisCluster), started once for this package
and gone after it. `clean_db` here points the app's cache and state store at the
cluster (both roles on it, as their key names never overlap), so tests imported from
tests/integration run unchanged against it; a CROSSSLOT anywhere fails them."""
import pytest

from chalicelib import bootstrap
from scripts.servers import ThrowawayRedisCluster


@pytest.fixture(scope="package")
def redis_cluster():
    cluster = ThrowawayRedisCluster(3)
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def every_master_up(redis_cluster):
    """Each test starts with all three masters: one a test killed would otherwise still be
    dead in the next, and a key that test thinks live would fail there."""
    redis_cluster.restart_killed()


@pytest.fixture
def clean_db(clean_db, redis_cluster, monkeypatch):
    """This session's database, emptied, with both Redis roles on the cluster (emptied too)."""
    redis_cluster.flush()
    env = {"REDIS_URL": redis_cluster.url, "REDIS_STATE_URL": redis_cluster.url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bootstrap.reset()
    assert bootstrap.redis_gateway().cluster and bootstrap.state_gateway().cluster
    yield {**clean_db, **env}
    bootstrap.reset()

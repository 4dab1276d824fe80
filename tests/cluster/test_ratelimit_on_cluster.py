"""The token-bucket tests (tests/integration/test_ratelimit_bucket.py) on a Redis Cluster:
a key's bucket and its people's share the key id as hash tag, so one script takes from both."""
import uuid

import pytest

from chalicelib.adapters.cache import RedisGateway
from tests.integration.test_ratelimit_bucket import (  # noqa: F401 - fixtures and test bodies run here again
    clock,
    test_a_person_past_their_bucket_leaves_the_apps_key_to_everyone_else,
    test_bucket_refills_to_burst_and_no_further,
    test_concurrent_clients_on_one_key_never_exceed_the_bucket,
    test_each_plan_allows_its_burst_then_its_rate,
    test_keys_are_independent,
    test_refused_requests_do_not_consume_tokens,
    test_the_keys_bucket_stays_the_outer_limit_of_every_person,
    test_without_the_apps_key_bucket_only_the_person_is_limited,
)

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
def gateway(redis_cluster):
    gw = RedisGateway(redis_cluster.url, timeout=2, prefix=f"rl-unit:{uuid.uuid4().hex[:8]}:")
    assert gw.cluster
    yield gw
    gw.close()

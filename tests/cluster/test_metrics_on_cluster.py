"""The metrics window's tests (tests/integration/test_metrics_window.py) on a Redis Cluster:
its seconds share the window's namespace as hash tag, so a flush stays one MULTI on one master."""
import uuid

import pytest

from chalicelib import bootstrap
from chalicelib.ops.metrics import MetricsWindow
from tests.integration.test_metrics_window import (  # noqa: F401 - test bodies run here again
    Clock,
    test_flush_is_one_round_trip,
    test_window_excludes_older_seconds,
    test_window_in_redis_merges_seconds_and_processes,
)

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
def window(clean_db):
    assert bootstrap.redis_gateway().cluster
    return MetricsWindow(bootstrap.redis_gateway, namespace=f"stats-ut-{uuid.uuid4().hex[:8]}", clock=Clock())

"""The flash-sale invariant tests (tests/integration/test_flash_sale*.py) on a Redis
Cluster: every gate key carries the `{flash}` hash tag, so the admission, settle,
sweep and reconcile scripts run on one master; none oversells, loses a unit or
writes an order twice."""
import pytest

from tests.integration.test_flash_sale import (  # noqa: F401 - fixtures and test bodies run here again
    flash_queue, sqs,
    test_a_batch_is_admitted_in_one_round_trip_in_order,
    test_a_crash_between_commit_and_settle_is_repaired_by_the_redelivery,
    test_a_replay_gets_the_same_answer_and_other_lines_conflict,
    test_an_expired_lease_returns_the_units_and_a_late_message_takes_them_again,
    test_concurrent_buyers_with_duplicate_submits_never_oversell,
    test_duplicate_delivery_writes_once,
    test_reconcile_sets_the_gate_to_what_mysql_can_still_sell,
    test_redis_that_admitted_more_than_mysql_has_never_oversells,
    test_sale_orders_are_admitted_in_redis_and_written_by_the_consumer,
    test_sold_out_and_per_customer_limit_are_answered_by_the_gate,
)
from tests.integration.test_flash_sale_paths import (  # noqa: F401
    test_cancels_return_units_to_the_sale_exactly_once_racing_reconcile,
)

pytestmark = pytest.mark.redis_cluster

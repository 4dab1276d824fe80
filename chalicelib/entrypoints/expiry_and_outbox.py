"""The `lifecycle` function: every minute, it expires due orders and relays
the outbox until its invocation is nearly out of time; and the order-expiry
consumer, which acts on the per-order timers the relay starts
(chalicelib/service/expiry_and_outbox.py)."""
import json
import time

from chalicelib import bootstrap
from chalicelib.entrypoints.sqs import _partial_response
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import MetricUnit, emit
from chalicelib.service import expiry_and_outbox

# Left for the last pass to finish before Lambda's timeout.
MARGIN_SECONDS = 10


def handle_lifecycle(event, context=None):
    remaining = context.get_remaining_time_in_millis() / 1000 if context else 0
    until = time.monotonic() + max(0.0, remaining - MARGIN_SECONDS)
    pruned = expiry_and_outbox.prune_dedupe_records(bootstrap.outbox())
    if pruned:
        emit("DedupeRecordsPruned", pruned)
    expired, published = expiry_and_outbox.run(bootstrap.orders(), bootstrap.outbox(), bootstrap.event_publisher(),
                                               until, timers=bootstrap.expiry_timers())
    waited = expiry_and_outbox.oldest_unpublished_seconds(bootstrap.outbox())
    emit("OutboxOldestSeconds", waited, unit=MetricUnit.Seconds)
    return {"expired": expired, "published": published, "pruned": pruned, "outbox_oldest_seconds": round(waited, 1)}


def timer_order_id(body):
    """The order id of a timer message `{"order_id": <positive int>}`; ValueError otherwise."""
    try:
        message = json.loads(body)
    except (TypeError, ValueError):
        raise ValueError("not JSON") from None
    order_id = message.get("order_id") if isinstance(message, dict) else None
    if type(order_id) is not int or order_id < 1:
        raise ValueError("order_id must be a positive integer")
    return order_id


def handle_expiry_event(event, context=None):
    """The order-expiry Lambda. A body that is not a timer is logged and dropped
    (the sweep still expires any order); MySQL or SQS unavailable fails the record
    so SQS delivers it again."""
    orders, outbox, timers = bootstrap.orders(), bootstrap.outbox(), bootstrap.expiry_timers()

    def record_handler(record):
        try:
            order_id = timer_order_id(record.body)
        except ValueError as exc:
            logger.error("expiry timer dropped", extra={"message_id": record.message_id, "reason": str(exc),
                                                        "body": record.body[:500]})
            emit("ExpiryTimersRejected", 1)
            return None
        outcome = expiry_and_outbox.fire_expiry_timer(orders, outbox, timers, order_id)
        emit("ExpiryTimersFired", 1, outcome=outcome)
        return outcome

    return _partial_response(event, context, record_handler)

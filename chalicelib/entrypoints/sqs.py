"""The SQS-triggered Lambda handlers: partial batch responses around the
order-ingest consumer (its records placed together), the notification consumer
(its emails sent together) and, through Powertools, the cache-invalidation apply
and the other consumers."""
import json
from collections import Counter

from chalicelib import bootstrap
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit
from chalicelib.service.async_orders import TransientFailure

# Records not started with less than this left of the invocation are handed back
# to SQS (reported failed) instead of being cut off by the Lambda timeout.
TIME_RESERVE_MS = 5000


def _partial_response(event, context, record_handler):
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    # raise_on_entire_batch_failure=False: the answer is always the list of failed
    # ids (as the local pollers and Lambda's ReportBatchItemFailures expect), even
    # when every record failed; the effect (all retried) is the same as raising.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)


def handle_order_event(event, context=None, ingest=None):
    """The order-ingest Lambda: `{"batchItemFailures": [{"itemIdentifier": id}...]}`. The
    records of one invocation are placed together (OrderIngest.process_all): their orders in
    one transaction."""
    ingest = ingest or bootstrap.order_ingest()
    records = event.get("Records", [])
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is not None and remaining() < TIME_RESERVE_MS:
        emit("IngestRecordsDeferred", len(records))
        answers = {r["messageId"]: TransientFailure("Too little time left in this invocation; SQS will redeliver "
                                                     "the message.") for r in records}
    else:
        answers = ingest.process_all([(r["body"], r["messageId"]) for r in records])
    failed = []
    for record in records:
        exc = answers[record["messageId"]]
        if not isinstance(exc, Exception):
            continue
        failed.append(record["messageId"])
        transient = isinstance(exc, (ServiceUnavailable, TransientFailure))
        (logger.warning if transient else logger.exception)(
            "order-ingest record failed; SQS will redeliver it",
            extra={"message_id": record["messageId"], "error": f"{type(exc).__name__}: {exc}",
                   "receive_count": record.get("attributes", {}).get("ApproximateReceiveCount")},
            exc_info=None if transient else exc)
        emit("IngestRecordsFailed", 1, reason="transient" if transient else "unexpected")
    emit("IngestRecords", len(records))
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


def handle_flash_event(event, context=None, writer=None):
    """The flash-order Lambda: every reservation of the SQS batch is written in one
    transaction (service/flash_writer.py FlashWriter). A body that is not a flash
    message is logged and dropped (nothing in it was accepted by the gate); if the
    write or the settle fails, every record is reported failed and SQS redelivers
    them, which is safe: a written reservation finds its own order."""
    from chalicelib.domain import flash_message

    writer = writer or bootstrap.flash_writer()
    records, reservations = [], []
    for record in event.get("Records", []):
        try:
            decoded = flash_message.decode(record["body"])
        except ValueError as exc:
            logger.error("flash-order message dropped", extra={"message_id": record.get("messageId"),
                                                               "reason": str(exc), "body": str(record["body"])[:500]})
            emit("FlashMessagesRejected", 1)
            continue
        records.append(record["messageId"])
        reservations.extend(decoded)
    if not reservations:
        return {"batchItemFailures": []}
    try:
        writer.write(reservations)
    except Exception as exc:
        transient = isinstance(exc, ServiceUnavailable)
        (logger.warning if transient else logger.exception)(
            "flash-order batch failed; SQS will redeliver it",
            extra={"records": len(records), "error": f"{type(exc).__name__}: {exc}"})
        emit("FlashRecordsFailed", len(records), reason="transient" if transient else "unexpected")
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in records]}
    emit("FlashRecords", len(records))
    return {"batchItemFailures": []}


def handle_related_event(event, context=None, related=None):
    """The related-products Lambda: the co-purchase counts of every order event
    of the SQS batch in one transaction, once per event id. A body that is not
    an order event is logged and reported failed, so it is kept: after 5
    receives it waits in the DLQ (its alarm fires) for someone to look at it,
    never silently dropped. If the transaction fails (MySQL unavailable), every
    event of the batch is reported failed and SQS redelivers them."""
    from chalicelib.domain import related as rules

    related = related or bootstrap.related_products()
    failed, decoded = [], []
    for record in event.get("Records", []):
        try:
            decoded.append((record["messageId"], rules.decode(record["body"])))
        except ValueError as exc:
            logger.error("related-products message rejected; it stays on the queue, then the DLQ",
                         extra={"message_id": record.get("messageId"), "reason": str(exc),
                                "body": str(record.get("body"))[:500],
                                "receive_count": record.get("attributes", {}).get("ApproximateReceiveCount")})
            emit("RelatedMessagesRejected", 1)
            failed.append(record["messageId"])
    if decoded:
        try:
            outcomes = related.apply_many([e for _, e in decoded])
        except Exception as exc:
            transient = isinstance(exc, ServiceUnavailable)
            (logger.warning if transient else logger.exception)(
                "related-products batch failed; SQS will redeliver it",
                extra={"records": len(decoded), "error": f"{type(exc).__name__}: {exc}"})
            failed += [message_id for message_id, _ in decoded]
        else:
            for outcome, n in Counter(outcomes.values()).items():
                emit("RelatedEvents", n, outcome=outcome)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


def handle_invalidation_event(event, context=None):
    """The cache-invalidation Lambda: a body that is not JSON is logged and dropped;
    Redis or MySQL unavailable fails the record so SQS retries it."""
    invalidator, reads = bootstrap.invalidator(), bootstrap.product_reads()

    def record_handler(record):
        try:
            body = json.loads(record.body)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except (ValueError, TypeError) as exc:
            logger.error("cache-invalidation message dropped", extra={"message_id": record.message_id,
                                                                      "reason": str(exc), "body": record.body[:500]})
            return None
        invalidator.handle_message(reads, body)
        return None

    return _partial_response(event, context, record_handler)


def handle_notification_event(event, context=None, notifier=None):
    """The notifications Lambda (service/notifications.py): one email per mailed event, the
    records of an invocation handled together (their emails sent at once). A failed send
    (SES, MySQL) fails its record: SQS redelivers it, then the DLQ after 5 receives. A
    message that is not an event is reported (logged, `NotificationMessagesRejected`) and
    failed too, so it lands in the DLQ after its receives instead of being dropped: nothing
    is lost, nothing crashes."""
    from chalicelib.domain.errors import ValidationError

    notifier = notifier or bootstrap.notifier()
    records = event.get("Records", [])
    outcomes = notifier.process_all([r["body"] for r in records])
    failed = []
    for record, outcome in zip(records, outcomes):
        if not isinstance(outcome, Exception):
            continue
        failed.append(record["messageId"])
        if isinstance(outcome, ValidationError):
            logger.error("notification message is not an order event; it goes to the DLQ",
                         extra={"message_id": record["messageId"], "reason": outcome.message,
                                "body": str(record["body"])[:500]})
            emit("NotificationMessagesRejected", 1)
            continue
        logger.warning("notification not sent; SQS will redeliver it",
                       extra={"message_id": record["messageId"], "error": f"{type(outcome).__name__}: {outcome}",
                              "receive_count": record.get("attributes", {}).get("ApproximateReceiveCount")})
        emit("NotificationsFailed", 1)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}

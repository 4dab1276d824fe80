"""Async batch orders (docs/api.md: `POST /orders/batch?mode=async`, `GET /batches/{id}`,
"SQS messages"): the producer side that queues a batch, the consumer side that
the order-ingest SQS handler runs, and the batch read model.

Order-ingest message body (JSON, one message per <= 10 orders):

    {"batch_id": str?,            # absent: a message put on the queue by another system
     "orders": [order, ...],      # exactly the order objects of POST /orders/batch
     "positions": [int, ...]?,    # each order's index in its batch (default 0..n-1)
     "order_count": int?,         # orders in the whole batch (default len(orders))
     "enqueued_at": float?}       # epoch seconds at enqueue time (latency metric)

The message carries everything the consumer needs to record the batch itself,
so the API can accept a batch while MySQL is down (docs/design.md invariant 6) and
the `batches` row is created by whichever side reaches MySQL first.

A message without `batch_id` is recorded under `sqs-<messageId>` (the SQS
message id is stable across redeliveries, so the results of a redelivery land
on the same rows); `GET /batches/sqs-<messageId>` shows them and each order is
readable by `GET /orders/{order_id}` as usual.

Failure classes (what the handler reports to SQS):
- transient -> the record fails, SQS redelivers it, after maxReceiveCount it is
  in the DLQ: MySQL unreachable (`ServiceUnavailable`), lock contention that
  outlived the in-transaction retries (a per-order result with code
  SERVICE_UNAVAILABLE is *not* recorded; the message is retried instead), and
  any unexpected error (a bug must not silently drop orders).
- permanent -> recorded as failed results on the batch and the message is done:
  a body that is not JSON or not a valid batch (VALIDATION_ERROR /
  PAYLOAD_TOO_LARGE for every position it carries, or for position 0 of
  `sqs-<messageId>` when it carries none), and per-order business failures
  (VALIDATION_ERROR, PRODUCT_NOT_FOUND, INSUFFICIENT_STOCK, IDEMPOTENCY_CONFLICT).

Exactly-once effect: orders are placed through `OrderService.place_all` (the
same loop as sync batches), whose
unique key (user_id, client_order_id) makes a second placement a replay
(`duplicate: true`, original order_id, nothing reserved). Positions that already
have a recorded result are not placed again, and results are upserted per
(batch_id, position), so duplicate deliveries and redeliveries after a crash
between commit and delete change nothing. Only if the process dies between an
order's commit and the write of its result does the redelivery record that
position as `duplicate: true` (with the original order_id).
"""
import json
import logging
import time
import uuid

from . import bootstrap
from .errors import BatchNotFound, PayloadTooLarge, ServiceUnavailable, ShopError, ValidationError
from .observability import emit, logger
from .orders import InvalidOrder, failed, parse_batch

log = logging.getLogger(__name__)

ORDERS_PER_MESSAGE = 10
# SQS takes 256 KiB per message (and per SendMessageBatch call); keep a margin.
MAX_MESSAGE_BYTES = 200_000
MESSAGE_FIELDS = ("batch_id", "orders", "positions", "order_count", "enqueued_at")
# Records not started with less than this left of the invocation are handed back
# to SQS (reported failed) instead of being cut off by the Lambda timeout.
TIME_RESERVE_MS = 5000


class TransientFailure(Exception):
    """Some orders of the message could not be placed for a transient reason: retry the message."""


def new_batch_id():
    return uuid.uuid4().hex


# --- producer (the API) -----------------------------------------------------


def chunk_messages(batch_id, orders, enqueued_at=None):
    """Message bodies of <= 10 orders (and <= MAX_MESSAGE_BYTES) each, in batch order."""
    enqueued_at = time.time() if enqueued_at is None else enqueued_at
    messages, current, positions = [], [], []

    def flush():
        if current:
            messages.append({"batch_id": batch_id, "orders": list(current), "positions": list(positions),
                             "order_count": len(orders), "enqueued_at": enqueued_at})
            current.clear()
            positions.clear()

    size = 0
    for position, order in enumerate(orders):
        order_bytes = len(json.dumps(order, ensure_ascii=False).encode())
        if order_bytes > MAX_MESSAGE_BYTES - 1000:
            raise PayloadTooLarge(f"orders[{position}] is {order_bytes} bytes; an async order must stay below "
                                  f"{MAX_MESSAGE_BYTES - 1000} bytes.")
        if current and (len(current) == ORDERS_PER_MESSAGE or size + order_bytes > MAX_MESSAGE_BYTES - 1000):
            flush()
            size = 0
        current.append(order)
        positions.append(position)
        size += order_bytes + 8
    flush()
    return messages


def submit(body, publisher=None, batches=None, queue_name=None):
    """Queue a validated batch: 202 body. Whole-request errors raise before anything is sent.

    The messages go to SQS first, then the batch row is recorded; if MySQL is
    down the batch is still accepted (the consumer records the row)."""
    parse_batch(body)  # the very same whole-request validation as the sync path
    publisher = publisher or bootstrap.publisher()
    batches = batches or BatchStore(bootstrap.database())
    queue_name = queue_name or bootstrap.settings().get("ORDER_QUEUE_NAME")
    batch_id = new_batch_id()
    orders = body["orders"]
    messages = chunk_messages(batch_id, orders)
    try:
        publisher.send_batch(queue_name, messages)
    except Exception as exc:
        logger.exception("could not queue async batch", extra={"batch_id": batch_id})
        raise ServiceUnavailable("The order queue is unavailable; the batch was not accepted. Retry shortly.") from exc
    recorded = True
    try:
        batches.ensure(batch_id, len(orders))
    except ServiceUnavailable:
        recorded = False  # the consumer records it when MySQL is back
        logger.warning("async batch queued while MySQL is down; the consumer will record it",
                       extra={"batch_id": batch_id})
    emit("AsyncBatchesQueued", 1, recorded=str(recorded).lower())
    return {"batch_id": batch_id, "status": "queued"}


# --- batch store (read model) -------------------------------------------------


class BatchStore:
    def __init__(self, db):
        self.db = db

    @staticmethod
    def _ensure(cur, batch_id, order_count):
        cur.execute("INSERT INTO batches (id, order_count, status) VALUES (%s, %s, 'queued') "
                    "ON DUPLICATE KEY UPDATE id = id", (batch_id, order_count))

    def ensure(self, batch_id, order_count):
        self.db.run(lambda cur: self._ensure(cur, batch_id, order_count))

    def recorded_positions(self, batch_id, positions):
        if not positions:
            return set()
        placeholders = ",".join(["%s"] * len(positions))
        rows = self.db.query(f"SELECT position FROM batch_results WHERE batch_id = %s AND position IN ({placeholders})",
                             [batch_id, *positions])
        return {row["position"] for row in rows}

    def record(self, batch_id, order_count, results):
        """Record {position: OrderResult} for the batch (creating its row if needed) and
        bring its status up to date, in one transaction. Returns the status.

        A position's result is written once: when two deliveries of one message
        race, the first recorded result stays (the other is a replay of it)."""

        def work(cur):
            self._ensure(cur, batch_id, order_count)
            # Serialises the writers of one batch so the count below is exact.
            cur.execute("SELECT order_count FROM batches WHERE id = %s FOR UPDATE", (batch_id,))
            expected = cur.fetchone()["order_count"]
            if results:
                cur.executemany(
                    "INSERT INTO batch_results (batch_id, position, result) VALUES (%s, %s, %s) "
                    "ON DUPLICATE KEY UPDATE batch_id = batch_id",
                    [(batch_id, pos, json.dumps(res.to_api(), ensure_ascii=False)) for pos, res in sorted(results.items())],
                )
            cur.execute("SELECT COUNT(*) AS n FROM batch_results WHERE batch_id = %s LOCK IN SHARE MODE", (batch_id,))
            count = cur.fetchone()["n"]
            status = "done" if count >= expected else ("processing" if count else "queued")
            cur.execute("UPDATE batches SET status = %s, updated_at = CURRENT_TIMESTAMP(6) WHERE id = %s",
                        (status, batch_id))
            return status

        return self.db.run(work)

    def get(self, batch_id):
        """API body for GET /batches/{batch_id}; BatchNotFound if unknown."""

        def work(cur):
            cur.execute("SELECT id, order_count, created_at, updated_at FROM batches WHERE id = %s", (batch_id,))
            batch = cur.fetchone()
            if batch is None:
                raise BatchNotFound(f"Batch {batch_id} does not exist.", batch_id=batch_id)
            cur.execute("SELECT result FROM batch_results WHERE batch_id = %s ORDER BY position", (batch_id,))
            return batch, [json.loads(row["result"]) for row in cur.fetchall()]

        batch, results = self.db.run(work)
        # Derived from the rows rather than the status column, so it is exact even
        # while two consumers of the same batch race.
        count, expected = len(results), batch["order_count"]
        status = "done" if count >= expected else ("processing" if count else "queued")
        created = sum(1 for r in results if r["status"] == "created")
        return {"batch_id": batch["id"], "status": status, "order_count": expected, "results": results,
                "summary": {"created": created, "failed": count - created, "pending": max(0, expected - count)}}


def get_batch(batch_id):
    if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= 64:
        raise BatchNotFound(f"Batch {batch_id} does not exist.", batch_id=batch_id)
    return BatchStore(bootstrap.database()).get(batch_id)


# --- consumer (the order-ingest handler) ---------------------------------------


class IngestMessage:
    """A decoded message: batch id, order count and (position, raw order) pairs.
    `error` is set when the body is not a usable batch (a permanent failure)."""

    def __init__(self, batch_id, order_count, positions, orders, enqueued_at=None, error=None):
        self.batch_id = batch_id
        self.order_count = order_count
        self.positions = positions
        self.orders = orders
        self.enqueued_at = enqueued_at
        self.error = error


def _int_list(value, what):
    if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in value):
        raise ValidationError(f"'{what}' must be a list of non-negative integers.", details={"field": what})
    return value


def decode_message(body, message_id):
    """Parse a message body; never raises (a bad body is a permanent failure to record)."""
    fallback_id = f"sqs-{message_id}"
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:
        return IngestMessage(fallback_id, 1, [0], [], error=ValidationError(f"The message body is not valid JSON: {exc}."))
    if not isinstance(data, dict):
        return IngestMessage(fallback_id, 1, [0], [], error=ValidationError("The message body must be a JSON object."))
    batch_id = data.get("batch_id", None)
    if batch_id is not None and not (isinstance(batch_id, str) and 1 <= len(batch_id) <= 64 and batch_id.isprintable()):
        return IngestMessage(fallback_id, 1, [0], [],
                             error=ValidationError("'batch_id' must be a string of 1 to 64 printable characters."))
    batch_id = batch_id or fallback_id
    orders = data.get("orders")
    try:
        unknown = sorted(set(data) - set(MESSAGE_FIELDS))
        if unknown:
            raise ValidationError(f"Unknown field(s) in the message: {', '.join(unknown)}.", details={"fields": unknown})
        if not isinstance(orders, list):
            raise ValidationError("'orders' must be a non-empty list of orders.", details={"field": "orders"})
        positions = _int_list(data["positions"], "positions") if "positions" in data else list(range(len(orders)))
        if len(positions) != len(orders) or len(set(positions)) != len(positions):
            raise ValidationError("'positions' must give one distinct position per order.", details={"field": "positions"})
        order_count = data.get("order_count", len(orders))
        if not isinstance(order_count, int) or isinstance(order_count, bool) or order_count < 1 \
                or (positions and max(positions) >= order_count):
            raise ValidationError("'order_count' must be an integer above every position.", details={"field": "order_count"})
    except ValidationError as exc:
        # Record the failure on the positions the message claims if they make sense, else on position 0.
        positions = data.get("positions") if isinstance(data.get("positions"), list) else None
        order_count = data.get("order_count")
        if not (positions and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 100_000 for p in positions)
                and isinstance(order_count, int) and max(positions) < order_count):
            batch_id, positions, order_count = fallback_id, [0], 1
        return IngestMessage(batch_id, order_count, sorted(set(positions)), [], error=exc)
    enqueued_at = data.get("enqueued_at") if isinstance(data.get("enqueued_at"), (int, float)) else None
    return IngestMessage(batch_id, order_count, positions, orders, enqueued_at)


class OrderIngest:
    """Processes one order-ingest record; raises to have SQS retry it."""

    def __init__(self, orders_service, batches, metrics=emit):
        self.orders = orders_service
        self.batches = batches
        self.emit = metrics

    def process(self, body, message_id):
        message = decode_message(body, message_id)
        if message.error is not None:
            logger.error("order-ingest message rejected (recorded as failed, not retried)",
                         extra={"message_id": message_id, "batch_id": message.batch_id,
                                "code": message.error.code, "reason": message.error.message, "body": str(body)[:500]})
            self.emit("IngestMessagesRejected", 1)
            result = failed(None, message.error)
            self.batches.record(message.batch_id, message.order_count, {p: result for p in message.positions})
            return {"batch_id": message.batch_id, "recorded": len(message.positions), "rejected": True}
        try:
            parsed = parse_batch({"orders": message.orders})
        except ShopError as exc:  # shape of the whole list (empty, > 100 orders)
            result = failed(None, exc)
            self.batches.record(message.batch_id, message.order_count, {p: result for p in message.positions})
            self.emit("IngestMessagesRejected", 1)
            return {"batch_id": message.batch_id, "recorded": len(message.positions), "rejected": True}

        done = self.batches.recorded_positions(message.batch_id, message.positions)
        # Positions already placed and recorded by an earlier delivery are skipped.
        outcome = self.orders.place_all(((position, order) for position, order in zip(message.positions, parsed)
                                         if position not in done), message.batch_id)
        # A transient failure is not recorded: the message is retried.
        results = {pos: r for pos, r in outcome.results.items() if not r.transient}
        transient = [pos for pos, r in outcome.results.items() if r.transient]
        if message.enqueued_at:
            for result in results.values():
                if result.created and not result.duplicate:
                    self.emit("IngestLatency", max(0.0, (time.time() - message.enqueued_at) * 1000), unit="Milliseconds")
        if outcome.interrupted is not None:
            # Keep what was placed before the outage, if MySQL still takes it.
            if results:
                try:
                    self.batches.record(message.batch_id, message.order_count, results)
                except Exception:
                    log.warning("could not record partial results of batch %s", message.batch_id)
            raise outcome.interrupted
        status = self.batches.record(message.batch_id, message.order_count, results)
        if transient:
            raise TransientFailure(f"{len(transient)} order(s) of batch {message.batch_id} hit contention "
                                   f"(positions {transient}); retrying the message")
        return {"batch_id": message.batch_id, "recorded": len(results), "status": status}


def order_ingest():
    return OrderIngest(bootstrap.orders(), BatchStore(bootstrap.database()))


def _partial_response(event, context, record_handler):
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    # raise_on_entire_batch_failure=False: the answer is always the list of failed
    # ids (as the local pollers and Lambda's ReportBatchItemFailures expect), even
    # when every record failed; the effect (all retried) is the same as raising.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)


def handle_order_event(event, context=None, ingest=None):
    """The order-ingest Lambda: `{"batchItemFailures": [{"itemIdentifier": id}...]}`."""
    ingest = ingest or order_ingest()

    def record_handler(record):
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is not None and remaining() < TIME_RESERVE_MS:
            emit("IngestRecordsDeferred", 1)
            raise TransientFailure("Too little time left in this invocation; SQS will redeliver the message.")
        try:
            return ingest.process(record.body, record.message_id)
        except Exception as exc:
            transient = isinstance(exc, (ServiceUnavailable, TransientFailure))
            (logger.warning if transient else logger.exception)(
                "order-ingest record failed; SQS will redeliver it",
                extra={"message_id": record.message_id, "error": f"{type(exc).__name__}: {exc}",
                       "receive_count": record.attributes.approximate_receive_count})
            emit("IngestRecordsFailed", 1, reason="transient" if transient else "unexpected")
            raise

    response = _partial_response(event, context, record_handler)
    emit("IngestRecords", len(event.get("Records", [])))
    return response


def handle_invalidation_event(event, context=None):
    """The cache-invalidation Lambda: a body that is not JSON is logged and dropped;
    Redis or MySQL unavailable fails the record so SQS retries it."""
    invalidator, db = bootstrap.invalidator(), bootstrap.database()

    def record_handler(record):
        try:
            body = json.loads(record.body)
            if not isinstance(body, dict):
                raise ValueError("not a JSON object")
        except (ValueError, TypeError) as exc:
            logger.error("cache-invalidation message dropped", extra={"message_id": record.message_id,
                                                                      "reason": str(exc), "body": record.body[:500]})
            return None
        invalidator.handle_message(db, body)
        return None

    return _partial_response(event, context, record_handler)

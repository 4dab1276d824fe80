"""Async batch orders (docs/api.md: `POST /orders/batch?mode=async`, `GET /batches/{id}`,
"SQS messages"): the producer side that queues a batch and the consumer side
that the order-ingest SQS handler runs (entrypoints/sqs.py); the batch read
model is adapters/batch_store.py, the message format domain/ingest_message.py.

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

Flash sales: an order for a product on sale goes through the sale's gate here,
as a sync one does (`OrderService.place_all`): accepted, its result is recorded
as `pending` with its `reservation_id` and the flash-order consumer writes it;
`GET /batches/{id}` shows the reservation's state when read (`pending` until
written, then `created` or `failed`), and the batch is `done` only once no
result is pending. The gate unavailable -> that order's result is transient
(the message is retried); the hand-off to the flash queue failed -> the message
is retried with nothing taken. A redelivery finds an accepted order's
reservation again (the gate is idempotent by the same key), so it is never
taken twice.

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
import logging
import time
import uuid

from chalicelib.domain.errors import NothingSent, ServiceUnavailable, ShopError
from chalicelib.domain.ingest_message import chunk_messages, decode_message
from chalicelib.domain.orders import OrderRequest, failed, parse_batch
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit
from chalicelib.service.batch_writer import BatchWriter, key_of
from chalicelib.service.ports import BatchStore, QueuePublisher

log = logging.getLogger(__name__)


class TransientFailure(Exception):
    """Some orders of the message could not be placed for a transient reason: retry the message."""


def new_batch_id():
    return uuid.uuid4().hex


class AsyncBatches:
    """Async submit: a batch onto the order-ingest queue, answered 202 at once."""

    def __init__(self, publisher: QueuePublisher, batches: BatchStore, queue_name):
        self.publisher, self.batches, self.queue_name = publisher, batches, queue_name

    def submit(self, orders, client=""):
        """Queue the raw `orders` of a batch whose whole-request validation passed
        (domain/orders.parse_batch, as for a sync batch): the 202 body.

        The messages go to SQS first, then the batch row is recorded; if MySQL is
        down the batch is still accepted (the consumer records the row)."""
        batch_id = new_batch_id()
        messages = chunk_messages(batch_id, orders, client=client)
        try:
            self.publisher.send_batch(self.queue_name, messages)
        except NothingSent as exc:
            logger.warning("could not queue async batch", extra={"batch_id": batch_id, "error": str(exc)})
            raise ServiceUnavailable("The order queue is unavailable; the batch was not accepted. "
                                     "Retry shortly.") from exc
        except Exception as exc:
            # An answer lost on the way back: the messages may be on the queue, under a batch id nobody was told.
            logger.exception("async batch may have been queued", extra={"batch_id": batch_id})
            raise ServiceUnavailable("The order queue did not confirm the batch; some of it may have been queued. "
                                     "Retry shortly: orders placed already are answered as duplicates.") from exc
        recorded = True
        try:
            self.batches.ensure(batch_id, len(orders), client)
        except ServiceUnavailable:
            recorded = False  # the consumer records it when MySQL is back
            logger.warning("async batch queued while MySQL is down; the consumer will record it",
                           extra={"batch_id": batch_id})
        emit("AsyncBatchesQueued", 1, recorded=str(recorded).lower())
        return {"batch_id": batch_id, "status": "queued"}


class OrderIngest:
    """Processes one order-ingest record; raises to have SQS retry it."""

    def __init__(self, orders_service, batches, metrics=emit):
        self.orders = orders_service
        self.batches = batches
        self.emit = metrics

    def process(self, body, message_id):
        """One record on its own (process_all of one): its summary, or the exception that retries it."""
        answer = self.process_all([(body, message_id)])[message_id]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def process_all(self, records):
        """{message_id: summary, or the exception that has SQS redeliver the record} for
        records [(body, message_id)]. The orders of every record are placed in one run of the
        order service (one transaction, whichever batches they came in) and their results
        recorded together; a position two records carry (a duplicate delivery) is placed once."""
        answers, items = {}, []
        for body, message_id in records:
            try:
                prepared = self._prepare(body, message_id)
            except Exception as exc:
                answers[message_id] = exc
                continue
            if isinstance(prepared, dict):
                answers[message_id] = prepared
            else:
                items.append((message_id, *prepared))
        if not items:
            return answers
        try:
            # Positions already placed and recorded by an earlier delivery are skipped.
            wanted = {}
            for _, message, _ in items:
                wanted.setdefault(message.batch_id, set()).update(message.positions)
            done = self.batches.recorded_positions({b: sorted(p) for b, p in wanted.items()})
            orders = {}
            for _, message, parsed in items:
                for position, order in zip(message.positions, parsed):
                    if position not in done[message.batch_id]:
                        orders.setdefault((message.batch_id, position), order)
            # A concurrent delivery of the same message may answer positions meanwhile: each order
            # transaction asks again, holding the batches' rows (docs/design.md, invariant 3).
            answered = set()

            def recorded(cursor, keys):
                found = self.batches.recorded_in(cursor, keys)
                answered.update(found)
                return found

            outcome = self.orders.place_all(orders.items(), batch_of=lambda key: key[0], recorded=recorded)
            answers.update(self._finish(items, outcome, done, answered, orders))
        except Exception as exc:
            answers.update({message_id: exc for message_id, *_ in items})
        return answers

    def _prepare(self, body, message_id):
        """(message, parsed orders), or the summary of a message that is done without
        placing anything (rejected: recorded as failed, not retried)."""
        message = decode_message(body, message_id)
        if message.error is not None:
            logger.error("order-ingest message rejected (recorded as failed, not retried)",
                         extra={"message_id": message_id, "batch_id": message.batch_id,
                                "code": message.error.code, "reason": message.error.message, "body": str(body)[:500]})
            self.emit("IngestMessagesRejected", 1)
            result = failed(None, message.error)
            self.batches.record(message.batch_id, message.order_count, {p: result for p in message.positions},
                                message.client)
            return {"batch_id": message.batch_id, "recorded": len(message.positions), "rejected": True}
        try:
            parsed = parse_batch({"orders": message.orders}, message.client)
        except ShopError as exc:  # shape of the whole list (empty, > 100 orders)
            result = failed(None, exc)
            self.batches.record(message.batch_id, message.order_count, {p: result for p in message.positions},
                                message.client)
            self.emit("IngestMessagesRejected", 1)
            return {"batch_id": message.batch_id, "recorded": len(message.positions), "rejected": True}
        return message, parsed

    def _finish(self, items, outcome, done, answered, orders):
        """Record every batch's results of `outcome` in one transaction and answer each message:
        its summary, or the exception that retries it (an order of it hit contention, or was
        not reached). `answered`: the positions a concurrent delivery recorded meanwhile."""
        # A transient failure is not recorded: the message is retried.
        results = {key: r for key, r in outcome.results.items() if not r.transient}
        errors, batches = {}, {}
        for message_id, message, _ in items:
            batch_id = message.batch_id
            mine = [(batch_id, pos) for pos in message.positions
                    if pos not in done[batch_id] and (batch_id, pos) not in answered]
            if outcome.interrupted is not None and any(key not in outcome.results for key in mine):
                errors[message_id] = outcome.interrupted
            elif any(outcome.results[key].transient for key in mine):
                transient = [key[1] for key in mine if outcome.results[key].transient]
                errors[message_id] = TransientFailure(
                    f"{len(transient)} order(s) of batch {batch_id} hit contention (positions {transient}); "
                    "retrying the message")
            if message.enqueued_at:
                for key in mine:
                    result = results.get(key)
                    if result is not None and result.status == "created" and result.created and not result.duplicate:
                        self.emit("IngestLatency", max(0.0, (time.time() - message.enqueued_at) * 1000),
                                  unit="Milliseconds")
            batches.setdefault(batch_id, (message.order_count, {}, message.client))
        for (batch_id, pos), result in results.items():
            batches[batch_id][1][pos] = result
        try:
            statuses = self.batches.record_many(batches, settle=lambda cursor, recording: self._settle(
                cursor, recording, orders))
        except Exception:
            if outcome.interrupted is None:
                raise
            # Keep what was placed before the outage, if MySQL still takes it.
            log.warning("could not record partial results of batches %s", sorted(batches))
            statuses = {}
        return {message_id: errors.get(message_id) or {
            "batch_id": message.batch_id, "status": statuses.get(message.batch_id),
            "recorded": sum(1 for pos in message.positions if (message.batch_id, pos) in results)}
            for message_id, message, _ in items}

    def _settle(self, cursor, recording, orders):
        """Inside the record transaction, the batches' rows held: a failure about to be recorded
        whose key has an order by now (a concurrent delivery created it) is recorded as that
        order's replay instead."""
        failed_orders = {key: orders[key] for key, result in recording.items()
                         if not result.created and isinstance(orders.get(key), OrderRequest)}
        if not failed_orders:
            return {}
        existing = self.orders.repository(cursor).find_many([key_of(o) for o in failed_orders.values()])
        return {key: BatchWriter.replay(existing[key_of(o)], o) for key, o in failed_orders.items()
                if key_of(o) in existing}

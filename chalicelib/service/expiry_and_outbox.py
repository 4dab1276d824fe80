"""What keeps orders moving after the request (docs/api.md, "Order lifecycle"):

- expiry timers: when the relay publishes a pending order's `order.created`,
  it starts a timer for it, an SQS message on the expiry queue delayed until
  `expires_at`. The expiry consumer expires the order when the timer fires, or
  starts it again if the window is longer than SQS's 15-minute delay. Timers
  put the stock back within seconds of `expires_at` in AWS as locally;
- the expiry sweep, the backstop for a timer that was never sent (SNS or SQS
  down when the relay ran): pending orders past `expires_at` are expired and
  their stock returned. Whichever comes first wins, exactly once
  (OrderService.expire re-checks under the row lock, so a payment or cancel
  that got there first wins too);
- the outbox relay: event rows written in the transactions that changed the
  orders are published to SNS in id order (so in order per order), then
  stamped. A relay that dies after publishing and before stamping publishes
  them again: at least once, and consumers dedupe on `event_id`. A rolled-back
  transaction left no row, so nothing is published for it.

One loop runs both every `interval` seconds: in AWS the `lifecycle` function
(every minute, looping until its time is nearly up; reserved concurrency 1 so
one relay keeps the order), locally scripts/lifecycle.py. Each invocation
first deletes the consumers' dedupe records that can no longer be needed
(prune_dedupe_records)."""
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

from chalicelib.domain.products import iso
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit

SQS_MAX_DELAY_SECONDS = 900


class ExpiryTimers:
    """One delayed SQS message per pending order, due when its window closes."""

    def __init__(self, queues, queue_name):
        self.queues, self.queue_name = queues, queue_name

    def start(self, due_in):
        """`due_in`: {order id: seconds until due}. Rounded up, so a timer never fires early."""
        if due_in:
            order_ids = sorted(due_in)
            self.queues.send_batch(self.queue_name, [{"order_id": order_id} for order_id in order_ids],
                                   delays=[min(SQS_MAX_DELAY_SECONDS, max(0, math.ceil(due_in[order_id])))
                                           for order_id in order_ids])


def fire_expiry_timer(orders, outbox, timers, order_id):
    """A timer fired: expire the order if its window has closed (by the database's
    clock), start the timer again if it has not; a paid, cancelled or expired
    order needs nothing. Returns 'expired', 'waiting' or 'closed'."""
    left = outbox.seconds_left([order_id]).get(order_id)
    if left is None:
        return "closed"
    if left > 0:
        timers.start({order_id: left})
        return "waiting"
    return "expired" if orders.expire(order_id) else "closed"


def expire_due(orders, outbox, limit=200):
    """Expire what is due now; returns how many expired."""
    return sum(1 for order_id in outbox.due(limit) if orders.expire(order_id))


# A consumer's dedupe record may go once no copy of its event can still come: SQS keeps a message at
# most 14 days (the DLQs, from which a redrive sends it again), and SNS retries a delivery to an SQS
# queue it could not reach for up to 23 days.
DEDUPE_RETENTION_DAYS = 30


def prune_dedupe_records(outbox, batch=1000, most=20_000):
    """Delete the consumers' dedupe records older than DEDUPE_RETENTION_DAYS
    (by the database's clock), oldest first, `batch` rows per short
    transaction and at most `most` per table per call, so a first run on a
    large backlog does not take the lifecycle function's minute. Returns how
    many went."""
    pruned = 0
    for table in outbox.dedupe_consumers():
        done = 0
        while done < most:
            deleted = outbox.prune_dedupe(table, DEDUPE_RETENTION_DAYS, min(batch, most - done))
            done += deleted
            if deleted < batch:
                break
        pruned += done
    return pruned


RELAY_LANES = 4     # SNS calls in flight at once; an order's events always take the same lane
SNS_BATCH = 10      # PublishBatch's most entries per call


def publish_pending(outbox, publisher, limit=500, timers=None):
    """Publish unpublished events; returns how many went out. Each order's
    events go out in sequence: an order always takes the same lane, a lane
    sends its rows in id order, ten per PublishBatch call, and an event SNS did
    not accept holds back the later events of its order (or product) only: they
    must not pass it, and they wait for the next call with it, while the lane
    goes on with other orders. So one event SNS keeps refusing (a poison event)
    holds one order, not its lane, and never fills the window of the `limit`
    oldest events. Lanes run side by side, so the relay keeps up with the order
    path although each SNS call takes a while. Each published `order.created` of
    an order still pending starts its expiry timer; a timer that cannot be sent
    is left to the sweep.

    Nothing is locked while SNS is called: a relay holding locks on the outbox
    index would make every new order wait for SNS. One relay runs at a time
    (see the module doc), so a plain read is enough; the stamp comes after."""
    rows = outbox.unpublished(limit)
    if not rows:
        return 0
    lanes = {}
    for row in rows:
        lanes.setdefault(_key(row)[1] % RELAY_LANES, []).append(row)
    with ThreadPoolExecutor(len(lanes)) as pool:
        outcomes = list(pool.map(lambda lane: _publish_lane(publisher, lane), lanes.values()))
    sent = [row for published, _ in outcomes for row in published]
    refused = sum(held for _, held in outcomes)
    if refused:
        emit("OrderEventsRefused", refused)
    created = [row["order_id"] for row in sent if row["type"] == "order.created"]
    if timers and created:
        _start_timers(outbox, timers, created)
    if sent:
        outbox.mark_published([row["id"] for row in sent])
    return len(sent)


def oldest_unpublished_seconds(outbox):
    """How long the oldest event still in the outbox has waited (0: none waits): SNS
    down, or an event SNS keeps refusing, shows here (the OutboxStalled alarm)."""
    return outbox.oldest_unpublished_seconds()


def _key(row):
    """What the event keeps its order within: its order, or for a product's event (stock.low, no order) its
    product; the id picks the lane."""
    return ("order", row["order_id"]) if row["order_id"] is not None else ("product", row["product_id"])


def _publish_lane(publisher, rows):
    """(the rows SNS accepted, in id order per order; how many orders it held back).
    A call that raised for several events is made again an event at a time, so the
    one at fault is found and the others go out. Two calls in a row that got nothing
    out mean SNS refuses everything now (throttling, a key it cannot use): the lane
    stops there, as it does when SNS is unreachable, instead of one call per order."""
    published, waiting, held = [], list(rows), set()
    one_by_one = fruitless = 0
    while waiting and fruitless < 2:
        chunk = waiting[:1 if one_by_one else SNS_BATCH]
        try:
            accepted, reason = publisher.publish_batch([_message(row) for row in chunk]), "refused by SNS"
        except Exception as exc:
            if _unreachable(exc):
                logger.warning("order events not published: SNS is unreachable; they stay in the outbox",
                               extra={"first_event_id": chunk[0]["event_id"], "reason": str(exc)})
                break
            if len(chunk) > 1:
                one_by_one = len(chunk)
                continue
            accepted, reason = 0, f"{type(exc).__name__}: {exc}"
        one_by_one = max(0, one_by_one - 1)
        fruitless = 0 if accepted else fruitless + 1
        published += chunk[:accepted]
        rest = waiting[accepted:]
        if accepted < len(chunk):
            stopped = chunk[accepted]
            held.add(_key(stopped))
            logger.warning("order event not published; it and the later events of its order stay in the outbox",
                           extra={"event_id": stopped["event_id"], "order_id": stopped["order_id"],
                                  "product_id": stopped["product_id"], "type": stopped["type"], "reason": reason})
        waiting = [row for row in rest if _key(row) not in held]
    return published, len(held)


def _message(row):
    """The published event: an order's carries `order_id` and its `sequence`; a product's
    (stock.low) `order_id` null and `product_id`."""
    message = {"event_id": row["event_id"], "type": row["type"], "order_id": row["order_id"],
               "sequence": row["sequence"], "occurred_at": iso(row["created_at"]), "data": json.loads(row["payload"])}
    if row["product_id"] is not None:
        message["product_id"] = row["product_id"]
    return message


def _unreachable(exc):
    """SNS could not be reached or did not answer (after botocore's own retries): no event is at fault."""
    from botocore.exceptions import ConnectionError as AwsConnectionError, HTTPClientError  # lazy, as boto3 is

    return isinstance(exc, (AwsConnectionError, HTTPClientError))


def _start_timers(outbox, timers, order_ids):
    try:
        timers.start(outbox.seconds_left(order_ids))
    except Exception as exc:  # SQS down: the sweep expires these orders, later
        logger.warning("expiry timers not started; the sweep is the backstop",
                       extra={"orders": len(order_ids), "reason": str(exc)})
        emit("ExpiryTimersFailed", len(order_ids))


def run(orders, outbox, publisher, until, interval=1.0, clock=time.monotonic, sleep=time.sleep, timers=None):
    """Sweep and relay until `clock()` passes `until`; returns (expired, published)."""
    expired = published = 0
    while True:  # at least one pass
        round_expired = expire_due(orders, outbox)
        round_published = publish_pending(outbox, publisher, timers=timers) if publisher else 0
        expired, published = expired + round_expired, published + round_published
        if clock() >= until:
            return expired, published
        if not (round_expired or round_published):
            sleep(interval)

"""What keeps orders moving after the request (docs/api.md, "Order lifecycle"):

- the expiry sweep: pending orders past `expires_at` are expired and their
  stock returned, exactly once (OrderService.expire re-checks under the row
  lock, so a payment or cancel that got there first wins);
- the outbox relay: event rows written in the transactions that changed the
  orders are published to SNS in id order (so in order per order), then
  stamped. A relay that dies after publishing and before stamping publishes
  them again: at least once, and consumers dedupe on `event_id`. A rolled-back
  transaction left no row, so nothing is published for it.

One loop runs both every `interval` seconds: in AWS the `lifecycle` function
(every minute, looping until its time is nearly up; reserved concurrency 1 so
one relay keeps the order), locally scripts/lifecycle.py."""
import json
import time

from chalicelib.adapters.order_repository import orders_due_for_expiry
from chalicelib.domain.products import iso
from chalicelib.ops.logs import logger


def expire_due(orders, db, limit=200):
    """Expire what is due now; returns how many expired."""
    return sum(1 for order_id in orders_due_for_expiry(db, limit) if orders.expire(order_id))


def publish_pending(db, publisher, limit=100):
    """Publish unpublished events in id order; returns how many went out. A
    failed publish stops the round (later events of that order must not pass it).

    Nothing is locked while SNS is called: a relay holding locks on the outbox
    index would make every new order wait for SNS. One relay runs at a time
    (see the module doc), so a plain read is enough; the stamp comes after."""
    rows = db.query("SELECT id, event_id, order_id, sequence, type, payload, created_at FROM order_events "
                    "WHERE published_at IS NULL ORDER BY id LIMIT %s", (limit,))
    sent = []
    for row in rows:
        try:
            publisher.publish({"event_id": row["event_id"], "type": row["type"], "order_id": row["order_id"],
                               "sequence": row["sequence"], "occurred_at": iso(row["created_at"]),
                               "data": json.loads(row["payload"])})
        except Exception as exc:  # SNS down: the rest waits in the outbox
            logger.warning("order event not published; it stays in the outbox",
                           extra={"event_id": row["event_id"], "reason": str(exc)})
            break
        sent.append(row["id"])
    if sent:
        db.run(lambda cur: cur.execute("UPDATE order_events SET published_at = CURRENT_TIMESTAMP(6) "
                                       f"WHERE id IN ({','.join(['%s'] * len(sent))})", sent))
    return len(sent)


def run(orders, db, publisher, until, interval=1.0, clock=time.monotonic, sleep=time.sleep):
    """Sweep and relay until `clock()` passes `until`; returns (expired, published)."""
    expired = published = 0
    while True:  # at least one round
        round_expired = expire_due(orders, db)
        round_published = publish_pending(db, publisher) if publisher else 0
        expired, published = expired + round_expired, published + round_published
        if clock() >= until:
            return expired, published
        if not (round_expired or round_published):
            sleep(interval)

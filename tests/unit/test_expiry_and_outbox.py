"""The expiry sweep and timers, the outbox relay and the dedupe pruning
(service/expiry_and_outbox.py) against an in-memory Outbox port: the rules
without MySQL or SNS. tests/integration/test_order_lifecycle.py runs them on
the real outbox."""
import json
from datetime import datetime, timezone

import pytest

from chalicelib.service import expiry_and_outbox as upkeep


@pytest.fixture(autouse=True)
def no_metrics(monkeypatch):
    monkeypatch.setattr(upkeep, "emit", lambda *args, **kwargs: None)


class FakeOutbox:
    """The Outbox port over lists: event rows, dedupe records' ages, pending orders' seconds left."""

    def __init__(self, rows=(), dedupe=None, left=None):
        self.rows = [dict(r) for r in rows]
        self.dedupe = {table: list(ages) for table, ages in (dedupe or {}).items()}
        self.left = dict(left or {})
        self.prune_calls = []

    def unpublished(self, limit):
        return [r for r in self.rows if not r.get("published")][:limit]

    def mark_published(self, ids):
        for row in self.rows:
            if row["id"] in ids:
                row["published"] = True

    def oldest_unpublished_seconds(self):
        return 0.0

    def dedupe_consumers(self):
        return sorted(self.dedupe)

    def prune_dedupe(self, table, older_than_days, limit):
        self.prune_calls.append((table, limit))
        old = sorted((age for age in self.dedupe[table] if age > older_than_days), reverse=True)[:limit]
        for age in old:
            self.dedupe[table].remove(age)
        return len(old)

    def due(self, limit=200):
        return sorted(order_id for order_id, left in self.left.items() if left <= 0)[:limit]

    def seconds_left(self, order_ids):
        return {order_id: self.left[order_id] for order_id in order_ids if order_id in self.left}


class Orders:
    def __init__(self, outbox):
        self.outbox, self.expired = outbox, []

    def expire(self, order_id):
        if self.outbox.left.pop(order_id, None) is None:
            return False
        self.expired.append(order_id)
        return True


class Timers:
    def __init__(self):
        self.started = []

    def start(self, due_in):
        self.started.append(dict(due_in))


class Sns:
    """Accepts every event except those of `refused` orders."""

    def __init__(self, refused=()):
        self.refused, self.sent = set(refused), []

    def publish_batch(self, events):
        accepted = next((i for i, e in enumerate(events) if e["order_id"] in self.refused), len(events))
        self.sent += events[:accepted]
        return accepted


def _row(row_id, order_id, kind="order.created", sequence=1):
    return {"id": row_id, "event_id": f"e{row_id}", "order_id": order_id, "product_id": None, "sequence": sequence,
            "type": kind, "payload": json.dumps({"order_id": order_id}),
            "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc)}


def test_dedupe_records_are_pruned_in_batches_up_to_the_most_per_table():
    outbox = FakeOutbox(dedupe={"related_events": [40, 35, 33, 31, 30, 2], "notifications_sent": [45, 1]})
    assert upkeep.prune_dedupe_records(outbox, batch=2, most=3) == 3 + 1
    # past the retention only, oldest first; a short batch ends a table's loop
    assert outbox.dedupe == {"related_events": [31, 30, 2], "notifications_sent": [1]}
    assert outbox.prune_calls == [("notifications_sent", 2), ("related_events", 2), ("related_events", 1)]
    assert upkeep.prune_dedupe_records(outbox) == 1 and outbox.dedupe["related_events"] == [30, 2]


def test_the_sweep_expires_what_is_due_and_only_that():
    outbox = FakeOutbox(left={1: -5.0, 2: 0.0, 3: 30.0})
    orders = Orders(outbox)
    assert upkeep.expire_due(orders, outbox) == 2 and orders.expired == [1, 2]
    assert upkeep.expire_due(orders, outbox) == 0


@pytest.mark.parametrize("left, outcome, restarted", [
    (-1.0, "expired", []), (120.5, "waiting", [{7: 120.5}]), (None, "closed", [])])
def test_a_fired_timer_expires_restarts_or_finds_the_order_closed(left, outcome, restarted):
    outbox = FakeOutbox(left={} if left is None else {7: left})
    timers = Timers()
    assert upkeep.fire_expiry_timer(Orders(outbox), outbox, timers, 7) == outcome
    assert timers.started == restarted


def test_the_relay_stamps_what_sns_took_and_starts_a_timer_per_pending_created_order():
    outbox = FakeOutbox(rows=[_row(1, 10), _row(2, 11), _row(3, 10, "order.paid", 2), _row(4, 12)],
                        left={10: 60.0, 12: 30.0})
    timers = Timers()
    assert upkeep.publish_pending(outbox, Sns(refused={11}), timers=timers) == 3
    assert [r["id"] for r in outbox.rows if r.get("published")] == [1, 3, 4]
    assert timers.started == [{10: 60.0, 12: 30.0}]  # 11's creation is still in the outbox
    assert upkeep.publish_pending(outbox, Sns(refused={11}), timers=timers) == 0


def test_an_order_refused_by_sns_holds_back_its_later_events_only():
    outbox = FakeOutbox(rows=[_row(1, 20), _row(2, 21), _row(3, 20, "order.paid", 2), _row(4, 21, "order.paid", 2)])
    sns = Sns(refused={20})
    upkeep.publish_pending(outbox, sns)
    assert [(e["order_id"], e["sequence"]) for e in sns.sent] == [(21, 1), (21, 2)]
    assert [r["id"] for r in outbox.unpublished(10)] == [1, 3]


def test_a_timer_queue_that_is_down_leaves_the_orders_to_the_sweep():
    class Down:
        def start(self, due_in):
            raise ConnectionError("sqs down")

    outbox = FakeOutbox(rows=[_row(1, 30)], left={30: 60.0})
    assert upkeep.publish_pending(outbox, Sns(), timers=Down()) == 1
    assert outbox.rows[0].get("published")

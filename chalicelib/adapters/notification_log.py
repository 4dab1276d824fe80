"""The notification consumer's MySQL side (the `NotificationLog` port of
service/ports.py): `notifications_sent`, one row per mailed event, and what
the emails of an invocation say about their orders or products."""
from chalicelib.domain.errors import DuplicateKey
from chalicelib.adapters.db import placeholders



class MySQLNotificationLog:
    def __init__(self, db):
        self.db = db

    def recorded(self, event_ids):
        if not event_ids:
            return set()
        rows = self.db.query("SELECT event_id FROM notifications_sent "
                             f"WHERE event_id IN ({placeholders(len(event_ids))})", tuple(event_ids))
        return {row["event_id"] for row in rows}

    def products(self, product_ids):
        return self._by_id("SELECT id, sku, name FROM products", product_ids)

    def orders(self, order_ids):
        return self._by_id("SELECT id, total_cents, contact_email FROM orders", order_ids)

    def _by_id(self, select, ids):
        """{id: the rest of its row} of the rows `select` finds among `ids`."""
        if not ids:
            return {}
        rows = self.db.query(f"{select} WHERE id IN ({placeholders(len(ids))})", tuple(ids))
        return {row.pop("id"): row for row in rows}

    def order_items(self, order_ids):
        if not order_ids:
            return {}
        rows = self.db.query("SELECT i.order_id, i.product_id, i.quantity, i.unit_price_cents, p.name "
                             "FROM order_items i LEFT JOIN products p ON p.id = i.product_id "
                             f"WHERE i.order_id IN ({placeholders(len(order_ids))}) ORDER BY i.order_id, i.product_id",
                             tuple(order_ids))
        items = {}
        for row in rows:
            items.setdefault(row.pop("order_id"), []).append(row)
        return items

    def record_and_send(self, entries, send_all):
        """In one transaction: each event's row, then `send_all(the event ids whose row this
        inserted)`, which answers {event_id: SES message id or the send's exception}; the message
        ids are kept, a failed send's row is taken out again. {event_id: True | False (a concurrent
        delivery has the row; it waits here on the row's key until that one ends) | the send's
        exception}. Rows go in event id order, so two invocations that share events wait on each
        other and never deadlock. A deadlock retried before the sends runs again; one after them
        (on the transaction's own rows: not seen) fails the whole, as a lost commit would."""
        sending = []

        def work(cur):
            if sending:
                raise RuntimeError("the emails went out and the transaction did not commit; SQS will redeliver")
            outcome = {}
            for event_id, event_type, recipient in sorted(entries):
                try:
                    cur.execute("INSERT INTO notifications_sent (event_id, event_type, recipient) VALUES (%s, %s, %s)",
                                (event_id, event_type, recipient))
                    outcome[event_id] = True
                except DuplicateKey:
                    outcome[event_id] = False
            sending.append(True)
            sent = send_all([event_id for event_id, inserted in outcome.items() if inserted])
            failed = [event_id for event_id, reply in sent.items() if isinstance(reply, Exception)]
            if failed:
                cur.execute(f"DELETE FROM notifications_sent WHERE event_id IN ({placeholders(len(failed))})",
                            tuple(failed))
            message_ids = [(event_id, reply) for event_id, reply in sent.items() if event_id not in failed]
            if message_ids:
                cases = " ".join(["WHEN %s THEN %s"] * len(message_ids))
                cur.execute(f"UPDATE notifications_sent SET ses_message_id = CASE event_id {cases} END "
                            f"WHERE event_id IN ({placeholders(len(message_ids))})",
                            (*[v for pair in message_ids for v in pair], *[event_id for event_id, _ in message_ids]))
            outcome.update({event_id: sent[event_id] for event_id in failed})
            return outcome

        return self.db.run(work)

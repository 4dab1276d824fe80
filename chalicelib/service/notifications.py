"""The notification consumer (docs/api.md, "Notifications"): one email per
order-events message it mails, exactly once per `event_id`.

Exactly once: the event's `notifications_sent` row is inserted, the email
sent, and the row committed, in one transaction. A duplicate delivered at the
same time waits on that row's key and then finds it (sends nothing); one
delivered later finds the row at once. A failed send rolls the row back, so
SQS redelivers the message (DLQ after 5 receives) and nothing is recorded
half-way. The one window left: SES accepted the email and the commit was then
lost (MySQL or the process died in between). The redelivered message sends it
a second time; we chose a rare duplicate over a lost email (SES has no
idempotency key to close the window). The transaction holds one connection
for the length of the SES call, locking only that event's row."""


from chalicelib.domain import notifications as n
from chalicelib.domain.errors import DuplicateKey
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit



class Notifier:
    def __init__(self, db, mailer, operator_email=""):
        self.db = db
        self.mailer = mailer
        self.operator_email = operator_email

    def process(self, body):
        """Handle one message; returns what happened: 'sent', 'duplicate', 'no_address'
        or 'ignored'. Raises ValidationError for a message that is not an event,
        anything else (SES, MySQL) for a retry."""
        event = n.parse_event(body)
        if not event.mailed:
            return "ignored"
        if self._recorded(event.event_id):
            return "duplicate"
        recipient, subject, text = self._compose(event)
        if recipient is None:
            logger.info("no address for this event; nothing sent", extra={"event_id": event.event_id,
                                                                          "type": event.type})
        return self.db.run(lambda cur: self._send_once(cur, event, recipient, subject, text))

    def _recorded(self, event_id):
        return bool(self.db.query("SELECT 1 FROM notifications_sent WHERE event_id = %s", (event_id,)))

    def _compose(self, event):
        """(recipient or None, subject, text)."""
        if event.type in n.OPERATOR_EVENTS:
            rows = self.db.query("SELECT sku, name FROM products WHERE id = %s", (event.product_id,))
            subject, text = n.stock_low_email(event, rows[0] if rows else None)
            return self.operator_email or None, subject, text
        rows = self.db.query("SELECT total_cents, contact_email FROM orders WHERE id = %s", (event.order_id,))
        if not rows:
            logger.warning("event of an unknown order", extra={"event_id": event.event_id, "order_id": event.order_id})
            return None, "", ""
        items = self.db.query("SELECT i.product_id, i.quantity, i.unit_price_cents, p.name FROM order_items i "
                              "LEFT JOIN products p ON p.id = i.product_id WHERE i.order_id = %s "
                              "ORDER BY i.product_id", (event.order_id,))
        # A trusted server's order's address, or the verified email of the customer whose token placed it.
        subject, text = n.order_email(event, rows[0], items)
        return rows[0]["contact_email"], subject, text

    def _send_once(self, cur, event, recipient, subject, text):
        try:
            cur.execute("INSERT INTO notifications_sent (event_id, event_type, recipient) VALUES (%s, %s, %s)",
                        (event.event_id, event.type, recipient))
        except DuplicateKey:
            return "duplicate"  # a concurrent delivery of the same event sent it and committed
        if recipient is None:
            emit("NotificationsSkipped", 1, type=event.type)
            return "no_address"
        message_id = self.mailer.send(recipient, subject, text)
        cur.execute("UPDATE notifications_sent SET ses_message_id = %s WHERE event_id = %s",
                    (message_id, event.event_id))
        emit("NotificationsSent", 1, type=event.type)
        return "sent"

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
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit
from chalicelib.service.ports import NotificationLog


class Notifier:
    def __init__(self, log: NotificationLog, mailer, operator_email=""):
        self.log = log
        self.mailer = mailer
        self.operator_email = operator_email

    def process(self, body):
        """Handle one message; returns what happened: 'sent', 'duplicate', 'no_address'
        or 'ignored'. Raises ValidationError for a message that is not an event,
        anything else (SES, MySQL) for a retry."""
        event = n.parse_event(body)
        if not event.mailed:
            return "ignored"
        if self.log.recorded(event.event_id):
            return "duplicate"
        recipient, subject, text = self._compose(event)
        if recipient is None:
            logger.info("no address for this event; nothing sent", extra={"event_id": event.event_id,
                                                                          "type": event.type})
        send = None if recipient is None else (lambda: self.mailer.send(recipient, subject, text))
        if not self.log.record_and_send(event.event_id, event.type, recipient, send):
            return "duplicate"  # a concurrent delivery of the same event sent it and committed
        if recipient is None:
            emit("NotificationsSkipped", 1, type=event.type)
            return "no_address"
        emit("NotificationsSent", 1, type=event.type)
        return "sent"

    def _compose(self, event):
        """(recipient or None, subject, text)."""
        if event.type in n.OPERATOR_EVENTS:
            subject, text = n.stock_low_email(event, self.log.product(event.product_id))
            return self.operator_email or None, subject, text
        order = self.log.order(event.order_id)
        if order is None:
            logger.warning("event of an unknown order", extra={"event_id": event.event_id, "order_id": event.order_id})
            return None, "", ""
        # A trusted server's order's address, or the verified email of the customer whose token placed it.
        subject, text = n.order_email(event, order, self.log.order_items(event.order_id))
        return order["contact_email"], subject, text

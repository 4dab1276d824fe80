"""The notification consumer (docs/api.md, "Notifications"): one email per
order-events message it mails, exactly once per `event_id`.

An invocation's events are handled together: one query each for what is
recorded already and for the orders, items and products the emails name, then
one transaction that inserts each new event's `notifications_sent` row, sends
their emails at once (up to EMAILS_IN_FLIGHT to SES, no MySQL connection more
than the one the transaction holds: the packaged pool is one connection),
deletes the rows whose send failed and commits. A duplicate delivered at the
same time waits on its row's key and then finds it (sends nothing); one
delivered later finds the row at once. A failed send records nothing, so SQS
redelivers that message (DLQ after 5 receives) and nothing is recorded half-way.
The one window left: SES accepted the emails and the commit was then lost
(MySQL or the process died in between). The redelivered messages send them a
second time; we chose a rare duplicate over a lost email (SES has no
idempotency key to close the window)."""
from concurrent.futures import ThreadPoolExecutor

from chalicelib.domain import notifications as n
from chalicelib.domain.errors import ValidationError
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit
from chalicelib.service.ports import NotificationLog

# Emails of one invocation in flight to SES at once (an SQS batch holds at most 10 messages).
EMAILS_IN_FLIGHT = 5


class Notifier:
    def __init__(self, log: NotificationLog, mailer, operator_email=""):
        self.log = log
        self.mailer = mailer
        self.operator_email = operator_email

    def process_all(self, bodies):
        """One outcome per body, in order: 'sent', 'duplicate', 'no_address' or 'ignored', or the
        exception that failed it (ValidationError for a message that is not an event; anything
        else, SES or MySQL, for a retry)."""
        outcomes, events = [None] * len(bodies), {}
        for i, body in enumerate(bodies):
            try:
                event = n.parse_event(body)
            except ValidationError as exc:
                outcomes[i] = exc
                continue
            if not event.mailed:
                outcomes[i] = "ignored"
            elif event.event_id in events:
                outcomes[i] = "duplicate"   # twice in one invocation: the first one mails it
            else:
                events[event.event_id] = (i, event)
        try:
            results = self._mail([event for _, event in events.values()])
        except Exception as exc:
            results = {event_id: exc for event_id in events}
        for event_id, (i, _) in events.items():
            outcomes[i] = results[event_id]
        return outcomes

    def _mail(self, events):
        """{event_id: outcome or exception} of events not yet seen in this invocation."""
        recorded = self.log.recorded([e.event_id for e in events])
        fresh = [e for e in events if e.event_id not in recorded]
        results = {e.event_id: "duplicate" for e in events if e.event_id in recorded}
        if not fresh:
            return results
        emails = self._compose(fresh)
        stored = self.log.record_and_send(
            [(e.event_id, e.type, emails[e.event_id][0]) for e in fresh],
            lambda event_ids: self._send({event_id: emails[event_id] for event_id in event_ids}))
        for event in fresh:
            outcome = stored[event.event_id]
            if isinstance(outcome, Exception) or outcome is False:
                results[event.event_id] = "duplicate" if outcome is False else outcome
                continue
            if emails[event.event_id][0] is None:
                logger.info("no address for this event; nothing sent", extra={"event_id": event.event_id,
                                                                              "type": event.type})
                emit("NotificationsSkipped", 1, type=event.type)
                results[event.event_id] = "no_address"
            else:
                emit("NotificationsSent", 1, type=event.type)
                results[event.event_id] = "sent"
        return results

    def _send(self, emails):
        """{event_id: SES message id or the exception} of the emails that have a recipient, sent at once."""
        emails = {event_id: email for event_id, email in emails.items() if email[0] is not None}
        if not emails:
            return {}

        def send(email):
            try:
                return self.mailer.send(*email)
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(min(EMAILS_IN_FLIGHT, len(emails))) as pool:
            return dict(zip(emails, pool.map(send, emails.values())))

    def _compose(self, events):
        """{event_id: (recipient or None, subject, text)}."""
        products = self.log.products([e.product_id for e in events if e.type in n.OPERATOR_EVENTS])
        order_ids = [e.order_id for e in events if e.type not in n.OPERATOR_EVENTS]
        orders, items = self.log.orders(order_ids), self.log.order_items(order_ids)
        emails = {}
        for event in events:
            if event.type in n.OPERATOR_EVENTS:
                subject, text = n.stock_low_email(event, products.get(event.product_id))
                emails[event.event_id] = (self.operator_email or None, subject, text)
                continue
            order = orders.get(event.order_id)
            if order is None:
                logger.warning("event of an unknown order", extra={"event_id": event.event_id,
                                                                   "order_id": event.order_id})
                emails[event.event_id] = (None, "", "")
                continue
            # A trusted server's order's address, or the verified email of the customer whose token placed it.
            subject, text = n.order_email(event, order, items.get(event.order_id, []))
            emails[event.event_id] = (order["contact_email"], subject, text)
        return emails

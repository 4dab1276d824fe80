"""The notification consumer's MySQL side (the `NotificationLog` port of
service/ports.py): `notifications_sent`, one row per mailed event, and what
an email says about its order or product."""
from chalicelib.domain.errors import DuplicateKey


class MySQLNotificationLog:
    def __init__(self, db):
        self.db = db

    def recorded(self, event_id):
        return bool(self.db.query("SELECT 1 FROM notifications_sent WHERE event_id = %s", (event_id,)))

    def product(self, product_id):
        rows = self.db.query("SELECT sku, name FROM products WHERE id = %s", (product_id,))
        return rows[0] if rows else None

    def order(self, order_id):
        rows = self.db.query("SELECT total_cents, contact_email FROM orders WHERE id = %s", (order_id,))
        return rows[0] if rows else None

    def order_items(self, order_id):
        return self.db.query("SELECT i.product_id, i.quantity, i.unit_price_cents, p.name FROM order_items i "
                             "LEFT JOIN products p ON p.id = i.product_id WHERE i.order_id = %s "
                             "ORDER BY i.product_id", (order_id,))

    def record_and_send(self, event_id, event_type, recipient, send=None):
        """In one transaction: the event's row, then `send()` (its message id is kept); False,
        sending nothing, when a concurrent delivery of the event has the row. The row's key
        makes that delivery wait here until this one commits or rolls back."""
        def work(cur):
            try:
                cur.execute("INSERT INTO notifications_sent (event_id, event_type, recipient) VALUES (%s, %s, %s)",
                            (event_id, event_type, recipient))
            except DuplicateKey:
                return False
            if send is not None:
                cur.execute("UPDATE notifications_sent SET ses_message_id = %s WHERE event_id = %s",
                            (send(), event_id))
            return True

        return self.db.run(work)

"""The outbox and the payment clock in MySQL: the relay's reads and stamps of
`order_events`, the consumers' dedupe records, and the orders waiting for
payment (the `Outbox` port of service/ports.py)."""
from chalicelib.adapters.db import placeholders

# The consumers' dedupe records: table -> the column that dates a record.
_DEDUPE_TABLES = {"related_events": "processed_at", "notifications_sent": "sent_at"}


class MySQLOutbox:
    def __init__(self, db):
        self.db = db

    def unpublished(self, limit):
        return self.db.query("SELECT id, event_id, order_id, product_id, sequence, type, payload, created_at "
                             "FROM order_events WHERE published_at IS NULL ORDER BY id LIMIT %s", (limit,))

    def mark_published(self, ids):
        self.db.run(lambda cur: cur.execute("UPDATE order_events SET published_at = CURRENT_TIMESTAMP(6) "
                                            f"WHERE id IN ({placeholders(len(ids))})", list(ids)))

    def oldest_unpublished_seconds(self):
        rows = self.db.query("SELECT TIMESTAMPDIFF(MICROSECOND, created_at, CURRENT_TIMESTAMP(6)) / 1e6 AS waited "
                             "FROM order_events WHERE published_at IS NULL ORDER BY id LIMIT 1")
        return max(0.0, float(rows[0]["waited"])) if rows else 0.0

    @staticmethod
    def dedupe_consumers():
        return sorted(_DEDUPE_TABLES)

    def prune_dedupe(self, table, older_than_days, limit):
        """Delete up to `limit` of `table`'s records older than the days given (by the database's
        clock), oldest first, in one short transaction; how many went."""
        column = _DEDUPE_TABLES[table]
        return self.db.run(lambda cur: cur.execute(
            f"DELETE FROM {table} WHERE {column} < CURRENT_TIMESTAMP(6) - INTERVAL %s DAY "
            f"ORDER BY {column} LIMIT %s", (older_than_days, limit)))

    def due(self, limit=200):
        """Ids of pending orders past their window, oldest first (ix_orders_expiry)."""
        rows = self.db.query("SELECT id FROM orders WHERE lifecycle = 'pending_payment' "
                             "AND expires_at <= CURRENT_TIMESTAMP(6) ORDER BY expires_at LIMIT %s", (limit,))
        return [row["id"] for row in rows]

    def seconds_left(self, order_ids):
        """{order id: seconds until its window closes, by the database's clock} for
        those of `order_ids` still pending payment (<= 0: due now)."""
        if not order_ids:
            return {}
        rows = self.db.query("SELECT id, TIMESTAMPDIFF(MICROSECOND, CURRENT_TIMESTAMP(6), expires_at) AS us "
                             "FROM orders WHERE lifecycle = 'pending_payment' "
                             f"AND id IN ({placeholders(len(order_ids))})", list(order_ids))
        return {row["id"]: row["us"] / 1e6 for row in rows}

"""The co-purchase counts in MySQL (the `PairCounts` port of service/ports.py):
`related_events` (each counted event once), `product_pairs` (orders per pair)
and the ranking read from them."""
from chalicelib.adapters.db import placeholders


class _CountingTransaction:
    def __init__(self, cur):
        self.cur = cur

    def first_time(self, event_id):
        """Record the event as counted; False if it was already (a concurrent duplicate waits on its key)."""
        self.cur.execute("INSERT IGNORE INTO related_events (event_id) VALUES (%s)", (event_id,))
        return bool(self.cur.rowcount)

    def order_lines(self, order_ids):
        """{order id: {product id: quantity}} of the orders."""
        lines = {}
        if order_ids:
            self.cur.execute("SELECT order_id, product_id, quantity FROM order_items WHERE order_id IN "
                             f"({placeholders(len(order_ids))})", list(order_ids))
            for row in self.cur.fetchall():
                lines.setdefault(row["order_id"], {})[row["product_id"]] = row["quantity"]
        return lines

    def add(self, rows):
        """[((product_id, other_id), change)] upserted in one statement, in the order given."""
        if rows:
            self.cur.execute("INSERT INTO product_pairs (product_id, other_id, orders) VALUES "
                             + ",".join(["(%s, %s, %s)"] * len(rows))
                             + " ON DUPLICATE KEY UPDATE orders = orders + VALUES(orders)",
                             [value for (a, b), n in rows for value in (a, b, n)])


class MySQLPairCounts:
    def __init__(self, db):
        self.db = db

    def counting(self, work):
        """`work(tx)` in one transaction (deadlocks retried)."""
        return self.db.run(lambda cur: work(_CountingTransaction(cur)))

    def product_exists(self, product_id):
        return bool(self.db.query("SELECT 1 FROM products WHERE id = %s", (product_id,)))

    def ranking(self, product_id, limit):
        """[(partner id, orders)] best first, of partners active and in stock now."""
        rows = self.db.query(
            "SELECT pp.other_id, pp.orders FROM product_pairs pp JOIN products p ON p.id = pp.other_id "
            "WHERE pp.product_id = %s AND pp.orders > 0 AND p.status = 'active' AND p.stock > 0 "
            "ORDER BY pp.orders DESC, pp.other_id LIMIT %s", (product_id, limit))
        return [(row["other_id"], row["orders"]) for row in rows]

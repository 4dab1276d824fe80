"""Product reads outside a write transaction (the `ProductReads` port of
service/ports.py): rows by id, their versions, and the products the cache
warmer preloads."""
from chalicelib.domain.products import PRODUCT_COLUMNS
from chalicelib.adapters.db import placeholders



class MySQLProductReads:
    def __init__(self, db):
        self.db = db

    def rows(self, ids):
        """The full rows of those of `ids` that exist (any order)."""
        ids = list(ids)
        if not ids:
            return []
        return self.db.query(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id IN ({placeholders(len(ids))})", ids)

    def versions(self, ids):
        """{id: version now} of those of `ids` that exist."""
        ids = list(ids)
        if not ids:
            return {}
        rows = self.db.query(f"SELECT id, version FROM products WHERE id IN ({placeholders(len(ids))})", ids)
        return {row["id"]: row["version"] for row in rows}

    def best_sellers(self, n, recent_orders):
        """Ids of the active products most units of the last `recent_orders` orders were of."""
        rows = self.db.query(
            "SELECT oi.product_id AS id FROM order_items oi JOIN products p ON p.id = oi.product_id "
            "WHERE p.status = 'active' AND oi.order_id > (SELECT COALESCE(MAX(id), 0) - %s FROM orders) "
            "GROUP BY oi.product_id ORDER BY SUM(oi.quantity) DESC LIMIT %s", (recent_orders, n))
        return [int(r["id"]) for r in rows]

    def newest_active(self, n):
        rows = self.db.query("SELECT id FROM products WHERE status = 'active' ORDER BY created_at DESC LIMIT %s", (n,))
        return [int(r["id"]) for r in rows]

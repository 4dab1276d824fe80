"""MySQL's record of the flash sales (`flash_sales`), the `SaleRecords` port
of service/ports.py: what sale mode starts and stops, and the snapshot
reconcile rebuilds or repairs a gate from."""
from chalicelib.adapters.db import placeholders


class MySQLSaleRecords:
    def __init__(self, db):
        self.db = db

    def product_ids(self):
        """Ids of the products on sale, ascending."""
        return [row["product_id"] for row in self.db.query("SELECT product_id FROM flash_sales ORDER BY product_id")]

    def get(self, product_id):
        rows = self.db.query("SELECT product_id, sale_id, sale_stock, per_customer_limit, started_at "
                             "FROM flash_sales WHERE product_id = %s", (product_id,))
        return rows[0] if rows else None

    def add(self, product_id, sale_id, sale_stock, limit, admit):
        """Record the sale if `admit({stock, status} or None)`, called with the product
        held in share mode, does not raise; DuplicateKey if the product is on sale."""
        def work(cur):
            cur.execute("SELECT id, stock, status FROM products WHERE id = %s LOCK IN SHARE MODE", (product_id,))
            admit(cur.fetchone())
            cur.execute("INSERT INTO flash_sales (product_id, sale_id, sale_stock, per_customer_limit) "
                        "VALUES (%s, %s, %s, %s)", (product_id, sale_id, sale_stock, limit))

        self.db.run(work)

    def remove(self, product_id, sale_id=None):
        """Take the product's sale (only `sale_id`, if given) off the record."""
        if sale_id is None:
            self.db.run(lambda cur: cur.execute("DELETE FROM flash_sales WHERE product_id = %s", (product_id,)))
        else:
            self.db.run(lambda cur: cur.execute("DELETE FROM flash_sales WHERE product_id = %s AND sale_id = %s",
                                                (product_id, sale_id)))

    def orders_of(self, reservation_ids):
        """The orders written for those reservations: [{id, client, customer_id, user_id,
        client_order_id, total_cents, status, flash_reservation}]."""
        rids = list(reservation_ids)
        if not rids:
            return []
        return self.db.query("SELECT id, client, customer_id, user_id, client_order_id, total_cents, status, "
                             "flash_reservation FROM orders "
                             f"WHERE flash_reservation IN ({placeholders(len(rids))})", rids)

    def snapshot(self, product_id, sale_id):
        """One consistent read: (the product's stock, the newest order id, the sale's order
        lines [{client, customer_id, user_id, id, status, quantity, client_order_id, request_hash,
        flash_reservation, total_cents}])."""
        def read(cur):
            cur.execute("SELECT stock FROM products WHERE id = %s", (product_id,))
            stock = cur.fetchone()["stock"]
            cur.execute("SELECT COALESCE(MAX(id), 0) AS watermark FROM orders")
            watermark = int(cur.fetchone()["watermark"])
            cur.execute("SELECT o.client, o.customer_id, o.user_id, o.id, o.status, i.quantity, o.client_order_id, "
                        "o.request_hash, o.flash_reservation, o.total_cents FROM order_items i "
                        "JOIN orders o ON o.id = i.order_id WHERE i.flash_sale_id = %s AND i.product_id = %s",
                        (sale_id, product_id))
            return stock, watermark, list(cur.fetchall())

        return self.db.run(read)

"""Customers by token identity (issuer, subject) -> customers.id, the user_id of
the orders they place themselves. Created on first sight, never changed."""


class CustomerDirectory:
    def __init__(self, db):
        self.db = db
        self._known = {}  # an identity's id never changes: safe to keep for the process's life

    def id_for(self, issuer, subject):
        key = (issuer, subject)
        if key not in self._known:
            def work(cur):
                # LAST_INSERT_ID(id) makes an existing row's id what lastrowid reports.
                cur.execute("INSERT INTO customers (issuer, subject) VALUES (%s, %s) "
                            "ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)", (issuer, subject))
                return cur.lastrowid

            self._known[key] = self.db.run(work)
        return self._known[key]

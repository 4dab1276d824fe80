"""The async batch read model in MySQL: `batches` and `batch_results`."""
import json

from chalicelib.domain.errors import BatchNotFound, ServiceUnavailable
from chalicelib.domain.orders import summarize
from chalicelib.domain.validation import echo
from chalicelib.adapters.db import placeholders


class BatchStore:
    def __init__(self, db):
        self.db = db

    @staticmethod
    def _ensure(cur, batch_id, order_count, client):
        cur.execute("INSERT INTO batches (id, client, order_count, status) VALUES (%s, %s, %s, 'queued') "
                    "ON DUPLICATE KEY UPDATE id = id", (batch_id, client, order_count))

    def ensure(self, batch_id, order_count, client=""):
        self.db.run(lambda cur: self._ensure(cur, batch_id, order_count, client))

    def recorded_positions(self, wanted):
        """{batch_id: the positions of `wanted` {batch_id: positions} that have a result}, one query."""
        return self._recorded(self.db.query, wanted)

    def recorded_in(self, cursor, keys):
        """Inside an order transaction (`cursor`): the (batch_id, position) of `keys` another delivery
        has recorded. Takes the batches' rows shared until that transaction ends, so no result is
        recorded for them meanwhile (record_many takes them exclusive), and reads the results as
        committed (a locking read: the transaction's snapshot is left to its own first read)."""
        ids = sorted({batch_id for batch_id, _ in keys})
        if not ids:
            return set()
        cursor.execute(f"SELECT id FROM batches WHERE id IN ({placeholders(len(ids))}) ORDER BY id "
                       "LOCK IN SHARE MODE", ids)
        wanted = {}
        for batch_id, position in keys:
            wanted.setdefault(batch_id, []).append(position)

        def query(sql, params):
            cursor.execute(sql + " LOCK IN SHARE MODE", params)
            return cursor.fetchall()

        return {(batch_id, pos) for batch_id, positions in self._recorded(query, wanted).items() for pos in positions}

    @staticmethod
    def _recorded(query, wanted):
        found = {batch_id: set() for batch_id in wanted}
        wanted = {batch_id: sorted(positions) for batch_id, positions in wanted.items() if positions}
        if wanted:
            where = " OR ".join(f"(batch_id = %s AND position IN ({placeholders(len(p))}))"
                                for p in wanted.values())
            for row in query(f"SELECT batch_id, position FROM batch_results WHERE {where}",
                             [v for batch_id, p in wanted.items() for v in (batch_id, *p)]):
                found[row["batch_id"]].add(row["position"])
        return found

    def record(self, batch_id, order_count, results, client=""):
        """record_many of one batch: its status."""
        return self.record_many({batch_id: (order_count, results, client)})[batch_id]

    def record_many(self, batches, settle=None):
        """Record {batch_id: (order_count, {position: OrderResult}, client)} (creating the
        batch rows if needed) and bring each batch's status up to date, in one transaction.
        Returns {batch_id: status}.

        A position's result is written once: when two deliveries of one message
        race, the first recorded result stays (the other is a replay of it).
        `settle(cursor, {(batch_id, position): result})`, called once the batches' rows
        are held, returns results to record instead (a failure whose order another
        delivery has since created becomes that order's replay)."""
        ids = sorted(batches)

        def work(cur):
            rows = ",".join(["(%s, %s, %s, 'queued')"] * len(ids))
            cur.execute(f"INSERT INTO batches (id, client, order_count, status) VALUES {rows} "
                        "ON DUPLICATE KEY UPDATE id = id",
                        [v for b in ids for v in (b, batches[b][2], batches[b][0])])
            # Serialises the writers of each batch (rows locked in ascending id order) so the counts are exact.
            cur.execute(f"SELECT id, order_count FROM batches WHERE id IN ({placeholders(len(ids))}) "
                        "ORDER BY id FOR UPDATE", ids)
            expected = {row["id"]: row["order_count"] for row in cur.fetchall()}
            settled = settle(cur, {(b, pos): res for b in ids for pos, res in batches[b][1].items()}) if settle else {}
            results = [(b, pos, json.dumps(settled.get((b, pos), res).to_api(), ensure_ascii=False))
                       for b in ids for pos, res in sorted(batches[b][1].items())]
            if results:
                cur.executemany("INSERT INTO batch_results (batch_id, position, result) VALUES (%s, %s, %s) "
                                "ON DUPLICATE KEY UPDATE batch_id = batch_id", results)
            cur.execute(f"SELECT batch_id, COUNT(*) AS n FROM batch_results WHERE batch_id IN "
                        f"({placeholders(len(ids))}) GROUP BY batch_id LOCK IN SHARE MODE", ids)
            counts = {row["batch_id"]: row["n"] for row in cur.fetchall()}
            statuses = {b: "done" if counts.get(b, 0) >= expected[b] else ("processing" if counts.get(b) else "queued")
                        for b in ids}
            cases = " ".join(["WHEN %s THEN %s"] * len(ids))
            cur.execute(f"UPDATE batches SET status = CASE id {cases} END, updated_at = CURRENT_TIMESTAMP(6) "
                        f"WHERE id IN ({placeholders(len(ids))})",
                        [v for b in ids for v in (b, statuses[b])] + ids)
            return statuses

        return self.db.run(work)

    def get(self, batch_id, owner=None, resolve=None):
        """API body for GET /batches/{batch_id}; BatchNotFound if unknown or
        another client's (`owner` None: any client's). `resolve` ({reservation_id:
        (client_order_id, duplicate)} -> {reservation_id: final result}) turns the
        recorded `pending` results of flash-sale orders into what became of them."""
        if not isinstance(batch_id, str) or not 1 <= len(batch_id) <= 64:
            quoted = echo(batch_id)
            raise BatchNotFound(f"Batch {quoted} does not exist.", batch_id=quoted)

        def work(cur):
            cur.execute("SELECT id, client, order_count, created_at, updated_at FROM batches WHERE id = %s",
                        (batch_id,))
            batch = cur.fetchone()
            if batch is None or (owner is not None and batch["client"] != owner.client):
                raise BatchNotFound(f"Batch {batch_id} does not exist.", batch_id=batch_id)
            cur.execute("SELECT position, result FROM batch_results WHERE batch_id = %s ORDER BY position",
                        (batch_id,))
            return batch, [(row["position"], json.loads(row["result"])) for row in cur.fetchall()]

        batch, rows = self.db.run(work)
        pending = {r["reservation_id"]: (r["client_order_id"], r.get("duplicate", False))
                   for _, r in rows if r.get("status") == "pending" and r.get("reservation_id")}
        if pending and resolve is not None:
            final = resolve(pending)
            settled = [(pos, final[r["reservation_id"]]) for pos, r in rows
                       if r.get("status") == "pending" and r.get("reservation_id") in final]
            if settled:
                rows = [(pos, final.get(r.get("reservation_id"), r) if r.get("status") == "pending" else r)
                        for pos, r in rows]
                self._keep(batch_id, settled)
        results = [r for _, r in rows]
        # Derived from the rows rather than the status column, so it is exact even
        # while two consumers of the same batch race. A flash-sale order still pending
        # keeps the batch from `done`: once done, every result is final.
        count, expected = len(results), batch["order_count"]
        summary = summarize(results)
        flash_pending = summary.pop("pending", 0)
        status = "done" if count >= expected and not flash_pending else ("processing" if count else "queued")
        return {"batch_id": batch["id"], "status": status, "order_count": expected, "results": results,
                "summary": {**summary, "pending": max(0, expected - count) + flash_pending}}

    def _keep(self, batch_id, settled):
        """Store the final results of reservations in place of `pending` (they outlive the
        reservation records in Redis); a read that cannot write still answers."""
        try:
            self.db.run(lambda cur: cur.executemany(
                "UPDATE batch_results SET result = %s WHERE batch_id = %s AND position = %s",
                [(json.dumps(result, ensure_ascii=False), batch_id, pos) for pos, result in settled]))
        except ServiceUnavailable:
            pass

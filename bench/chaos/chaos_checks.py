"""After a chaos run settles (every server and process back, clients' owed
requests answered, queues drained, payment windows passed), MySQL, Redis and
the API are compared with what every client was told. Each check returns the
problems it found, one line each; the counts are the last line's fields."""
import collections
import contextlib
import time

import requests

from chalicelib import bootstrap
from scripts import localstack

from chaos_load import DEV_KEY, SEARCH_WORDS
from chaos_stack import DATABASE

MAILED = {"order.created", "order.paid", "order.cancelled", "order.expired"}


class Checks:
    def __init__(self, stack, ledger, initial, sale):
        self.stack, self.ledger, self.initial, self.sale = stack, ledger, initial, sale
        self.http = requests.Session()
        self.problems = collections.defaultdict(list)  # field of the last line -> lines

    def sql(self, statement, args=None):
        return self.stack.mariadb.execute(statement, args, database=DATABASE)

    def get(self, path, key=DEV_KEY, **kwargs):
        for _ in range(20):
            with contextlib.suppress(requests.RequestException):
                response = self.http.get(self.stack.api_url + path, headers={"x-api-key": key}, timeout=15, **kwargs)
                if response.status_code != 503:
                    return response
            time.sleep(0.5)
        raise RuntimeError(f"GET {path} did not answer after the run settled")

    # --- settling -----------------------------------------------------------

    def busy(self):
        """What still moves: messages in the queues, orders waiting to expire, events
        to publish, batches being processed, flash leases."""
        depth = 0
        for url, _ in self.stack.queue_urls.values():
            attrs = self.stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            depth += sum(int(v) for v in attrs.values())
        row = self.sql("SELECT (SELECT COUNT(*) FROM orders WHERE lifecycle = 'pending_payment') AS pending, "
                       "(SELECT COUNT(*) FROM order_events WHERE published_at IS NULL) AS unpublished, "
                       "(SELECT COUNT(*) FROM batches WHERE status <> 'done') AS batches")[0]
        leases = bootstrap.flash_gate().leases()
        return {"queued": depth, "leases": leases, **{k: int(v) for k, v in row.items()}}

    def settle(self, stall_seconds, cap_seconds):
        """Wait until nothing moves; the flash reconcile runs as its schedule would. Gives up when
        nothing left has shrunk for `stall_seconds` (stuck), or at `cap_seconds` in all: a backlog
        that drains slowly is waited for, one that stops is reported."""
        started = time.monotonic()
        state, least, progressed = None, None, started
        while time.monotonic() - started < cap_seconds:
            with contextlib.suppress(Exception):
                bootstrap.flash_admin().reconcile_all()
            try:
                state = self.busy()
            except Exception as exc:  # a dependency still coming back
                state = {"error": str(exc)[:100]}
            if not any(v for v in state.values()):
                return state
            left = sum(v for v in state.values() if isinstance(v, int))
            if least is None or left < least:
                least, progressed = left, time.monotonic()
            elif time.monotonic() - progressed > stall_seconds:
                return state
            time.sleep(2)
        return state

    # --- the checks ---------------------------------------------------------

    def run(self):
        orders = {r["id"]: r for r in self.sql(
            "SELECT id, client, customer_id, user_id, client_order_id, status, lifecycle, expires_at, "
            "flash_reservation, contact_email FROM orders")}
        self.check_batches(orders)
        self.check_orders(orders)
        self.check_stock()
        self.check_stuck()
        self.check_cache()
        self.check_events(orders)
        return self.problems

    def add(self, kind, line):
        self.problems[kind].append(line)

    def check_orders(self, orders):
        """lost: told created/pending and no such order; duplicated: one key answered with two
        orders or reservations, or an order its client was told had failed."""
        by_coid = collections.defaultdict(list)
        for row in orders.values():
            by_coid[row["client_order_id"]].append(row)
        by_reservation = {r["flash_reservation"]: r for r in orders.values() if r["flash_reservation"]}
        claimed = set()
        for intent in self.ledger.intents:
            coid = intent.order["client_order_id"]
            ids = {a.get("order_id") for a in intent.answers if a.get("order_id")}
            rids = {a.get("reservation_id") for a in intent.answers if a.get("reservation_id")}
            if len(ids) > 1 or len(rids) > 1:
                self.add("duplicated", f"{coid}: answered orders {sorted(ids)} reservations {sorted(rids)}")
            rows = by_coid.get(coid, [])
            if len(rows) > 1:
                self.add("duplicated", f"{coid}: {len(rows)} orders {[r['id'] for r in rows]}")
            if intent.told == "created" and not any(r["id"] == intent.order_id for r in rows):
                self.add("lost", f"{coid}: told created as order {intent.order_id}, MySQL has {rows}")
            elif intent.told == "pending" and intent.reservation_id not in by_reservation:
                answer = self._reservation(intent.reservation_id)
                self.add("lost", f"{coid}: told pending as {intent.reservation_id}, never written ({answer})")
            elif intent.told == "failed" and rows:
                self.add("duplicated", f"{coid}: told failed {intent.error}, MySQL has order {rows[0]['id']}")
            if intent.told:
                claimed.add(coid)
        for coid in sorted(set(by_coid) - claimed):
            if not any(coid == i.order["client_order_id"] for _, i in self._owed()):
                self.add("duplicated", f"{coid}: order {by_coid[coid][0]['id']} no client was told of")

    def _owed(self):
        return [(kind, i) for kind, intents, _ in self.ledger.retries for i in intents]

    def _reservation(self, rid):
        response = self.get(f"/reservations/{rid}")
        return response.json().get("reservation", response.json().get("error"))

    def check_batches(self, orders):
        for batch_id, intents in sorted(self.ledger.batches.items()):
            response = self.get(f"/batches/{batch_id}")
            if response.status_code != 200:
                self.add("lost", f"batch {batch_id}: accepted, now {response.status_code} {response.text[:120]}")
                continue
            batch = response.json()
            if batch["status"] != "done":
                self.add("stuck", f"batch {batch_id}: {batch['status']} {batch['summary']}")
                continue
            for intent, result in zip(intents, batch["results"]):
                code = (result.get("error") or {}).get("code")
                if result["status"] in ("created", "cancelled") and result.get("order_id") not in orders:
                    self.add("lost", f"batch {batch_id} {result['client_order_id']}: order {result.get('order_id')}"
                                     " not in MySQL")
                elif result["status"] == "failed" and code not in ("INSUFFICIENT_STOCK", "PRODUCT_NOT_FOUND",
                                                                   "SALE_LIMIT_EXCEEDED"):
                    self.add("lost", f"batch {batch_id} {result['client_order_id']}: failed {code}")
                intent.answers.append(result)
                intent.told = "failed" if result["status"] == "failed" else "created"
                intent.order_id, intent.error = result.get("order_id"), code

    def check_stock(self):
        """oversold: stock below 0, or below initial + deltas - units held by orders; lost:
        units that left the stock with no order holding them the other way round."""
        held = {r["product_id"]: int(r["units"]) for r in self.sql(
            "SELECT i.product_id, SUM(i.quantity) AS units FROM order_items i JOIN orders o ON o.id = i.order_id "
            "WHERE o.status = 'created' GROUP BY i.product_id")}
        stock = {r["id"]: r["stock"] for r in self.sql("SELECT id, stock FROM products")}
        for pid, initial in sorted(self.initial.items()):
            base = initial + self.ledger.deltas.get(pid, 0) - held.get(pid, 0)
            allowed = {base, base + self.ledger.uncertain.get(pid, 0)}
            if stock[pid] < 0 or stock[pid] < min(allowed):
                self.add("oversold", f"product {pid}: stock {stock[pid]}, expected {sorted(allowed)}")
            elif stock[pid] not in allowed:
                self.add("lost", f"product {pid}: stock {stock[pid]}, expected {sorted(allowed)} (units lost)")
        sale = self.sql("SELECT sale_id, sale_stock FROM flash_sales WHERE product_id = %s", (self.sale,))[0]
        sold = self.sql("SELECT COALESCE(SUM(i.quantity), 0) AS units FROM order_items i JOIN orders o "
                        "ON o.id = i.order_id WHERE o.status = 'created' AND i.flash_sale_id = %s", (sale["sale_id"],))
        if int(sold[0]["units"]) > sale["sale_stock"]:
            self.add("oversold", f"flash sale {sale['sale_id']}: {sold[0]['units']} sold of {sale['sale_stock']}")

    def check_stuck(self):
        for row in self.sql("SELECT id, expires_at FROM orders WHERE lifecycle = 'pending_payment' "
                            "AND expires_at < NOW(6) - INTERVAL 5 SECOND"):
            self.add("stuck", f"order {row['id']}: pending_payment past {row['expires_at']}")
        for row in self.sql("SELECT id, status FROM batches WHERE status <> 'done'"):
            self.add("stuck", f"batch {row['id']}: {row['status']}")
        leases = bootstrap.flash_gate().leases()
        if leases:
            self.add("stuck", f"{leases} flash reservations still leased")
        for intent in self.ledger.intents:
            if intent.kind == "flash" and intent.told == "pending":
                answer = self._reservation(intent.reservation_id)
                if answer.get("status") == "pending":
                    self.add("stuck", f"reservation {intent.reservation_id}: still pending")

    def check_cache(self):
        """stale_cache: a product copy or a search page the API serves that differs from MySQL."""
        fields = ("name", "price_cents", "stock", "status", "version")
        rows = {r["id"]: r for r in self.sql(f"SELECT id, {', '.join(fields)} FROM products")}
        for pid in sorted(self.initial):
            for _ in range(2):  # the second read is served from the cache the first filled
                response = self.get(f"/products/{pid}")
                got = response.json()["product"]
                if any(got[f] != rows[pid][f] for f in fields):
                    self.add("stale_cache", f"product {pid} ({response.headers.get('X-Cache')}): "
                                            f"{ {f: got[f] for f in fields} } != MySQL {rows[pid]}")
                    break
        from chalicelib.domain.search_query import parse_query

        backend = bootstrap.search_service().backend
        for word in SEARCH_WORDS:
            params = {"q": word, "limit": "10"}
            for _ in range(2):
                response = self.get("/products/search", params=params)
                served = [(p["id"], p["version"]) for p in response.json()["items"]]
                truth = [(p["id"], p["version"]) for p in backend.search(parse_query(params).backend_query()).items]
                if served != truth[:len(served)] or len(served) != min(10, len(truth)):
                    self.add("stale_cache", f"search {params} ({response.headers.get('X-Cache')}): "
                                            f"{served} != MySQL {truth[:10]}")
                    break

    def check_events(self, orders):
        """events_missing: an order's events out of sequence, unpublished, or missing the one its
        state needs; a published event to be mailed with no record of its email (unless in the DLQ)."""
        events = collections.defaultdict(list)
        for row in self.sql("SELECT event_id, order_id, sequence, type, published_at FROM order_events ORDER BY id"):
            events[row["order_id"]].append(row)
            if row["published_at"] is None:
                self.add("events_missing", f"event {row['event_id']} ({row['type']}) never published")
        for oid, row in sorted(orders.items()):
            mine = sorted(events.get(oid, []), key=lambda e: e["sequence"])
            types = [e["type"] for e in mine]
            needed = {"order.created"} | {"paid": {"order.paid"}, "fulfilled": {"order.paid", "order.fulfilled"},
                                          "cancelled": {"order.cancelled"}, "expired": {"order.expired"}}.get(
                row["lifecycle"], set())
            if [e["sequence"] for e in mine] != list(range(1, len(mine) + 1)) or not needed <= set(types):
                self.add("events_missing", f"order {oid} ({row['lifecycle']}): events {types}")
        self._check_emails(orders, events)

    def _check_emails(self, orders, events):
        sent = {r["event_id"] for r in self.sql("SELECT event_id FROM notifications_sent")}
        in_dlq = self.dead_letters().get(self.stack.env["NOTIFY_QUEUE_NAME"], "")
        for oid, rows in events.items():
            row = orders.get(oid)
            for event in rows:
                mailed = event["type"] == "stock.low" or (event["type"] in MAILED and row and row["contact_email"])
                if mailed and event["event_id"] not in sent and event["event_id"] not in in_dlq:
                    self.add("events_missing", f"event {event['event_id']} ({event['type']}): no email recorded")

    def emails_sent_twice(self):
        """SES messages beyond the recorded ones: the documented lost-commit case."""
        response = requests.get(self.stack.env["AWS_ENDPOINT_URL"] + "/_aws/ses", timeout=30)
        total = len(response.json()["messages"])
        recorded = self.sql("SELECT COUNT(*) AS n FROM notifications_sent WHERE ses_message_id IS NOT NULL")[0]["n"]
        return total - int(recorded)

    def dead_letters(self):
        """DLQ name -> the bodies of its messages, joined (to find an event id in)."""
        out = {}
        for name, (_, dlq_url) in self.stack.queue_urls.items():
            messages = localstack.peek(self.stack.sqs, dlq_url)
            out[name] = "\n".join(m["Body"] for m in messages)
        return out

    def print_dead_letters(self, log=print):
        for name, (_, dlq_url) in sorted(self.stack.queue_urls.items()):
            for message in localstack.peek(self.stack.sqs, dlq_url):
                receives = message.get("Attributes", {}).get("ApproximateReceiveCount")
                log(f"DLQ {name}-dlq: received {receives} times: {message['Body'][:300]}")

"""The mixed workload of a chaos run, over HTTP as clients send it: sync and
async batches of ordinary orders, customers' orders with tokens, flash-sale
orders with duplicate submits, payments, fulfilments, cancels, catalog writes
(price, stock, deactivation), searches and product reads. Clients behave
well: a 503, a 5xx from a dying process or a connection that fails is
retried later with the same body, so each order ends with one answer. The
ledger keeps what every client was told, for the checks."""
import itertools
import random
import threading
import time
from dataclasses import dataclass, field

import requests

DEV_KEY = "shop-local-dev-key-0001"
ADMIN_KEY = "shop-local-admin-key-0001"
APP_KEY = "shop-local-mobile-app-key-0001"
SEARCH_WORDS = ("chaos", "phone", "lamp", "desk", "cable", "shouji", "手机", "")
RETRYABLE_ORDER = {"SERVICE_UNAVAILABLE"}
BUSINESS = {"INSUFFICIENT_STOCK", "PRODUCT_NOT_FOUND", "SALE_LIMIT_EXCEEDED", "QUANTITY_LIMIT_EXCEEDED"}


@dataclass
class Intent:
    """One order as its client sees it."""
    kind: str                 # sync | async | customer | flash
    order: dict
    customer: str = None      # the token's email for customer orders
    told: str = None          # created | pending | failed (final answers only)
    order_id: int = None
    reservation_id: str = None
    error: str = None
    answers: list = field(default_factory=list)  # every per-order answer, in order


@dataclass
class Ledger:
    intents: list = field(default_factory=list)
    batches: dict = field(default_factory=dict)     # batch_id -> [Intent] (202 answered)
    paid: set = field(default_factory=set)          # order ids told paid
    cancelled: set = field(default_factory=set)     # order ids told cancelled
    maybe_cancelled: set = field(default_factory=set)  # a cancel that got no answer: never paid after it
    fulfilled: set = field(default_factory=set)
    deltas: dict = field(default_factory=dict)      # product id -> sum of stock deltas told applied
    uncertain: dict = field(default_factory=dict)   # product id -> a delta with no answer (at most one each)
    operations: int = 0
    unexpected: list = field(default_factory=list)  # answers no client should get (500s, 404 for its own order)
    retries: list = field(default_factory=list)     # requests still owed an answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, what):
        with self.lock:
            self.unexpected.append(what)

    def created_orders(self):
        with self.lock:
            return [i.order_id for i in self.intents if i.order_id]


class Client:
    """HTTP with the retry rule: None for an answer that says "try again"."""

    def __init__(self, base_url, ledger):
        self.base, self.ledger = base_url, ledger
        self.http = requests.Session()

    def call(self, method, path, key=DEV_KEY, token=None, **kwargs):
        headers = {"x-api-key": key}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        with self.ledger.lock:
            self.ledger.operations += 1
        try:
            response = self.http.request(method, self.base + path, headers=headers, timeout=15, **kwargs)
        except requests.RequestException:
            self.http = requests.Session()  # the API died under us: a new connection next time
            return None
        if response.status_code == 503 or response.status_code in (502, 504):
            return None
        if response.status_code >= 500:
            self.ledger.note(f"{method} {path}: {response.status_code} {response.text[:200]}")
            return None
        return response


class Workload:
    def __init__(self, base_url, ledger, tokens, products, sale_product, seed):
        self.base, self.ledger, self.tokens = base_url, ledger, tokens
        self.products, self.sale_product = products, sale_product
        self.rng = random.Random(seed)
        self.counter = itertools.count()
        self.stop = threading.Event()
        self.threads = []

    # --- orders -------------------------------------------------------------

    def _items(self, rng, pool, most=2):
        return [{"product_id": pid, "quantity": rng.randint(1, 3)} for pid in rng.sample(pool, rng.randint(1, most))]

    def _intent(self, kind, rng, customer=None):
        n = next(self.counter)
        order = {"client_order_id": f"{kind}-{n}"}
        if kind == "flash":
            order.update(user_id=1 + rng.randrange(60), items=[{"product_id": self.sale_product, "quantity": 1}])
        else:
            order["items"] = self._items(rng, self.products)
            if kind != "customer":
                order["user_id"] = 1 + rng.randrange(20)
                if rng.random() < 0.3:
                    order["contact_email"] = f"buyer{order['user_id']}@example.com"
        intent = Intent(kind, order, customer)
        with self.ledger.lock:
            self.ledger.intents.append(intent)
        return intent

    def _record(self, intent, result):
        """One per-order result; True when it is final (not to be sent again)."""
        intent.answers.append(result)
        status = result["status"]
        code = (result.get("error") or {}).get("code")
        if status == "failed" and code in RETRYABLE_ORDER:
            return False
        if status == "failed" and code not in BUSINESS:
            self.ledger.note(f"{intent.kind} {intent.order['client_order_id']}: {code}")
        if intent.reservation_id and result.get("reservation_id") not in (None, intent.reservation_id):
            self.ledger.note(f"{intent.order['client_order_id']}: replay got reservation "
                             f"{result.get('reservation_id')} after {intent.reservation_id}")
        intent.told = status if status != "cancelled" else "created"
        intent.order_id = result.get("order_id") or intent.order_id
        intent.reservation_id = result.get("reservation_id") or intent.reservation_id
        intent.error = code
        return True

    def send_sync(self, client, intents, token=None):
        """One sync batch; the intents still owed an answer."""
        path = "/customer/orders/batch" if token else "/orders/batch"
        key = APP_KEY if token else DEV_KEY
        response = client.call("POST", path, key=key, token=token, json={"orders": [i.order for i in intents]})
        if response is None:
            return intents
        if response.status_code != 200:
            client.ledger.note(f"POST {path}: {response.status_code} {response.text[:200]}")
            return []
        results = response.json()["results"]
        return [i for i, r in zip(intents, results) if not self._record(i, r)]

    def send_async(self, client, intents):
        response = client.call("POST", "/orders/batch?mode=async", json={"orders": [i.order for i in intents]})
        if response is None:
            return intents
        if response.status_code != 202:
            client.ledger.note(f"POST async: {response.status_code} {response.text[:200]}")
            return []
        with self.ledger.lock:
            self.ledger.batches[response.json()["batch_id"]] = intents
        for intent in intents:
            intent.told = "accepted"
        return []

    def send(self, client, request):
        kind, intents, token = request
        left = self.send_async(client, intents) if kind == "async" else self.send_sync(client, intents, token)
        return (kind, left, token) if left else None

    def orderer(self, seed, kinds):
        rng, client, owed = random.Random(seed), Client(self.base, self.ledger), []
        while not self.stop.is_set():
            if owed and rng.random() < 0.5:
                request = owed.pop(0)
            else:
                request = self._new_request(rng, rng.choice(kinds))
            left = self.send(client, request)
            time.sleep(0.03)  # a steady load the consumers keep up with on two shared cores
            if left:
                owed.append(left)
                time.sleep(0.05)
            if request[0] == "flash" and rng.random() < 0.15 and not left:
                self.send(client, request)  # a duplicate submit: the same orders again
        with self.ledger.lock:
            self.ledger.retries.extend(owed)

    def _new_request(self, rng, kind):
        if kind == "customer":
            email = rng.choice(sorted(self.tokens))
            return kind, [self._intent(kind, rng, email) for _ in range(rng.randint(1, 3))], self.tokens[email]
        count = rng.randint(1, 4) if kind != "flash" else rng.randint(1, 2)
        return kind, [self._intent(kind, rng) for _ in range(count)], None

    def drain(self, deadline):
        """Send every request still owed an answer until it has one (everything is healed)."""
        client, owed = Client(self.base, self.ledger), list(self.ledger.retries)
        while owed and time.monotonic() < deadline:
            left = self.send(client, owed.pop(0))
            if left:
                owed.append(left)
                time.sleep(0.2)
        self.ledger.retries = owed
        return not owed

    # --- payments, fulfilments, cancels ---------------------------------------

    def lifecycle(self, seed):
        """Pays, fulfils or cancels orders clients were told were created. An order
        told cancelled is never paid and one told paid is never cancelled, so each
        told state has one end state to check."""
        rng, client = random.Random(seed), Client(self.base, self.ledger)
        while not self.stop.is_set():
            time.sleep(0.05)
            ids = self.ledger.created_orders()
            if not ids:
                continue
            order_id = rng.choice(ids[-200:])
            action = rng.choices(("pay", "fulfil", "cancel"), (5, 2, 2))[0]
            with self.ledger.lock:
                if (action == "cancel" and order_id in self.ledger.paid) or (action != "cancel" and (
                        order_id in self.ledger.cancelled or order_id in self.ledger.maybe_cancelled)):
                    continue
                if action == "fulfil" and order_id not in self.ledger.paid:
                    continue
            body = {"payment_reference": f"pay-{order_id}"} if action == "pay" else None
            response = client.call("POST", f"/orders/{order_id}/{action}", key=ADMIN_KEY, json=body)
            if response is None or response.status_code == 409:
                if action == "cancel" and response is None:
                    with self.ledger.lock:  # it may have been cancelled: never pay it
                        self.ledger.maybe_cancelled.add(order_id)
                continue
            if response.status_code != 200:
                self.ledger.note(f"{action} {order_id}: {response.status_code} {response.text[:200]}")
                continue
            told = {"pay": self.ledger.paid, "fulfil": self.ledger.fulfilled, "cancel": self.ledger.cancelled}
            with self.ledger.lock:
                told[action].add(order_id)

    # --- catalog writes and reads ---------------------------------------------

    def catalog_writer(self, seed):
        rng, client = random.Random(seed), Client(self.base, self.ledger)
        inactive = set()
        while not self.stop.is_set():
            time.sleep(0.2)
            pid = rng.choice(self.products)
            action = rng.choices(("price", "stock", "status"), (4, 4, 1))[0]
            if action == "price":
                client.call("PATCH", f"/products/{pid}", key=ADMIN_KEY, json={"price_cents": rng.randint(100, 9999)})
            elif action == "status":  # one product off sale at a time: most orders stay sellable
                pid = next(iter(inactive), pid)
                status = "active" if pid in inactive else "inactive"
                response = client.call("PATCH", f"/products/{pid}", key=ADMIN_KEY, json={"status": status})
                if response is not None and response.status_code == 200:
                    (inactive.discard if status == "active" else inactive.add)(pid)
            elif pid not in self.ledger.uncertain:
                self._adjust(client, pid, rng.choice((-2, -1, 5, 10)))
        for pid in sorted(inactive):  # every product for sale again before the checks
            while client.call("PATCH", f"/products/{pid}", key=ADMIN_KEY, json={"status": "active"}) is None:
                time.sleep(0.5)

    def _adjust(self, client, pid, delta):
        response = client.call("POST", f"/products/{pid}/stock", key=ADMIN_KEY, json={"delta": delta})
        with self.ledger.lock:
            if response is None:
                self.ledger.uncertain[pid] = delta  # applied or not: the checks accept either
            elif response.status_code == 200:
                self.ledger.deltas[pid] = self.ledger.deltas.get(pid, 0) + delta
            elif response.status_code != 409:
                self.ledger.note(f"stock {pid}: {response.status_code} {response.text[:200]}")

    def reader(self, seed):
        rng, client = random.Random(seed), Client(self.base, self.ledger)
        while not self.stop.is_set():
            time.sleep(0.02)
            kind = rng.random()
            if kind < 0.4:
                path, params = f"/products/{rng.choice(self.products + [self.sale_product])}", None
            elif kind < 0.55:
                path, params = f"/products/{rng.choice(self.products)}/related", None
            else:
                path, params = "/products/search", {"q": rng.choice(SEARCH_WORDS), "limit": 10}
            response = client.call("GET", path, params=params)
            if response is not None and response.status_code != 200:
                self.ledger.note(f"GET {path} {params}: {response.status_code} {response.text[:200]}")

    # --- control --------------------------------------------------------------

    def start(self):
        actors = [(self.orderer, ("sync", "sync", "async", "customer")), (self.orderer, ("sync", "flash")),
                  (self.orderer, ("flash", "customer", "async")), (self.lifecycle, ()), (self.catalog_writer, ()),
                  (self.reader, ()), (self.reader, ())]
        for target, extra in actors:
            args = (self.rng.random(), extra) if extra else (self.rng.random(),)
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

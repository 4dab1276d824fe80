"""A signed-in but hostile customer (open sign-up, the app key that ships in
the mobile app) against the real MariaDB, Redis and the local SQS endpoint:
a customer's orders always wait for payment and expire, giving their stock
back, even where trusted servers' orders are final at creation (flash-sale
orders too); an order holds at most the cap of one product's units, and the
customer's orders waiting for payment at most the unpaid cap, also when
their batches race each other through several apps (with deadlock retries
off, next to cancels, payments and expiries of their orders); a flash sale's
per-customer limit counts the person once, whichever client's app they
order through."""
import threading
import time

import pytest

from chalicelib import bootstrap
from chalicelib.adapters.inventory import STRATEGIES
from chalicelib.adapters.order_repository import MySQLOrderRepository
from chalicelib.domain.orders import parse_batch
from chalicelib.service import expiry_and_outbox
from chalicelib.service.batch_writer import BatchWriter
from chalicelib.service.orders import OrderService
from chalicelib.adapters.product_writes import ProductWrites
from tests.conftest import make_product
from tests.integration.test_flash_sale import (  # noqa: F401 - fixtures
    consume, flash_queue, on_sale, reconcile, remaining, reset, sqs, stock,
)


def customer(name):
    """A customer as the token's issuer and subject make one (customers.id)."""
    return bootstrap.customer_directory().id_for("https://issuer.example", f"{name}-subject")


def place_as(customer_id, client, *orders, service=None):
    """A customer's batch through `client`'s app: [(client_order_id, {product_id: quantity})]."""
    body = {"orders": [{"client_order_id": coid, "items": [{"product_id": pid, "quantity": qty}
                                                          for pid, qty in lines.items()]} for coid, lines in orders]}
    return (service or bootstrap.orders()).place_batch(
        parse_batch(body, client, customer_id, bootstrap.customer_limits()))["results"]


def unpaid_units(customer_id):
    return int(bootstrap.database().query(
        "SELECT COALESCE(SUM(i.quantity), 0) AS n FROM orders o JOIN order_items i ON i.order_id = o.id "
        "WHERE o.customer_id = %s AND o.lifecycle = 'pending_payment'", (customer_id,))[0]["n"])


def codes(results):
    return [r["error"]["code"] if r["status"] == "failed" else r["status"] for r in results]


def test_a_sale_limit_counts_a_customer_once_whichever_app_they_use(sqs, flash_queue):
    pid = on_sale(stock=10, limit=2)
    ann, bob = customer("ann"), customer("bob")
    assert place_as(ann, "mobile-app", ("a-1", {pid: 2}))[0]["status"] == "pending"
    refused = place_as(ann, "storefront", ("a-2", {pid: 1}))[0]
    assert refused["status"] == "failed" and refused["error"]["code"] == "SALE_LIMIT_EXCEEDED"
    assert place_as(bob, "storefront", ("b-1", {pid: 2}))[0]["status"] == "pending"  # another person
    consume(sqs, flash_queue)
    assert remaining(pid) == 6
    # Written, and rebuilt from MySQL after Redis lost the sale: still one person's units.
    state = bootstrap.state_gateway()
    state.call(lambda r: r.delete(state.key(f"flash:sale:{pid}"), state.key(f"flash:held:{pid}")))
    bootstrap.flash_gate().lost_since(pid, now_ms=0)
    assert bootstrap.flash_admin().reconcile(pid)["action"] == "rebuilt"
    again = place_as(ann, "partner", ("a-3", {pid: 1}))[0]
    assert again["status"] == "failed" and again["error"]["code"] == "SALE_LIMIT_EXCEEDED"
    reconcile(pid, 10)


def place_for_user(client, user_id, coid, lines):
    """A trusted server's order for its own user."""
    body = {"orders": [{"client_order_id": coid, "user_id": user_id,
                        "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines.items()]}]}
    return bootstrap.orders().place_batch(parse_batch(body, client))["results"][0]


@pytest.fixture
def short_customer_window(clean_db):
    """Customers' orders wait 1 s for payment; trusted servers' keep the default (final at creation)."""
    bootstrap.reset(CUSTOMER_PAYMENT_WINDOW_SECONDS="1")
    assert bootstrap.settings().get("ORDER_PAYMENT_WINDOW_SECONDS") == "0"
    yield
    bootstrap.reset()


def test_a_customers_order_waits_for_payment_and_expires_where_trusted_orders_are_final(short_customer_window):
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    mine = place_as(customer("ann"), "mobile-app", ("a-1", {pid: 4}))[0]
    theirs = place_for_user("storefront", 7, "s-1", {pid: 1})
    waiting, final = bootstrap.orders().get(mine["order_id"]), bootstrap.orders().get(theirs["order_id"])
    assert waiting["lifecycle"] == "pending_payment" and waiting["expires_at"] is not None
    assert bootstrap.orders().events(mine["order_id"])[0]["data"]["lifecycle"] == "pending_payment"
    assert final["lifecycle"] == "paid" and final["expires_at"] is None
    assert stock(pid) == 5
    time.sleep(1.2)
    assert expiry_and_outbox.expire_due(bootstrap.orders(), bootstrap.outbox()) == 1
    assert bootstrap.orders().get(mine["order_id"])["lifecycle"] == "expired"
    assert stock(pid) == 9  # the customer's units are back; the paid order keeps its one


def test_a_customers_flash_sale_order_is_written_with_the_customer_window(sqs, flash_queue):
    pid = on_sale(stock=10)
    reset(CUSTOMER_PAYMENT_WINDOW_SECONDS="1")
    try:
        rid = place_as(customer("ann"), "mobile-app", ("a-1", {pid: 3}))[0]["reservation_id"]
        trusted_rid = place_for_user("storefront", 7, "s-1", {pid: 2})["reservation_id"]
        consume(sqs, flash_queue)
        order_id = bootstrap.flash_sales().reservation(rid)["order_id"]
        trusted_id = bootstrap.flash_sales().reservation(trusted_rid)["order_id"]
        written = bootstrap.orders().get(order_id)
        assert written["lifecycle"] == "pending_payment" and written["expires_at"] is not None
        assert bootstrap.orders().events(order_id)[0]["data"]["lifecycle"] == "pending_payment"
        assert bootstrap.orders().get(trusted_id)["lifecycle"] == "paid"
        assert stock(pid) == 5 and remaining(pid) == 5
        time.sleep(1.2)
        assert expiry_and_outbox.expire_due(bootstrap.orders(), bootstrap.outbox()) == 1
    finally:
        reset()
    assert stock(pid) == 8 and remaining(pid) == 8  # back in the stock and in the sale
    reconcile(pid, 10)


@pytest.fixture
def caps(clean_db):
    """A customer may hold 10 units unpaid."""
    bootstrap.reset(CUSTOMER_MAX_UNPAID_UNITS="10")
    yield
    bootstrap.reset()


def test_one_customers_orders_through_every_app_hold_at_most_the_unpaid_cap(caps):
    pid = make_product(bootstrap.catalog(), stock=100)["id"]
    ann, bob = customer("ann"), customer("bob")
    first = place_as(ann, "mobile-app", ("a-1", {pid: 4}), ("a-2", {pid: 4}), ("a-3", {pid: 4}))
    assert codes(first) == ["created", "created", "QUANTITY_LIMIT_EXCEEDED"]
    assert first[2]["error"]["details"] == {"limit": 10, "held": 8, "requested": 4}
    # Another client's app: the same person, the same cap.
    assert codes(place_as(ann, "storefront", ("a-3", {pid: 2}), ("a-4", {pid: 1}))) == [
        "created", "QUANTITY_LIMIT_EXCEEDED"]
    assert unpaid_units(ann) == 10 and stock(pid) == 90
    # A replay is answered as one, cap or not; another customer has a cap of their own; a trusted server
    # naming the same user id is not the customer.
    replay = place_as(ann, "mobile-app", ("a-1", {pid: 4}))[0]
    assert replay["duplicate"] is True and replay["order_id"] == first[0]["order_id"]
    assert codes(place_as(bob, "mobile-app", ("b-1", {pid: 10}))) == ["created"]
    assert place_for_user("storefront", ann, "s-1", {pid: 30})["status"] == "created"
    # Paying or cancelling an order frees its units.
    bootstrap.orders().pay(first[0]["order_id"], "psp-a-1")
    bootstrap.orders().cancel(first[1]["order_id"])
    assert codes(place_as(ann, "mobile-app", ("a-4", {pid: 8}), ("a-5", {pid: 1}))) == [
        "created", "QUANTITY_LIMIT_EXCEEDED"]
    assert unpaid_units(ann) == 10 and stock(pid) == 100 - 4 - 2 - 8 - 10 - 30
    # A failed order left nothing behind: its client_order_id is free.
    assert not bootstrap.database().query("SELECT id FROM orders WHERE client_order_id = 'a-5'")


def test_an_order_holds_at_most_the_cap_of_one_products_units_its_lines_merged(clean_db):
    pid, other = (make_product(bootstrap.catalog(), stock=200)["id"] for _ in range(2))
    results = place_as(customer("ann"), "mobile-app", ("a-1", {pid: 30}), ("a-2", {other: 51}))
    assert codes(results) == ["created", "QUANTITY_LIMIT_EXCEEDED"]
    assert results[1]["error"]["product_id"] == other
    assert results[1]["error"]["details"] == {"limit": 50, "product_id": other}
    body = {"orders": [{"client_order_id": "a-3", "items": [{"product_id": pid, "quantity": 30},
                                                            {"product_id": pid, "quantity": 30}]}]}
    merged = bootstrap.orders().place_batch(parse_batch(body, "mobile-app", customer("ann"),
                                                        bootstrap.customer_limits()))["results"][0]
    assert merged["error"]["code"] == "QUANTITY_LIMIT_EXCEEDED" and merged["error"]["details"]["limit"] == 50
    assert stock(pid) == 170 and stock(other) == 200
    assert place_for_user("storefront", 3, "s-1", {other: 60})["status"] == "created"  # trusted: no such cap


class OneAttempt:
    """The database with db.run's deadlock retries off: a deadlock fails the call."""

    def __init__(self, db):
        self.db = db

    def run(self, work, **options):
        return self.db.run(work, **{**options, "attempts": 1})

    def __getattr__(self, name):
        return getattr(self.db, name)


def without_deadlock_retries(strategy):
    """An OrderService like bootstrap's whose transactions each get one attempt (its
    batches of several orders written in one transaction, as bootstrap's are)."""
    writes, db = bootstrap.product_writes(), OneAttempt(bootstrap.database())
    return OrderService(db, bootstrap.inventory_strategy(strategy),
                        ProductWrites(db, writes.invalidator, writes.search_index, writes.stock_low),
                        MySQLOrderRepository, customer_limits=bootstrap.customer_limits(),
                        batch_writer=BatchWriter(MySQLOrderRepository, customer_limits=bootstrap.customer_limits()))


def run_all(*jobs):
    """Run the callables at once, each in its own thread; what they raised."""
    errors, start = [], threading.Barrier(len(jobs))

    def run(job):
        start.wait()
        try:
            job()
        except Exception as exc:  # the assertion below names them
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    return errors


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_concurrent_batches_of_one_customer_through_several_apps_never_pass_the_cap(caps, strategy):
    """40 one-unit orders of one customer in 8 batches at once, through 4 apps, over 3
    products: exactly the cap's 10 are placed, whatever the interleaving."""
    pids = [make_product(bootstrap.catalog(), stock=100)["id"] for _ in range(3)]
    ann, results = customer("ann"), []
    service = without_deadlock_retries(strategy)
    apps = ("mobile-app", "storefront", "partner", "dev")

    def batch(n):
        results.extend(place_as(ann, apps[n % 4], *[(f"c-{n}-{i}", {pids[(n + i) % 3]: 1}) for i in range(5)],
                                service=service))

    assert run_all(*[lambda n=n: batch(n) for n in range(8)]) == []
    assert sorted(codes(results)).count("created") == 10
    assert set(codes(results)) == {"created", "QUANTITY_LIMIT_EXCEEDED"}
    assert unpaid_units(ann) == 10 and sum(stock(pid) for pid in pids) == 290


def test_the_customer_lock_never_deadlocks_with_cancels_payments_and_expiries(caps):
    """The customer's batches race the cancels, payments and expiries of their earlier orders and
    another customer's batches over the same products, each transaction with one attempt: a
    deadlock fails the test. The cap holds throughout: what is left unpaid is within it."""
    bootstrap.reset(CUSTOMER_MAX_UNPAID_UNITS="10", CUSTOMER_PAYMENT_WINDOW_SECONDS="1")
    pids = [make_product(bootstrap.catalog(), stock=500)["id"] for _ in range(4)]
    ann, bob = customer("ann"), customer("bob")
    earlier = [r["order_id"] for r in place_as(ann, "mobile-app", *[(f"e-{i}", {pids[i % 4]: 1}) for i in range(10)])]
    service, results = without_deadlock_retries("guarded"), []
    time.sleep(1.1)  # the earlier orders are due: the sweep races the rest

    def batches(who, tag):
        for n in range(4):
            results.extend(place_as(who, ("mobile-app", "storefront")[n % 2],
                                    *[(f"{tag}-{n}-{i}", {pids[(n + i) % 4]: 1, pids[(n + i + 1) % 4]: 1})
                                      for i in range(5)], service=service))

    errors = run_all(lambda: batches(ann, "a"), lambda: batches(ann, "b"), lambda: batches(bob, "c"),
                     lambda: [service.cancel(order_id) for order_id in earlier[:5]],
                     lambda: [service.pay(order_id, f"psp-{order_id}") for order_id in earlier[5:8]],
                     lambda: expiry_and_outbox.expire_due(service, bootstrap.outbox()))
    failures = [e for e in errors if "expired" not in str(e).lower()]  # a payment may lose to the sweep
    assert failures == []
    assert "SERVICE_UNAVAILABLE" not in codes(results)  # no deadlock, no lock wait ran out
    assert unpaid_units(ann) <= 10 and unpaid_units(bob) <= 10


def test_flash_sale_orders_keep_the_gate_and_count_towards_the_unpaid_cap_once_written(sqs, flash_queue):
    sale, plain = on_sale(stock=100, limit=60), make_product(bootstrap.catalog(), stock=100)["id"]
    reset(CUSTOMER_MAX_UNPAID_UNITS="10")
    try:
        ann = customer("ann")
        # The cap on one product's units applies before the gate: nothing is taken in the sale.
        over = place_as(ann, "mobile-app", ("f-0", {sale: 51}))[0]
        assert over["error"]["code"] == "QUANTITY_LIMIT_EXCEEDED" and remaining(sale) == 100
        # At the unpaid cap with ordinary orders, a sale order is still accepted and written: the sale's
        # own per-customer limit is its cap, and an accepted sale order never fails later.
        assert codes(place_as(ann, "mobile-app", ("o-1", {plain: 10}))) == ["created"]
        assert codes(place_as(ann, "mobile-app", ("f-1", {sale: 5}))) == ["pending"]
        consume(sqs, flash_queue)
        assert unpaid_units(ann) == 15 and stock(sale) == 95
        # Written and waiting for payment, the sale order's units count for the next ordinary order.
        cancelled = place_as(ann, "mobile-app", ("o-1", {plain: 10}))[0]["order_id"]
        bootstrap.orders().cancel(cancelled)
        refused = place_as(ann, "mobile-app", ("o-2", {plain: 6}))[0]
        assert refused["error"]["details"] == {"limit": 10, "held": 5, "requested": 6}
    finally:
        reset()
    reconcile(sale, 100)

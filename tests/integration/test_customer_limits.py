"""A signed-in but hostile customer (open sign-up, the app key that ships in
the mobile app) against the real MariaDB, Redis and the local SQS endpoint:
a customer's orders always wait for payment and expire, giving their stock
back, even where trusted servers' orders are final at creation (flash-sale
orders too); a flash sale's per-customer limit counts the person once,
whichever client's app they order through."""
import time

import pytest

from chalicelib import bootstrap
from chalicelib.domain.orders import parse_batch
from chalicelib.service import lifecycle
from tests.conftest import make_product
from tests.integration.test_flash_sale import (  # noqa: F401 - fixtures
    consume, flash_queue, on_sale, reconcile, remaining, reset, sqs, stock,
)


def customer(name):
    """A customer as the token's issuer and subject make one (customers.id)."""
    return bootstrap.customer_directory().id_for("https://issuer.example", f"{name}-subject")


def place_as(customer_id, client, *orders):
    """A customer's batch through `client`'s app: [(client_order_id, {product_id: quantity})]."""
    body = {"orders": [{"client_order_id": coid, "items": [{"product_id": pid, "quantity": qty}
                                                          for pid, qty in lines.items()]} for coid, lines in orders]}
    return bootstrap.orders().place_batch(parse_batch(body, client, customer_id))["results"]


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
    bootstrap.redis_gateway().call(lambda r: r.delete(bootstrap.redis_gateway().key(f"flash:sale:{pid}"),
                                                      bootstrap.redis_gateway().key(f"flash:held:{pid}")))
    bootstrap.flash_gate().lost_since(pid, now_ms=0)
    assert bootstrap.flash_sales().reconcile(pid)["action"] == "rebuilt"
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
    assert lifecycle.expire_due(bootstrap.orders(), bootstrap.database()) == 1
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
        assert lifecycle.expire_due(bootstrap.orders(), bootstrap.database()) == 1
    finally:
        reset()
    assert stock(pid) == 8 and remaining(pid) == 8  # back in the stock and in the sale
    reconcile(pid, 10)

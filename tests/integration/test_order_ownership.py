"""What one client can learn about or do to another client's orders, against
the real MariaDB: payment references are unique per client (another client's
use of a reference neither shows nor blocks), and pay, fulfil and cancel
check ownership before they lock, so a hostile caller never waits on (nor
holds) another client's order row."""
import threading

import pymysql
import pytest

from chalicelib import bootstrap
from chalicelib.domain.errors import OrderNotFound, PaymentReferenceUsed
from chalicelib.domain.orders import Owner, parse_batch
from chalicelib.settings import parse_database_url
from tests.conftest import make_product


@pytest.fixture
def window(clean_db):
    """Orders wait for payment, so paying them is a transition."""
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="600")
    yield
    bootstrap.reset()


def place(client, product_id, coid, user_id=1):
    result = bootstrap.orders().place_batch(parse_batch({"orders": [
        {"client_order_id": coid, "user_id": user_id, "items": [{"product_id": product_id, "quantity": 1}]}]},
        client))["results"][0]
    assert result["status"] == "created", result
    return result["order_id"]


def test_a_payment_reference_another_client_used_pays_this_clients_order(window):
    orders = bootstrap.orders()
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    storefront, partner, partner_again = place("storefront", pid, "s-1"), place("partner", pid, "p-1"), \
        place("partner", pid, "p-2")
    assert orders.pay(storefront, "psp-1", Owner(client="storefront"))["lifecycle"] == "paid"
    # The partner's webhook with the same provider reference: paid, and nothing says storefront used it.
    paid = orders.pay(partner, "psp-1", Owner(client="partner"))
    assert paid["lifecycle"] == "paid" and paid["payment_reference"] == "psp-1"
    # Within one client a reference still pays one order only.
    with pytest.raises(PaymentReferenceUsed):
        orders.pay(partner_again, "psp-1", Owner(client="partner"))
    assert orders.get(partner_again)["lifecycle"] == "pending_payment"


def _holding(order_id, test_env):
    """A connection of its own that holds `order_id`'s row locked (FOR UPDATE) until closed."""
    target = parse_database_url(test_env["DATABASE_URL"])
    conn = pymysql.connect(host=target.host, port=target.port, user=target.user, password=target.password,
                           database=target.database, autocommit=False)
    conn.cursor().execute("SELECT id FROM orders WHERE id = %s FOR UPDATE", (order_id,))
    return conn


@pytest.mark.parametrize("action", ["pay", "fulfil", "cancel"])
@pytest.mark.parametrize("hostile", [Owner(client="partner"), Owner(customer_id=99)], ids=["client", "customer"])
def test_another_clients_locked_order_answers_404_at_once(window, test_env, action, hostile):
    """While the owner's transaction holds its order row, a hostile caller's pay, fulfil or
    cancel of that order answers 404 without waiting for the lock (and so never holds it)."""
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    order_id = place("storefront", pid, "mine")
    calls = {"pay": lambda: bootstrap.orders().pay(order_id, "psp-x", hostile),
             "fulfil": lambda: bootstrap.orders().fulfil(order_id, hostile),
             "cancel": lambda: bootstrap.orders().cancel(order_id, hostile)}
    answered = []

    def hostile_call():
        try:
            calls[action]()
        except OrderNotFound as exc:
            answered.append(exc)

    holder = _holding(order_id, test_env)
    try:
        caller = threading.Thread(target=hostile_call)
        caller.start()
        caller.join(5)  # MariaDB's lock wait is 50 s: an answer now did not wait on the row
        assert not caller.is_alive() and len(answered) == 1, "the hostile call waited on another client's lock"
    finally:
        holder.rollback()
        holder.close()
        caller.join(60)
    order = bootstrap.orders().get(order_id)
    assert order["lifecycle"] == "pending_payment" and order["status"] == "created"

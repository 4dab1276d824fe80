"""The rules that keep one signed-in customer from holding stock nobody pays
for (pure logic, the order service on in-memory fakes): their orders always
get a payment window, a batch holds at most 10 orders, an order at most the
cap of one product's units (lines merged), the customer's orders waiting for
payment at most the unpaid cap; a deployment configured otherwise refuses to
serve. (Against MariaDB and under concurrency: tests/integration/test_customer_limits.py.)"""
import pytest

from chalicelib import bootstrap
from chalicelib.domain.customer_limits import CustomerLimits
from chalicelib.domain.errors import PayloadTooLarge, ServiceUnavailable
from chalicelib.domain.order_lifecycle import PaymentWindows
from chalicelib.domain.orders import InvalidOrder, OrderRequest, parse_batch
from chalicelib.entrypoints.deployment import refuse_if_misconfigured
from chalicelib.settings import Settings
from tests.unit.fakes import World, order_service


def customer_order(coid, *lines):
    return {"client_order_id": coid, "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


def test_a_customers_order_waits_for_payment_where_a_trusted_servers_is_final():
    windows = PaymentWindows(trusted=0, customer=900)
    assert windows.for_order(customer_id=0) == 0
    assert windows.for_order(customer_id=12) == 900


SETTINGS = ("CUSTOMER_PAYMENT_WINDOW_SECONDS", "CUSTOMER_MAX_UNITS_PER_PRODUCT", "CUSTOMER_MAX_UNPAID_UNITS")


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", "", "٥"])
def test_a_customer_window_or_cap_below_one_refuses_to_serve_in_every_stage(monkeypatch, setting, value):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    problems = Settings({"STAGE": "local", setting: value}).misconfiguration()
    assert len(problems) == 1 and setting in problems[0]
    try:
        bootstrap.reset(**{setting: value})
        with pytest.raises(ServiceUnavailable, match=f"refuses to serve: {setting}"):
            refuse_if_misconfigured()
    finally:
        bootstrap.reset()


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("value", ["1", "900", "86400"])
def test_a_customer_window_or_cap_of_one_or_more_serves(monkeypatch, setting, value):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert Settings({"STAGE": "local", setting: value}).misconfiguration() == []


def test_a_customers_batch_holds_at_most_ten_orders_a_trusted_servers_a_hundred():
    eleven = {"orders": [customer_order(f"c-{i}", (1, 1)) for i in range(11)]}
    with pytest.raises(PayloadTooLarge, match="At most 10 orders"):
        parse_batch(eleven, "mobile-app", customer_id=7)
    assert len(parse_batch({"orders": eleven["orders"][:10]}, "mobile-app", customer_id=7)) == 10
    trusted = {"orders": [{**o, "user_id": 1} for o in eleven["orders"]]}
    assert all(isinstance(o, OrderRequest) for o in parse_batch(trusted, "storefront"))


def test_a_customers_order_holds_at_most_the_cap_of_one_products_units_once_merged():
    limits = CustomerLimits(units_per_product=50)
    parsed = parse_batch({"orders": [customer_order("ok", (1, 50), (2, 20), (2, 30)),
                                     customer_order("merged", (1, 30), (2, 1), (1, 21)),
                                     customer_order("line", (3, 51))]}, "mobile-app", 7, limits)
    assert isinstance(parsed[0], OrderRequest) and parsed[0].quantities == {1: 50, 2: 50}
    assert all(isinstance(o, InvalidOrder) for o in parsed[1:])
    assert [o.error.extra["details"] for o in parsed[1:]] == [{"limit": 50, "product_id": 1},
                                                              {"limit": 50, "product_id": 3}]
    trusted = parse_batch({"orders": [{**customer_order("t", (1, 600), (1, 600)), "user_id": 1}]}, "storefront",
                          limits=limits)
    assert trusted[0].quantities == {1: 1200}  # a trusted server's order: no such cap


def test_a_failed_result_carries_the_cap_it_went_past():
    service = order_service(World({1: {"stock": 100, "price_cents": 10}}))
    results = service.place_batch(parse_batch({"orders": [customer_order("big", (1, 60))]}, "mobile-app", 7))
    assert results["results"] == [{"client_order_id": "big", "status": "failed", "error": {
        "code": "QUANTITY_LIMIT_EXCEEDED", "product_id": 1, "details": {"limit": 50, "product_id": 1},
        "message": "A customer's order may hold at most 50 units of one product; 60 of product 1 asked for."}}]


def test_a_customer_holds_at_most_the_unpaid_cap_in_orders_waiting_for_payment():
    world = World({1: {"stock": 100, "price_cents": 10}, 2: {"stock": 100, "price_cents": 10}})
    service = order_service(world)
    service.customer_limits = CustomerLimits(unpaid_units=10)

    def place(client, customer_id, *orders):
        return [r["error"]["details"] if r["status"] == "failed" else r["status"]
                for r in service.place_batch(parse_batch({"orders": list(orders)}, client, customer_id))["results"]]

    assert place("mobile-app", 7, customer_order("a", (1, 6)), customer_order("b", (1, 2), (2, 3))) == [
        "created", {"limit": 10, "held": 6, "requested": 5}]
    assert place("storefront", 7, customer_order("c", (2, 4))) == ["created"]     # another app, same customer
    assert place("mobile-app", 8, customer_order("a", (1, 10))) == ["created"]    # another customer
    assert place("storefront", 7, customer_order("d", (1, 1))) == [{"limit": 10, "held": 10, "requested": 1}]
    assert world.store.products[1]["stock"] == 84 and world.store.products[2]["stock"] == 96

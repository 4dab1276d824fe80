"""The rules that keep one signed-in customer from holding stock nobody pays
for (pure logic): their orders always get a payment window, and a deployment
configured otherwise refuses to serve."""
import pytest

from chalicelib import bootstrap
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.order_lifecycle import PaymentWindows
from chalicelib.settings import Settings


def test_a_customers_order_waits_for_payment_where_a_trusted_servers_is_final():
    windows = PaymentWindows(trusted=0, customer=900)
    assert windows.for_order(customer_id=0) == 0
    assert windows.for_order(customer_id=12) == 900


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", "", "٥"])
def test_a_customer_payment_window_below_one_second_refuses_to_serve_in_every_stage(monkeypatch, value):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    problems = Settings({"STAGE": "local", "CUSTOMER_PAYMENT_WINDOW_SECONDS": value}).misconfiguration()
    assert len(problems) == 1 and "CUSTOMER_PAYMENT_WINDOW_SECONDS" in problems[0]
    try:
        bootstrap.reset(CUSTOMER_PAYMENT_WINDOW_SECONDS=value)
        with pytest.raises(ServiceUnavailable, match="refuses to serve: CUSTOMER_PAYMENT_WINDOW_SECONDS"):
            bootstrap.refuse_if_misconfigured()
    finally:
        bootstrap.reset()


@pytest.mark.parametrize("value", ["1", "900", "86400"])
def test_a_customer_payment_window_of_a_second_or_more_serves(monkeypatch, value):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert Settings({"STAGE": "local", "CUSTOMER_PAYMENT_WINDOW_SECONDS": value}).misconfiguration() == []

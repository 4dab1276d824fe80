"""The fields notifications added to the HTTP contract, over HTTP:
`contact_email` on orders and `low_stock_threshold` on products, with garbage
(docs/api.md: a bad order fails on its own with VALIDATION_ERROR, a bad product
body is 400; never a 500)."""
import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.test_orders_api import create_product

BAD_EMAILS = ["", "  ", "a", "@example.com", "ann@", "ann@example", "ann@@example.com", "ann smith@example.com",
              "Ann <ann@example.com>", "ann@example.com, bob@example.com", "ann\x00@example.com", "a" * 65 + "@x.io",
              "ann@" + "x" * 250 + ".com", 1, True, None, [], {}, "ann@exa mple.com", "ann@.com"]


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_a_bad_contact_email_fails_that_order_only(api, email):
    pid = create_product(api, "CE-1", stock=5)
    body = {"orders": [{"client_order_id": "bad", "user_id": 1, "contact_email": email,
                        "items": [{"product_id": pid, "quantity": 1}]},
                       {"client_order_id": "good", "user_id": 1, "contact_email": "  ann@example.com ",
                        "items": [{"product_id": pid, "quantity": 1}]}]}
    answer = api.post("/orders/batch", json=body)
    assert answer.status_code == 200, answer.text
    bad, good = answer.json()["results"]
    assert bad["status"] == "failed" and bad["error"]["code"] == "VALIDATION_ERROR"
    assert good["status"] == "created"
    assert api.get(f"/orders/{good['order_id']}").json()["order"]["contact_email"] == "ann@example.com"


@pytest.mark.parametrize("value", [-1, 10**9 + 1, 1.5, "3", True, None, [], {}])
def test_a_bad_low_stock_threshold_is_400(api, value):
    created = api.post("/products", key=ADMIN_KEY, json={"sku": "LST-X", "name": "n", "category": "c",
                                                        "price_cents": 1, "stock": 1, "low_stock_threshold": value})
    assert created.status_code == 400 and created.json()["error"]["code"] == "VALIDATION_ERROR"
    assert created.json()["error"]["details"]["field"] == "low_stock_threshold"
    pid = create_product(api, "LST-1", stock=5)
    patched = api.patch(f"/products/{pid}", key=ADMIN_KEY, json={"low_stock_threshold": value})
    assert patched.status_code == 400 and patched.json()["error"]["code"] == "VALIDATION_ERROR"


def test_the_threshold_is_set_read_and_changed(api):
    created = api.post("/products", key=ADMIN_KEY, json={"sku": "LST-OK", "name": "n", "category": "c",
                                                        "price_cents": 1, "stock": 9, "low_stock_threshold": 4})
    assert created.status_code == 201 and created.json()["product"]["low_stock_threshold"] == 4
    pid = created.json()["product"]["id"]
    patched = api.patch(f"/products/{pid}", key=ADMIN_KEY, json={"low_stock_threshold": 0})
    assert patched.status_code == 200 and patched.json()["product"]["low_stock_threshold"] == 0
    assert patched.json()["product"]["version"] == 2
    assert api.get(f"/products/{pid}").json()["product"]["low_stock_threshold"] == 0

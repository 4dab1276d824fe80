"""Hostile inputs (ones that could cost a 500, a dropped connection or an
echo without bound), over real HTTP against chalice local: each gets the
contract's 4xx, or a result cut to what the contract allows."""
import pymysql
import pytest

from chalicelib import bootstrap
from chalicelib.domain.products import MAX_STOCK
from tests.conftest import ADMIN_KEY, DEV_KEY

INT_MAX = 2**31 - 1  # the old products.stock column type


def assert_error(response, status, code, field=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["request_id"] == response.headers["X-Request-Id"]
    if field is not None:
        assert error["details"]["field"] == field
    return error


def new_product(api, sku, stock=10, price_cents=500):
    response = api.post("/products", key=ADMIN_KEY, json={"sku": sku, "name": sku, "category": "c",
                                                          "price_cents": price_cents, "stock": stock})
    assert response.status_code == 201, response.text
    return response.json()["product"]


def order(coid, pid, quantity=1, user_id=1):
    return {"client_order_id": coid, "user_id": user_id, "items": [{"product_id": pid, "quantity": quantity}]}


def order_count():
    return bootstrap.database().query("SELECT COUNT(*) AS n FROM orders")[0]["n"]


@pytest.mark.parametrize("path, params, field", [
    ("/products/search", {"limit": "--5"}, "limit"),
    ("/products/search", {"min_price": "--1"}, "min_price"),
    ("/products/search", {"max_price": "-+1"}, "max_price"),
    ("/admin/stats", {"window": "--1"}, "window"),
    ("/admin/stats", {"step": "+5"}, "step"),
])
def test_numbers_with_repeated_signs_are_400(api, path, params, field):
    assert_error(api.get(path, params=params, key=ADMIN_KEY), 400, "VALIDATION_ERROR", field)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("depth", [900, 5000])
def test_deeply_nested_bodies_are_400(api, mode, depth):
    # 5000 levels overflow the parser; 900 parse, then overflowed json.dumps on the async path.
    nested = "[" * depth + "]" * depth
    raw = '{"orders": [{"client_order_id": "deep", "user_id": 1, "items": ' + nested + "}]}"
    response = api.post(f"/orders/batch?mode={mode}", data=raw, headers={"Content-Type": "application/json"})
    assert "nested deeper than" in assert_error(response, 400, "VALIDATION_ERROR")["message"]
    assert order_count() == 0


@pytest.mark.parametrize("method, path, admin", [
    ("POST", "/orders/batch", False),              # once a dropped connection
    ("POST", "/orders/batch?mode=async", False),   # once a 500
    ("POST", "/products", True),                   # once a 500
    ("PATCH", "/products/{pid}", True),            # once a 500
])
def test_a_lone_surrogate_is_400_not_a_500_or_a_dropped_connection(api, method, path, admin):
    product = new_product(api, "SURR")
    bodies = {"/orders/batch": '{"orders": [{"client_order_id": "a\\ud800", "user_id": 1, '
                               f'"items": [{{"product_id": {product["id"]}, "quantity": 1}}]}}]}}',
              "/products": '{"sku": "S\\ud800", "name": "n", "category": "c", "price_cents": 1, "stock": 1}',
              "/products/{pid}": '{"name": "bad \\udfff name"}'}
    raw = bodies[path.split("?")[0]]
    response = api.request(method, path.format(pid=product["id"]), key=ADMIN_KEY if admin else DEV_KEY,
                           data=raw.encode(), headers={"Content-Type": "application/json"})
    assert "surrogate" in assert_error(response, 400, "VALIDATION_ERROR")["message"]
    assert api.get(f"/products/{product['id']}").json()["product"] == product
    assert order_count() == 0


def test_an_invalid_client_order_id_is_echoed_cut_to_64_characters(api):
    pid = new_product(api, "ECHO")["id"]
    long_id = "x" * 70_000
    response = api.post("/orders/batch", json={"orders": [order(long_id, pid), order("ok-1", pid)]})
    assert response.status_code == 200, response.text[:300]
    bad, good = response.json()["results"]
    assert bad["status"] == "failed" and bad["error"]["code"] == "VALIDATION_ERROR"
    assert len(bad["client_order_id"]) == 64 and long_id.startswith(bad["client_order_id"][:63])
    assert good["status"] == "created"
    assert len(response.content) < 2000


def test_unknown_field_names_are_echoed_cut_short(api):
    response = api.post("/products", key=ADMIN_KEY, json={"sku": "s", "name": "n", "category": "c",
                                                          "price_cents": 1, "stock": 1, "y" * 50_000: 1})
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert [len(name) for name in error["details"]["unknown_fields"]] == [64]
    assert len(response.content) < 2000


def test_stock_has_an_upper_bound(api):
    product = new_product(api, "MAXED", stock=MAX_STOCK)
    error = assert_error(api.post(f"/products/{product['id']}/stock", key=ADMIN_KEY, json={"delta": 1}),
                         400, "VALIDATION_ERROR", "delta")
    assert error["product_id"] == product["id"] and str(MAX_STOCK) in error["message"]
    taken = api.post(f"/products/{product['id']}/stock", key=ADMIN_KEY, json={"delta": -MAX_STOCK})
    assert taken.status_code == 200 and taken.json()["product"]["stock"] == 0
    assert new_product(api, "MAXED-2", stock=MAX_STOCK)["stock"] == MAX_STOCK
    assert_error(api.post("/products", key=ADMIN_KEY, json={"sku": "OVER", "name": "n", "category": "c",
                                                            "price_cents": 1, "stock": MAX_STOCK + 1}),
                 400, "VALIDATION_ERROR", "stock")


def test_a_cancel_returns_its_stock_even_past_the_old_int_range(api):
    pid = new_product(api, "BIG", stock=10)["id"]
    placed = api.post("/orders/batch", json={"orders": [order("big-1", pid, 5)]}).json()["results"][0]
    # Stock raised outside the API (a row from before the bound): the cancel must still give its 5 back.
    conn = bootstrap.database().connect()
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("UPDATE products SET stock = %s WHERE id = %s", (INT_MAX, pid))
        conn.commit()
    finally:
        conn.close()
    cancelled = api.post(f"/orders/{placed['order_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["order"]["status"] == "cancelled"
    assert bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (pid,))[0]["stock"] == INT_MAX + 5
    # Above the bound, only decreases are accepted.
    assert_error(api.post(f"/products/{pid}/stock", key=ADMIN_KEY, json={"delta": 1}), 400, "VALIDATION_ERROR")
    assert api.post(f"/products/{pid}/stock", key=ADMIN_KEY, json={"delta": -5}).status_code == 200


def test_duplicate_sku_does_not_quote_mysql(api):
    new_product(api, "DUP-1")
    for response, skus in [
        (api.post("/products", key=ADMIN_KEY, json={"sku": "dup-1", "name": "n", "category": "c",
                                                    "price_cents": 1, "stock": 1}), ["dup-1"]),
        (api.post("/products/bulk", key=ADMIN_KEY, json={"products": [
            {"sku": "NEW-1", "name": "n", "category": "c", "price_cents": 1, "stock": 1},
            {"sku": "Dup-1", "name": "n", "category": "c", "price_cents": 1, "stock": 1}]}), ["Dup-1"]),
        (api.post("/products/bulk", key=ADMIN_KEY, json={"products": [
            {"sku": "Twice", "name": "n", "category": "c", "price_cents": 1, "stock": 1},
            {"sku": "TWICE", "name": "n", "category": "c", "price_cents": 1, "stock": 1}]}), ["TWICE"]),
    ]:
        error = assert_error(response, 409, "DUPLICATE_SKU")
        assert error["details"]["skus"] == skus
        text = response.text.lower()
        assert "duplicate entry" not in text and "uq_products_sku" not in text and "for key" not in text
    assert api.get("/products/search", params={"q": "n"}).json()["total"] == 0


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain; charset=utf-8", "application/xml",
                                          "text/xml", "application/xml, application/json"])
def test_bodies_not_labelled_json_are_415(api, content_type):
    body = b'{"sku": "LABEL", "name": "n", "category": "c", "price_cents": 1, "stock": 1}'
    response = api.post("/products", key=ADMIN_KEY, data=body, headers={"Content-Type": content_type})
    assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert api.get("/products/search", params={"q": "n"}).json()["total"] == 0


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/x-www-form-urlencoded"])
def test_json_bodies_with_the_accepted_labels_still_work(api, content_type):
    body = b'{"sku": "LABEL", "name": "n", "category": "c", "price_cents": 1, "stock": 1}'
    response = api.post("/products", key=ADMIN_KEY, data=body, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    # A read labelled text/plain carries no body to misread: still served.
    read = api.get(f"/products/{response.json()['product']['id']}", headers={"Content-Type": "text/plain"})
    assert read.status_code == 200, read.text


def test_replay_of_a_cancelled_order_says_cancelled(api):
    pid = new_product(api, "REPLAY", stock=3)["id"]
    body = {"orders": [order("r-1", pid, 2)]}
    placed = api.post("/orders/batch", json=body).json()["results"][0]
    assert api.post(f"/orders/{placed['order_id']}/cancel").status_code == 200
    replay = api.post("/orders/batch", json=body).json()
    assert replay["results"] == [{"client_order_id": "r-1", "status": "cancelled", "order_id": placed["order_id"],
                                  "total_cents": placed["total_cents"], "duplicate": True}]
    assert replay["summary"] == {"created": 0, "failed": 0, "cancelled": 1}
    assert api.get(f"/products/{pid}").json()["product"]["stock"] == 3  # nothing reserved again

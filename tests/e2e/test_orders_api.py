"""The orders part of docs/api.md over real HTTP against chalice local."""
import json

import pytest

from tests.conftest import ADMIN_KEY


def create_product(api, sku, stock=10, price_cents=500):
    response = api.post("/products", key=ADMIN_KEY, json={"sku": sku, "name": sku, "category": "c",
                                                          "price_cents": price_cents, "stock": stock})
    assert response.status_code == 201
    return response.json()["product"]["id"]


def stock_of(api, product_id):
    return api.get(f"/products/{product_id}").json()["product"]["stock"]


def order(coid, *lines, user_id=1):
    return {"client_order_id": coid, "user_id": user_id,
            "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


def test_batch_is_partial_and_in_request_order(api):
    a = create_product(api, "A", stock=5, price_cents=300)
    b = create_product(api, "B", stock=1, price_cents=1000)
    response = api.post("/orders/batch", json={"orders": [
        order("o1", (a, 2), (b, 1)),
        order("o2", (b, 1)),
        order("o3", (a, 1), (a, 2)),
        order("o4", (123456, 1)),
        {"client_order_id": "o5", "user_id": "me", "items": []},
    ]})
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["client_order_id"] for r in results] == ["o1", "o2", "o3", "o4", "o5"]
    assert results[0]["status"] == "created" and results[0]["total_cents"] == 1600 and results[0]["duplicate"] is False
    assert results[1]["error"]["code"] == "INSUFFICIENT_STOCK" and results[1]["error"]["product_id"] == b
    assert results[2]["status"] == "created" and results[2]["total_cents"] == 900
    assert results[3]["error"]["code"] == "PRODUCT_NOT_FOUND" and results[3]["error"]["product_id"] == 123456
    assert results[4]["error"]["code"] == "VALIDATION_ERROR"
    assert body["summary"] == {"created": 2, "failed": 3}
    assert stock_of(api, a) == 0 and stock_of(api, b) == 0

    fetched = api.get(f"/orders/{results[2]['order_id']}").json()["order"]
    assert fetched["items"] == [{"product_id": a, "quantity": 3, "unit_price_cents": 300}]
    assert fetched["status"] == "created" and fetched["client_order_id"] == "o3" and fetched["user_id"] == 1


def test_inactive_product_is_not_for_sale(api):
    pid = create_product(api, "I")
    api.patch(f"/products/{pid}", key=ADMIN_KEY, json={"status": "inactive"})
    result = api.post("/orders/batch", json={"orders": [order("x", (pid, 1))]}).json()["results"][0]
    assert result["error"]["code"] == "PRODUCT_NOT_FOUND"
    assert stock_of(api, pid) == 10


def test_replay_and_idempotency_conflict(api):
    pid = create_product(api, "R", stock=10)
    first = api.post("/orders/batch", json={"orders": [order("same", (pid, 2))]}).json()["results"][0]
    replay = api.post("/orders/batch", json={"orders": [order("same", (pid, 2))]}).json()["results"][0]
    assert replay["duplicate"] is True and replay["order_id"] == first["order_id"]
    other = api.post("/orders/batch", json={"orders": [order("same", (pid, 3))]}).json()["results"][0]
    assert other["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    another_user = api.post("/orders/batch", json={"orders": [order("same", (pid, 3), user_id=2)]}).json()
    assert another_user["results"][0]["status"] == "created"
    assert stock_of(api, pid) == 5


def test_cancel_restocks_once_and_stays_readable(api):
    pid = create_product(api, "C", stock=4)
    oid = api.post("/orders/batch", json={"orders": [order("c", (pid, 4))]}).json()["results"][0]["order_id"]
    assert stock_of(api, pid) == 0
    for _ in range(3):
        response = api.post(f"/orders/{oid}/cancel")
        assert response.status_code == 200 and response.json()["order"]["status"] == "cancelled"
    assert stock_of(api, pid) == 4
    assert api.get(f"/orders/{oid}").json()["order"]["status"] == "cancelled"


def test_unknown_orders_are_404(api):
    assert api.get("/orders/999999").json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert api.post("/orders/999999/cancel").json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert api.get("/orders/abc").status_code == 400


WHOLE_REQUEST_GARBAGE = [
    b"", b"nope", b"[]", b"null", b"{}", b'{"orders": null}', b'{"orders": []}', b'{"orders": {}}',
    b'{"orders": "x"}', b'{"orders": [], "extra": 1}', b"\xff\xfe",
]


@pytest.mark.parametrize("raw", WHOLE_REQUEST_GARBAGE)
def test_garbage_requests_are_400_and_change_nothing(api, raw):
    pid = create_product(api, "G", stock=3)
    response = api.post("/orders/batch", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert stock_of(api, pid) == 3


def test_more_than_100_orders_rejects_everything(api):
    pid = create_product(api, "M", stock=500)
    orders = [order(f"m{i}", (pid, 1)) for i in range(101)]
    response = api.post("/orders/batch", json={"orders": orders})
    assert response.status_code == 413 and response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert stock_of(api, pid) == 500


GARBAGE_ORDERS = [
    None, 5, "order", [], {},
    {"client_order_id": "", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "x" * 65, "user_id": 1, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": 7, "user_id": 1, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "a", "user_id": True, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "a", "user_id": 0, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "a", "user_id": 10**30, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "a", "user_id": 1, "items": []},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}] * 51},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": 1, "quantity": 0}]},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": 1, "quantity": 1001}]},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": 1, "quantity": 2.5}]},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": "1", "quantity": 1}]},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": -1, "quantity": 1}]},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": 1}]},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": 1, "quantity": 1, "price": 0}]},
    {"client_order_id": "a", "user_id": 1, "items": [[1, 1]]},
    {"client_order_id": "a", "user_id": 1, "items": {"product_id": 1, "quantity": 1}},
    {"client_order_id": "a\x00b", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "a", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}], "coupon": "free"},
]


def test_garbage_orders_fail_alone_and_never_touch_stock(api):
    pid = create_product(api, "Z", stock=7)
    for bad in GARBAGE_ORDERS:
        bad = json.loads(json.dumps(bad).replace('"product_id": 1', f'"product_id": {pid}'))
        response = api.post("/orders/batch", json={"orders": [bad, order("good", (pid, 1))]})
        assert response.status_code == 200, (bad, response.text)
        first, second = response.json()["results"]
        assert first["status"] == "failed" and first["error"]["code"] == "VALIDATION_ERROR", bad
        assert second["status"] == "created"
    assert stock_of(api, pid) == 6  # "good" was created once, then replayed

"""The lifecycle routes over HTTP with the default setting (orders final at
creation): an order is paid at once, its history is its events, and the
routes keep to the caller's own orders."""
from tests.conftest import ADMIN_KEY
from tests.e2e.test_orders_api import create_product, order

PARTNER = "shop-local-partner-key-0001"


def test_orders_final_at_creation_and_their_history(api):
    pid = create_product(api, "LC-1", stock=5)
    order_id = api.post("/orders/batch", json={"orders": [order("lc-1", (pid, 2))]}).json()["results"][0]["order_id"]
    placed = api.get(f"/orders/{order_id}").json()["order"]
    assert (placed["lifecycle"], placed["expires_at"], placed["status"]) == ("paid", None, "created")
    again = api.post(f"/orders/{order_id}/pay", json={"payment_reference": "psp-1"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "ALREADY_PAID"
    assert api.post(f"/orders/{order_id}/pay", json={"payment_reference": ""}).status_code == 400
    assert api.post(f"/orders/{order_id}/pay", json={"payment_reference": "x", "extra": 1}).status_code == 400
    assert api.post(f"/orders/{order_id}/fulfil").json()["order"]["lifecycle"] == "fulfilled"
    refused = api.post(f"/orders/{order_id}/cancel")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "ORDER_FULFILLED"
    history = api.get(f"/orders/{order_id}/events").json()["events"]
    assert [e["type"] for e in history] == ["order.created", "order.fulfilled"]
    assert history[0]["data"]["total_cents"] == placed["total_cents"] and history[0]["sequence"] == 1
    assert api.get(f"/orders/{order_id}/events", key=PARTNER).status_code == 404  # not theirs
    assert api.post(f"/orders/{order_id}/fulfil", key=PARTNER).status_code == 404
    assert api.get(f"/orders/{order_id}/events", key=ADMIN_KEY).status_code == 200

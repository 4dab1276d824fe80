"""Orders and batches belong to the client that placed them (docs/api.md,
"Who can see what"): another client gets exactly what an unknown id gets, and
cannot cancel; idempotency keys are per client; admin keys see everything."""
import json

from chalicelib import bootstrap
from chalicelib.domain.clients import LOCAL_KEY
from chalicelib.service.async_orders import OrderIngest
from tests.conftest import ADMIN_KEY
from tests.e2e.test_orders_api import create_product, order, stock_of

STOREFRONT = LOCAL_KEY.format(client="storefront", generation=1)
PARTNER = LOCAL_KEY.format(client="partner", generation=1)


def place(api, key, *orders):
    response = api.post("/orders/batch", key=key, json={"orders": list(orders)})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_another_clients_order_is_not_found_and_cannot_be_cancelled(api):
    pid = create_product(api, "OWN-1", stock=10)
    order_id = place(api, STOREFRONT, order("sf-1", (pid, 3), user_id=5))[0]["order_id"]
    mine = api.get(f"/orders/{order_id}", key=STOREFRONT)
    assert mine.status_code == 200 and mine.json()["order"]["user_id"] == 5

    theirs = api.get(f"/orders/{order_id}", key=PARTNER)
    unknown = api.get(f"/orders/{order_id + 1000}", key=PARTNER)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert theirs.json()["error"]["message"].replace(str(order_id), "N") == \
        unknown.json()["error"]["message"].replace(str(order_id + 1000), "N")  # nothing tells them apart

    cancel = api.post(f"/orders/{order_id}/cancel", key=PARTNER)
    assert cancel.status_code == 404
    assert stock_of(api, pid) == 7  # not restocked
    assert api.get(f"/orders/{order_id}", key=STOREFRONT).json()["order"]["status"] == "created"
    assert api.get(f"/orders/{order_id}", key=ADMIN_KEY).status_code == 200  # operators see every order
    assert api.post(f"/orders/{order_id}/cancel", key=STOREFRONT).json()["order"]["status"] == "cancelled"
    assert stock_of(api, pid) == 10


def test_idempotency_keys_are_per_client(api):
    pid = create_product(api, "OWN-2", stock=10)
    first = place(api, STOREFRONT, order("same-id", (pid, 1), user_id=9))[0]
    other = place(api, PARTNER, order("same-id", (pid, 2), user_id=9))[0]
    # Not a duplicate of, nor a conflict with, the storefront's order: the partner's own.
    assert other["status"] == "created" and other["duplicate"] is False
    assert other["order_id"] != first["order_id"]
    replay = place(api, STOREFRONT, order("same-id", (pid, 1), user_id=9))[0]
    assert replay["duplicate"] is True and replay["order_id"] == first["order_id"]
    assert stock_of(api, pid) == 7


def test_an_async_batch_is_seen_only_by_its_client(api):
    pid = create_product(api, "OWN-3", stock=10)
    accepted = api.post("/orders/batch?mode=async", key=STOREFRONT,
                        json={"orders": [order("as-1", (pid, 1))]})
    assert accepted.status_code == 202
    batch_id = accepted.json()["batch_id"]
    assert api.get(f"/batches/{batch_id}", key=STOREFRONT).status_code == 200
    theirs = api.get(f"/batches/{batch_id}", key=PARTNER)
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "BATCH_NOT_FOUND"
    assert api.get(f"/batches/{batch_id}", key=ADMIN_KEY).status_code == 200


def test_orders_from_the_queue_belong_to_the_client_the_message_names(api):
    pid = create_product(api, "OWN-4", stock=10)
    ingest = OrderIngest(bootstrap.orders(), bootstrap.batch_store())
    ingest.process(json.dumps({"batch_id": "q-own", "client": "partner", "orders": [order("q-1", (pid, 1))]}), "m1")
    ingest.process(json.dumps({"batch_id": "q-none", "orders": [order("q-2", (pid, 1))]}), "m2")
    order_id = api.get("/batches/q-own", key=PARTNER).json()["results"][0]["order_id"]
    assert api.get(f"/orders/{order_id}", key=PARTNER).status_code == 200
    assert api.get(f"/orders/{order_id}", key=STOREFRONT).status_code == 404
    # A producer that names no client: the orders are the operators' to see.
    assert api.get("/batches/q-none", key=PARTNER).status_code == 404
    assert api.get("/batches/q-none", key=ADMIN_KEY).json()["summary"]["created"] == 1

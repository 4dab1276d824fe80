"""GET /products/{product_id}/related over real HTTP (docs/api.md, "Bought
together"): orders placed through the API reach the ranking through the outbox
relay, the order-events topic, the related queue and its consumer (the app's
own handler behind the local poller), and bad input is a clear 4xx."""
import time

import boto3
import pytest

from chalicelib import bootstrap
from chalicelib.service import expiry_and_outbox
from scripts.poller import Poller
from tests.conftest import ADMIN_KEY, DEV_KEY

MOBILE_KEY = "shop-local-mobile-app-key-0001"


def _product(api, stock=5):
    response = api.post("/products", key=ADMIN_KEY, json={"sku": f"REL-{time.monotonic_ns()}", "name": "Kettle",
                                                          "category": "kitchen", "price_cents": 1000,
                                                          "stock": stock})
    assert response.status_code == 201, response.text
    return response.json()["product"]["id"]


def _order(api, client_order_id, product_ids):
    response = api.post("/orders/batch", json={"orders": [{
        "client_order_id": client_order_id, "user_id": 1,
        "items": [{"product_id": pid, "quantity": 1} for pid in product_ids]}]})
    assert response.status_code == 200 and response.json()["summary"]["created"] == 1, response.text
    return response.json()["results"][0]["order_id"]


def _consume(test_env):
    """Relay the outbox to the topic, then run the related consumer until its queue is empty."""
    import app
    from chalicelib.adapters.queues import EventPublisher

    publisher = EventPublisher(test_env["AWS_ENDPOINT_URL"], "us-east-1", test_env["ORDER_EVENTS_TOPIC_ARN"])
    while expiry_and_outbox.publish_pending(bootstrap.outbox(), publisher):
        pass
    sqs = boto3.client("sqs", endpoint_url=test_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    poller = Poller(sqs, test_env["RELATED_QUEUE_NAME"], app.handle_related_products, wait_seconds=1)
    while poller.poll_once().received:
        pass


def test_orders_show_up_as_bought_together(api, test_env):
    kettle, tea, mug, cup = (_product(api) for _ in range(4))
    _order(api, "r-1", [kettle, tea, mug])
    _order(api, "r-2", [kettle, tea])
    cancelled = _order(api, "r-3", [kettle, cup])
    assert api.post(f"/orders/{cancelled}/cancel").status_code == 200
    _consume(test_env)

    response = api.get(f"/products/{kettle}/related")
    assert response.status_code == 200, response.text
    assert response.headers["X-Cache"] == "MISS" and response.headers["X-Request-Id"]
    body = response.json()
    assert body["product_id"] == kettle
    assert [(i["product"]["id"], i["bought_together"]) for i in body["items"]] == [(tea, 2), (mug, 1)]
    assert body["items"][0]["product"]["name"] == "Kettle"
    again = api.get(f"/products/{kettle}/related", params={"limit": "1"}, key=MOBILE_KEY)  # any key
    assert again.headers["X-Cache"] == "HIT" and [i["product"]["id"] for i in again.json()["items"]] == [tea]


def test_unknown_product_is_404(api):
    response = api.get("/products/999999999999/related")
    assert response.status_code == 404 and response.json()["error"]["code"] == "PRODUCT_NOT_FOUND"
    assert response.json()["error"]["product_id"] == 999999999999


@pytest.mark.parametrize("path, params, field", [
    ("/products/abc/related", {}, "product_id"), ("/products/0/related", {}, "product_id"),
    ("/products/-1/related", {}, "product_id"), ("/products/1e3/related", {}, "product_id"),
    ("/products/{pid}/related", {"limit": "0"}, "limit"), ("/products/{pid}/related", {"limit": "51"}, "limit"),
    ("/products/{pid}/related", {"limit": "ten"}, "limit"), ("/products/{pid}/related", {"limit": "--5"}, "limit"),
    ("/products/{pid}/related", {"limit": "5\x00"}, "limit"), ("/products/{pid}/related", {"limit": "1.5"}, "limit"),
])
def test_bad_input_is_400(api, path, params, field):
    pid = _product(api)
    response = api.get(path.format(pid=pid), params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["details"]["field"] == field and error["request_id"]


def test_unknown_parameters_are_400_and_keys_are_checked(api):
    pid = _product(api)
    response = api.get(f"/products/{pid}/related", params={"sort": "x", "limit": "3"})
    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"unknown_fields": ["sort"], "allowed": ["limit"]}
    assert api.get(f"/products/{pid}/related", key=None).status_code == 403
    assert api.get(f"/products/{pid}/related", key="nope").status_code == 403
    assert api.post(f"/products/{pid}/related", key=DEV_KEY).status_code == 405

"""Flash sales over HTTP (docs/api.md, "Flash sales"): an admin puts a product
on sale and takes it off; a sale order answers pending with a reservation its
client can poll and no other client can see; the consumer writes it; an async
batch shows its sale orders pending until written; a cancel returns the units
to the sale."""
from chalicelib import bootstrap
from chalicelib.domain.clients import LOCAL_KEY
from chalicelib.entrypoints import sqs as sqs_handlers
from scripts import localstack
from tests.conftest import ADMIN_KEY
from tests.e2e.test_async_batches import ingest_queue, sqs  # noqa: F401 - fixtures
from tests.e2e.test_orders_api import create_product, order, stock_of
from tests.support.sqs import drain

STOREFRONT = LOCAL_KEY.format(client="storefront", generation=1)
PARTNER = LOCAL_KEY.format(client="partner", generation=1)


def consume_flash_queue():
    sqs = localstack.sqs_client(bootstrap.settings().aws_endpoint_url)
    url = localstack.queue_url(sqs, bootstrap.settings().get("FLASH_QUEUE_NAME"))
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        if not messages:
            return
        event = {"Records": [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]}
        assert sqs_handlers.handle_flash_event(event)["batchItemFailures"] == []
        for m in messages:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def test_sale_mode_admission_and_polling(api):
    pid = create_product(api, "FLASH-1", stock=10, price_cents=700)
    assert api.post(f"/products/{pid}/sale", json={"sale_stock": 3}).status_code == 403  # admin only
    started = api.post(f"/products/{pid}/sale", key=ADMIN_KEY, json={"sale_stock": 3, "per_customer_limit": 2})
    assert started.status_code == 201, started.text
    assert started.json()["sale"]["remaining"] == 3 and started.json()["sale"]["per_customer_limit"] == 2
    again = api.post(f"/products/{pid}/sale", key=ADMIN_KEY, json={"sale_stock": 3})
    assert again.status_code == 409 and again.json()["error"]["code"] == "SALE_CONFLICT"
    too_many = create_product(api, "FLASH-2", stock=1)
    refused = api.post(f"/products/{too_many}/sale", key=ADMIN_KEY, json={"sale_stock": 2})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "INSUFFICIENT_STOCK"

    body = api.post("/orders/batch", key=STOREFRONT, json={"orders": [
        order("f1", (pid, 2), user_id=1), order("f2", (pid, 2), user_id=2)]}).json()
    assert [r["status"] for r in body["results"]] == ["pending", "failed"]
    assert body["results"][1]["error"]["code"] == "INSUFFICIENT_STOCK"
    assert body["summary"] == {"created": 0, "failed": 1, "pending": 1}
    rid = body["results"][0]["reservation_id"]

    mine = api.get(f"/reservations/{rid}", key=STOREFRONT)
    assert mine.status_code == 200 and mine.json()["reservation"]["status"] == "pending"
    theirs = api.get(f"/reservations/{rid}", key=PARTNER)
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "RESERVATION_NOT_FOUND"
    assert api.get("/reservations/not-a-reservation", key=STOREFRONT).status_code == 404

    consume_flash_queue()

    written = api.get(f"/reservations/{rid}", key=STOREFRONT).json()["reservation"]
    assert written["status"] == "created" and written["total_cents"] == 1400
    assert api.get(f"/orders/{written['order_id']}", key=STOREFRONT).json()["order"]["status"] == "created"
    assert stock_of(api, pid) == 8
    assert api.get(f"/products/{pid}/sale", key=ADMIN_KEY).json()["sale"]["remaining"] == 1

    stopped = api.request("DELETE", f"/products/{pid}/sale", key=ADMIN_KEY)
    assert stopped.status_code == 200 and stopped.json()["sale"]["on_sale"] is False
    assert api.get(f"/products/{pid}/sale", key=ADMIN_KEY).json()["error"]["code"] == "SALE_NOT_FOUND"
    # Off sale, the product sells on the ordinary path again.
    plain = api.post("/orders/batch", key=STOREFRONT, json={"orders": [order("f3", (pid, 1), user_id=3)]}).json()
    assert plain["results"][0]["status"] == "created" and stock_of(api, pid) == 7


def test_async_sale_orders_are_pending_until_written_and_a_cancel_returns_their_units(api, ingest_queue):
    _, poller = ingest_queue
    pid = create_product(api, "FLASH-3", stock=10, price_cents=300)
    assert api.post(f"/products/{pid}/sale", key=ADMIN_KEY, json={"sale_stock": 8, "per_customer_limit": 2}) \
        .status_code == 201
    accepted = api.post("/orders/batch?mode=async", key=STOREFRONT, json={"orders": [
        order("as1", (pid, 2), user_id=1), order("as2", (pid, 1), user_id=2), order("as3", (pid, 3), user_id=3)]})
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]

    def batch():
        return api.get(f"/batches/{batch_id}", key=STOREFRONT).json()

    assert drain(poller, lambda: len(batch()["results"]) == 3)
    seen = batch()
    assert seen["status"] == "processing" and seen["summary"] == {"created": 0, "failed": 1, "pending": 2}
    assert [r["status"] for r in seen["results"]] == ["pending", "pending", "failed"]
    assert seen["results"][2]["error"]["code"] == "SALE_LIMIT_EXCEEDED"
    assert stock_of(api, pid) == 10  # accepted, not written yet

    consume_flash_queue()

    done = batch()
    assert done["status"] == "done" and done["summary"] == {"created": 2, "failed": 1, "pending": 0}
    first = done["results"][0]
    assert first["status"] == "created" and first["total_cents"] == 600
    assert first["reservation_id"] == seen["results"][0]["reservation_id"]
    assert stock_of(api, pid) == 7
    assert api.get(f"/products/{pid}/sale", key=ADMIN_KEY).json()["sale"]["remaining"] == 5

    cancelled = api.post(f"/orders/{first['order_id']}/cancel", key=STOREFRONT)
    assert cancelled.status_code == 200 and cancelled.json()["order"]["status"] == "cancelled"
    assert api.post(f"/orders/{first['order_id']}/cancel", key=STOREFRONT).status_code == 200  # once only
    assert stock_of(api, pid) == 9
    assert api.get(f"/products/{pid}/sale", key=ADMIN_KEY).json()["sale"]["remaining"] == 7

"""The sample Lambda SQS event in events/ goes through app.py's handler as
`chalice invoke`-style local invocation would deliver it."""
import json
from pathlib import Path

from chalicelib import bootstrap
from tests.conftest import make_product

import app as shop_app

EVENTS = Path(__file__).resolve().parent.parent.parent / "events"


def test_sample_order_ingest_event(clean_db):
    event = json.loads((EVENTS / "sqs_order_ingest.json").read_text())
    # Point the sample's product ids at products of this test.
    mapping = {}
    for record in event["Records"]:
        body = json.loads(record["body"])
        for order in body["orders"]:
            for line in order["items"]:
                if line["product_id"] not in mapping:
                    mapping[line["product_id"]] = make_product(bootstrap.catalog(), stock=10)["id"]
                line["product_id"] = mapping[line["product_id"]]
        record["body"] = json.dumps(body)

    assert shop_app.handle_order_ingest(event, None) == {"batchItemFailures": []}
    assert shop_app.handle_order_ingest(event, None) == {"batchItemFailures": []}  # duplicate delivery

    first, foreign = (json.loads(r["body"]) for r in event["Records"])
    batch = bootstrap.batch_store().get(first["batch_id"])
    assert batch["status"] == "done"
    assert [r["client_order_id"] for r in batch["results"]] == [o["client_order_id"] for o in first["orders"]]
    assert all(r["status"] == "created" and not r["duplicate"] for r in batch["results"])
    other = bootstrap.batch_store().get(f"sqs-{event['Records'][1]['messageId']}")
    assert other["results"][0]["client_order_id"] == foreign["orders"][0]["client_order_id"]
    assert bootstrap.database().query("SELECT COUNT(*) AS n FROM orders")[0]["n"] == 3

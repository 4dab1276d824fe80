"""The order-ingest message contract without any service: chunking on the
producer side, decoding (and rejecting) on the consumer side."""
import json

import pytest

from chalicelib.domain import ingest_message
from chalicelib.entrypoints import sqs
from chalicelib.domain.errors import PayloadTooLarge


def order(i, lines=1):
    return {"client_order_id": f"c-{i}", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}] * lines}


def test_chunks_of_ten_carry_positions_and_count():
    orders = [order(i) for i in range(23)]
    messages = ingest_message.chunk_messages("b1", orders, enqueued_at=5.0)
    assert [len(m["orders"]) for m in messages] == [10, 10, 3]
    assert [p for m in messages for p in m["positions"]] == list(range(23))
    assert [o for m in messages for o in m["orders"]] == orders
    assert {m["batch_id"] for m in messages} == {"b1"}
    assert {m["order_count"] for m in messages} == {23}
    assert all(m["enqueued_at"] == 5.0 for m in messages)


def test_chunks_respect_the_sqs_size_limit():
    big = {"client_order_id": "x", "user_id": 1, "items": [{"product_id": 1, "quantity": 1, "note": "n" * 60_000}]}
    messages = ingest_message.chunk_messages("b", [big] * 5)
    assert all(len(json.dumps(m)) < 256 * 1024 for m in messages)
    assert [p for m in messages for p in m["positions"]] == list(range(5))
    with pytest.raises(PayloadTooLarge):
        ingest_message.chunk_messages("b", [{"client_order_id": "x", "junk": "j" * 300_000}])


def test_decode_full_message():
    body = json.dumps({"batch_id": "b", "orders": [order(0), order(1)], "positions": [10, 11], "order_count": 12,
                       "enqueued_at": 1.5})
    m = ingest_message.decode_message(body, "mid")
    assert (m.batch_id, m.order_count, m.positions, m.enqueued_at, m.error) == ("b", 12, [10, 11], 1.5, None)


def test_foreign_message_without_batch_id_gets_a_stable_id():
    m = ingest_message.decode_message(json.dumps({"orders": [order(0), order(1)]}), "abc")
    assert (m.batch_id, m.order_count, m.positions, m.error) == ("sqs-abc", 2, [0, 1], None)


@pytest.mark.parametrize("body", ["not json{", "[]", "null", json.dumps({"orders": "x"}),
                                  json.dumps({"orders": [], "surprise": 1}), json.dumps({"batch_id": 5, "orders": []}),
                                  json.dumps({"batch_id": "b", "orders": [order(0)], "positions": [0, 1]})])
def test_unusable_bodies_are_permanent_failures_on_a_stable_id(body):
    m = ingest_message.decode_message(body, "mid")
    assert m.error is not None and m.error.code == "VALIDATION_ERROR"
    assert (m.batch_id, m.positions, m.order_count) == ("sqs-mid", [0], 1)


def test_bad_orders_list_with_valid_positions_fails_those_positions_of_the_batch():
    body = json.dumps({"batch_id": "b", "orders": "oops", "positions": [20, 21], "order_count": 30})
    m = ingest_message.decode_message(body, "mid")
    assert m.error is not None
    assert (m.batch_id, m.positions, m.order_count) == ("b", [20, 21], 30)


class _Context:
    def __init__(self, remaining_ms):
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self):
        return self.remaining_ms


def test_records_are_handed_back_when_the_invocation_is_almost_out_of_time():
    class Never:
        def process(self, body, message_id):  # pragma: no cover - must not be reached
            raise AssertionError("processed with no time left")

    event = {"Records": [{"messageId": f"m{i}", "receiptHandle": "r", "body": "{}", "attributes": {},
                          "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                          "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q", "awsRegion": "us-east-1"}
                         for i in range(2)]}
    response = sqs.handle_order_event(event, _Context(1000), ingest=Never())
    assert response == {"batchItemFailures": [{"itemIdentifier": "m0"}, {"itemIdentifier": "m1"}]}


def test_the_owning_client_travels_with_the_message():
    body = ingest_message.chunk_messages("b-1", [{"client_order_id": "a"}], client="storefront")[0]
    assert ingest_message.decode_message(json.dumps(body), "m").client == "storefront"
    assert ingest_message.decode_message(json.dumps({**body, "client": None}), "m").client == ""  # absent or null: admin-only


def test_a_malformed_client_is_a_recorded_failure_owned_by_nobody():
    message = ingest_message.decode_message(json.dumps({"batch_id": "b-2", "client": 7, "orders": [order(0)],
                                                        "positions": [0], "order_count": 1}), "m")
    assert message.error is not None and message.error.extra["details"] == {"field": "client"}
    assert message.client == "" and message.batch_id == "b-2"

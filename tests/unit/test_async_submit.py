"""Async submit (service/async_orders.AsyncBatches) against in-memory ports:
SQS first, then the batch row; MySQL down still accepts, SQS down refuses."""
import pytest

from chalicelib.domain.errors import NothingSent, ServiceUnavailable
from chalicelib.domain.ingest_message import ORDERS_PER_MESSAGE
from chalicelib.service import async_orders


class Queue:
    batch_size, call_seconds = 10, 1.0

    def __init__(self, down=False, answer_lost=False):
        self.down, self.answer_lost, self.sent = down, answer_lost, []

    def send_batch(self, queue_name, bodies, delays=None):
        if self.down:
            raise NothingSent("ConnectionError: sqs down")
        self.sent += [(queue_name, body) for body in bodies]
        if self.answer_lost:
            raise ConnectionError("read timeout")


class Batches:
    def __init__(self, down=False):
        self.down, self.rows = down, {}

    def ensure(self, batch_id, order_count, client=""):
        if self.down:
            raise ServiceUnavailable("The database is unavailable; retry shortly.")
        self.rows[batch_id] = (order_count, client)


def orders(n):
    return [{"client_order_id": f"o{i}", "user_id": 1, "items": [{"product_id": 1, "quantity": 1}]} for i in range(n)]


@pytest.fixture(autouse=True)
def no_metrics(monkeypatch):
    monkeypatch.setattr(async_orders, "emit", lambda *args, **kwargs: None)


def test_a_batch_goes_to_the_queue_in_messages_then_its_row_is_recorded():
    queue, batches = Queue(), Batches()
    answer = async_orders.AsyncBatches(queue, batches, "ingest").submit(orders(ORDERS_PER_MESSAGE + 1), "dev")
    assert answer["status"] == "queued"
    assert [len(body["orders"]) for _, body in queue.sent] == [ORDERS_PER_MESSAGE, 1]
    assert {name for name, _ in queue.sent} == {"ingest"}
    assert {body["batch_id"] for _, body in queue.sent} == {answer["batch_id"]}
    assert batches.rows == {answer["batch_id"]: (ORDERS_PER_MESSAGE + 1, "dev")}


def test_mysql_down_still_accepts_the_batch_the_consumer_records_it():
    queue, batches = Queue(), Batches(down=True)
    answer = async_orders.AsyncBatches(queue, batches, "ingest").submit(orders(3))
    assert answer["status"] == "queued" and len(queue.sent) == 1 and batches.rows == {}


def test_sqs_down_refuses_the_batch_and_records_nothing():
    queue, batches = Queue(down=True), Batches()
    with pytest.raises(ServiceUnavailable, match="order queue is unavailable; the batch was not accepted"):
        async_orders.AsyncBatches(queue, batches, "ingest").submit(orders(3))
    assert batches.rows == {}


def test_a_send_whose_answer_was_lost_is_not_called_refused():
    """SQS may hold the messages: the 503 says the batch may have been queued, not that it was not."""
    queue, batches = Queue(answer_lost=True), Batches()
    with pytest.raises(ServiceUnavailable, match="may have been queued") as refused:
        async_orders.AsyncBatches(queue, batches, "ingest").submit(orders(3))
    assert "not accepted" not in refused.value.message and len(queue.sent) == 1 and batches.rows == {}

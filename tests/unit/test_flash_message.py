"""The flash-order message (pure): packing many reservations per message within
SQS's size, decoding what the API sent, refusing what it never sends, and the
pending per-order result."""
import json
from dataclasses import replace

import pytest

from chalicelib.domain import flash_message
from chalicelib.domain.flash_message import Reservation
from chalicelib.domain.orders import OrderResult, summarize
from chalicelib.domain.sale_mode import validate_sale
from chalicelib.domain.errors import ValidationError

SALE = "c" * 32


def reservation(n, lines=((7, 1, SALE),)):
    return Reservation(f"{n:032x}", "dev", 0, n + 1, f"coid-{n}", "ab" * 32, tuple(lines), 1.5)


def test_a_batch_of_reservations_is_one_message_and_decodes_back():
    reservations = [reservation(n, ((3, 2, SALE), (9, 1, SALE))) for n in range(100)]
    bodies = flash_message.pack(reservations, sent_at=2.0)
    assert len(bodies) == 1
    assert flash_message.decode(json.dumps(bodies[0])) == reservations
    assert reservations[0].packed_lines == f"3:2:{SALE},9:1:{SALE}"
    assert reservations[0].quantities == {3: 2, 9: 1}


def test_messages_stay_under_the_size_limit():
    big = [reservation(n, tuple((pid, 1, SALE) for pid in range(1, 51))) for n in range(100)]
    bodies = flash_message.pack(big, sent_at=0)
    assert len(bodies) > 1
    assert all(len(json.dumps(b).encode()) <= flash_message.MAX_MESSAGE_BYTES for b in bodies)
    assert [r for b in bodies for r in flash_message.decode(json.dumps(b))] == big


@pytest.mark.parametrize("body", [
    "not json", "[]", '{"reservations": []}',
    json.dumps({"reservations": [{**reservation(1).to_json(), "rid": "x"}]}),
    json.dumps({"reservations": [{**reservation(1).to_json(), "lines": [[7, 0, SALE]]}]}),
    json.dumps({"reservations": [{**reservation(1).to_json(), "lines": [[7, 1, SALE], [7, 1, SALE]]}]}),
    json.dumps({"reservations": [{**reservation(1).to_json(), "user_id": True}]}),
    json.dumps({"reservations": [{**reservation(1).to_json(), "batch_id": ""}]}),
    json.dumps({"reservations": [{**reservation(1).to_json(), "batch_id": "b" * 65}]}),
    json.dumps({"reservations": [{**reservation(1).to_json(), "batch_id": 7}]}),
])
def test_bodies_the_api_never_sends_are_refused(body):
    with pytest.raises(ValueError):
        flash_message.decode(body)


def test_an_async_order_s_reservation_carries_its_batch():
    batched = replace(reservation(1), batch_id="sqs-" + "m" * 36)
    assert "batch_id" not in reservation(1).to_json()  # a sync order's message is as before
    assert flash_message.decode(json.dumps(flash_message.pack([batched], 0)[0])) == [batched]


def test_pending_results_are_counted_apart():
    results = [OrderResult("a", status="pending", reservation_id="f" * 32).to_api(), OrderResult("b", 1, 5).to_api()]
    assert results[0] == {"client_order_id": "a", "status": "pending", "duplicate": False, "reservation_id": "f" * 32}
    assert "reservation_id" not in results[1]
    assert summarize(results) == {"created": 1, "failed": 0, "pending": 1}
    assert summarize(results[1:]) == {"created": 1, "failed": 0}


def test_sale_body_rules():
    assert validate_sale({"sale_stock": 5}) == (5, None)
    assert validate_sale({"sale_stock": 5, "per_customer_limit": 2}) == (5, 2)
    for bad in ({}, {"sale_stock": 0}, {"sale_stock": 5, "per_customer_limit": 0}, {"sale_stock": "5"},
                {"sale_stock": 5, "price": 1}):
        with pytest.raises(ValidationError):
            validate_sale(bad)

"""'Bought together' rules (chalicelib/domain/related.py): which events count,
the bound on pairs per order, the lock order of pair rows, the route's parameters."""
import json

import pytest

from chalicelib.domain import related
from chalicelib.domain.errors import ValidationError


def _created(items, event_id="e-1", order_id=7):
    return json.dumps({"event_id": event_id, "type": "order.created", "order_id": order_id,
                       "data": {"items": items}})


def test_created_adds_cancelled_and_expired_take_back_others_count_nothing():
    event = related.decode(_created([{"product_id": 3, "quantity": 1}, {"product_id": 1, "quantity": 2},
                                     {"product_id": 3, "quantity": 4}]))
    assert (event.change, event.order_id, event.quantities) == (1, 7, {3: 5, 1: 2})
    for kind in ("order.cancelled", "order.expired"):
        event = related.decode(json.dumps({"event_id": "x", "type": kind, "order_id": 9}))
        assert (event.change, event.order_id) == (-1, 9)
    assert related.decode(json.dumps({"event_id": "x", "type": "order.paid", "order_id": "?"})).change == 0


@pytest.mark.parametrize("body", [
    "not json", "[]", "null", "\"text\"", json.dumps({"type": "order.created"}),
    json.dumps({"event_id": "", "type": "order.created"}), json.dumps({"event_id": "x" * 65, "type": "x"}),
    json.dumps({"event_id": "a\nb", "type": "x"}), json.dumps({"event_id": "é", "type": "x"}),
    json.dumps({"event_id": 5, "type": "order.created"}), json.dumps({"event_id": "x", "type": None}),
    json.dumps({"event_id": "x", "type": "order.cancelled"}),
    json.dumps({"event_id": "x", "type": "order.cancelled", "order_id": True}),
    json.dumps({"event_id": "x", "type": "order.created", "order_id": 1}),
    json.dumps({"event_id": "x", "type": "order.created", "order_id": 1, "data": {"items": []}}),
    json.dumps({"event_id": "x", "type": "order.created", "order_id": 1, "data": {"items": [1]}}),
    _created([{"product_id": 0, "quantity": 1}]), _created([{"product_id": 2**63, "quantity": 1}]),
    _created([{"product_id": 1.5, "quantity": 1}]), _created([{"product_id": 1, "quantity": 0}]),
    _created([{"product_id": 1, "quantity": 1}] * 51),
])
def test_anything_that_is_not_an_order_event_is_refused(body):
    with pytest.raises(ValueError):
        related.decode(body)


def test_a_big_order_makes_pairs_of_its_largest_lines_only():
    quantities = {pid: 1 for pid in range(1, 51)}
    quantities.update({40: 5, 45: 5, 50: 2})
    ids = related.considered(quantities)
    assert len(ids) == related.MAX_LINES and ids == sorted(ids)
    assert {40, 45, 50} <= set(ids) and set(ids) - {40, 45, 50} == set(range(1, 18))  # then the lowest ids
    rows = related.pair_rows(quantities)
    assert len(rows) == related.MAX_LINES * (related.MAX_LINES - 1)
    assert rows == sorted(rows)  # the one lock order
    assert related.pair_rows({5: 1}) == []
    assert related.pair_rows({5: 1, 2: 1}) == [(2, 5), (5, 2)]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "51"}, {"limit": "abc"}, {"limit": "1e3"},
                                    {"limit": "+5"}, {"limit": " 5"}, {"limit": "5\x00"}, {"limit": "-1"},
                                    {"limit": "99999999999999999999"}, {"sort": "x"}, {"q": "a", "limit": "3"}])
def test_bad_parameters_are_400(params):
    with pytest.raises(ValidationError) as caught:
        related.limit_param(params)
    assert caught.value.status == 400


def test_limit_defaults_and_bounds():
    assert related.limit_param({}) == related.DEFAULT_LIMIT
    assert related.limit_param({"limit": ""}) == related.DEFAULT_LIMIT
    assert related.limit_param({"limit": "1"}) == 1
    assert related.limit_param({"limit": "50"}) == related.MAX_LIMIT

"""The order service and the batch semantics (docs/design.md invariants 2 and 3)
against in-memory fakes: no MariaDB, no Redis. The same rules run against the
real services in tests/integration/test_orders_invariants.py."""
import pytest

from chalicelib.service import async_orders
from chalicelib.domain.errors import PaymentReferenceUsed, ServiceUnavailable
from chalicelib.domain.orders import parse_batch
from tests.unit.fakes import FakeBatches, FakeInventory, Metrics, World, order_service


def order(coid, *lines, user_id=1):
    return {"client_order_id": coid, "user_id": user_id,
            "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


@pytest.fixture
def world():
    return World({1: {"stock": 5, "price_cents": 100}, 2: {"stock": 1, "price_cents": 250}})


def test_a_batch_is_partial_in_request_order_and_each_order_all_or_nothing(world):
    metrics = Metrics()
    service = order_service(world, metrics=metrics)
    answer = service.place_batch(parse_batch({"orders": [
        order("ok", (1, 2)),
        {"client_order_id": "bad", "user_id": 1, "items": []},
        order("short", (1, 1), (2, 2)),      # line 2 short: line 1 must not be taken either
        order("also-ok", (2, 1), (1, 1)),
    ]}))
    assert [(r["client_order_id"], r["status"]) for r in answer["results"]] == [
        ("ok", "created"), ("bad", "failed"), ("short", "failed"), ("also-ok", "created")]
    assert [r["error"]["code"] for r in answer["results"] if r["status"] == "failed"] == [
        "VALIDATION_ERROR", "INSUFFICIENT_STOCK"]
    assert answer["results"][2]["error"]["product_id"] == 2
    assert answer["summary"] == {"created": 2, "failed": 2}
    assert answer["results"][3]["total_cents"] == 350
    assert {pid: p["stock"] for pid, p in world.store.products.items()} == {1: 2, 2: 0}
    assert len(world.store.orders) == 2  # the failed order left no row behind
    # one invalidation for the whole batch, with each product's last version
    assert world.invalidations == [{1: 3, 2: 2}]
    assert (metrics.count("OrdersCreated"), metrics.count("OrdersFailed", code="INSUFFICIENT_STOCK")) == (2, 1)


def test_replays_and_concurrent_duplicates_reserve_once(world):
    service = order_service(world)
    first = service.place_batch(parse_batch({"orders": [order("k", (1, 2)), order("k", (1, 2))]}))["results"]
    assert [r["duplicate"] for r in first] == [False, True]
    assert first[0]["order_id"] == first[1]["order_id"]
    again = service.place_batch(parse_batch({"orders": [order("k", (1, 2)), order("k", (1, 3))]}))["results"]
    assert again[0]["duplicate"] is True and again[0]["order_id"] == first[0]["order_id"]
    assert again[1]["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert world.store.products[1]["stock"] == 3
    # another user's key is another order
    other = service.place_batch(parse_batch({"orders": [order("k", (1, 2), user_id=2)]}))["results"][0]
    assert other["duplicate"] is False and other["order_id"] != first[0]["order_id"]


def test_an_outage_mid_batch_names_what_committed_and_still_invalidates_it(world):
    world.outage_at = {2}  # the second order's transaction cannot reach MySQL
    service = order_service(world)
    with pytest.raises(ServiceUnavailable) as info:
        service.place_batch(parse_batch({"orders": [order("a", (1, 1)), order("b", (2, 1)), order("c", (1, 1))]}))
    assert info.value.body()["error"]["details"] == {"committed_client_order_ids": ["a"]}
    assert world.invalidations == [{1: 2}]
    assert {p["stock"] for p in world.store.products.values()} == {4, 1}


def test_contention_fails_one_order_retryably_and_the_batch_goes_on(world):
    service = order_service(world, FakeInventory(contended={2}))
    results = service.place_batch(parse_batch({"orders": [order("a", (2, 1)), order("b", (1, 1))]}))["results"]
    assert [(r["status"], r.get("error", {}).get("code")) for r in results] == [
        ("failed", "SERVICE_UNAVAILABLE"), ("created", None)]


def test_cancel_returns_the_stock_exactly_once(world):
    service = order_service(world)
    placed = service.place_batch(parse_batch({"orders": [order("c", (1, 2), (2, 1))]}))["results"][0]
    assert service.cancel(placed["order_id"])["status"] == "cancelled"
    assert service.cancel(placed["order_id"])["status"] == "cancelled"
    assert {pid: p["stock"] for pid, p in world.store.products.items()} == {1: 5, 2: 1}
    assert world.invalidations[-1] == {1: 3, 2: 3} and len(world.invalidations) == 2
    read = service.get(placed["order_id"])
    assert (read["status"], read["items"]) == ("cancelled", [
        {"product_id": 1, "quantity": 2, "unit_price_cents": 100},
        {"product_id": 2, "quantity": 1, "unit_price_cents": 250}])


def _message(coids_and_lines, batch_id="b1", positions=None, order_count=None):
    import json

    orders = [order(coid, *lines) for coid, lines in coids_and_lines]
    body = {"batch_id": batch_id, "orders": orders}
    if positions is not None:
        body.update(positions=positions, order_count=order_count)
    return json.dumps(body)


def test_ingest_skips_recorded_positions_and_retries_only_transient_failures(world):
    batches = FakeBatches()
    consumer = async_orders.OrderIngest(order_service(world, FakeInventory(contended={2})), batches, metrics=Metrics())
    body = _message([("x", [(1, 1)]), ("y", [(2, 1)]), ("z", [(1, 9)])])
    with pytest.raises(async_orders.TransientFailure):
        consumer.process(body, "m-1")
    recorded = batches.results["b1"]
    assert sorted(recorded) == [0, 2]  # the contended order is not recorded: the message comes back
    assert recorded[0].created and recorded[2].error.code == "INSUFFICIENT_STOCK"

    # the redelivery places only what is missing
    consumer = async_orders.OrderIngest(order_service(world), batches, metrics=Metrics())
    assert consumer.process(body, "m-1")["status"] == "done"
    assert [batches.results["b1"][p].client_order_id for p in range(3)] == ["x", "y", "z"]
    assert {pid: p["stock"] for pid, p in world.store.products.items()} == {1: 4, 2: 0}


def test_ingest_keeps_what_committed_before_an_outage(world):
    world.outage_at = {2}
    batches = FakeBatches()
    consumer = async_orders.OrderIngest(order_service(world), batches, metrics=Metrics())
    body = _message([("p", [(1, 1)]), ("q", [(1, 1)])], positions=[4, 5], order_count=6)
    with pytest.raises(ServiceUnavailable):
        consumer.process(body, "m-2")
    assert list(batches.results["b1"]) == [4]
    assert world.invalidations == [{1: 2}]


def test_a_payment_reference_that_paid_another_order_is_refused_and_the_order_stays_pending(world):
    """The repository's duplicate key (one reference per client) is the service's PAYMENT_REFERENCE_USED."""
    service = order_service(world, payment_window=60)
    first, second = (r["order_id"] for r in service.place_batch(parse_batch(
        {"orders": [order("a", (1, 1)), order("b", (1, 1))]}, "dev"))["results"])
    assert service.pay(first, "pay-1")["lifecycle"] == "paid"
    assert service.pay(first, "pay-1")["lifecycle"] == "paid"  # the same payment again: idempotent
    with pytest.raises(PaymentReferenceUsed):
        service.pay(second, "pay-1")
    assert service.get(second)["lifecycle"] == "pending_payment"
    assert service.pay(second, "pay-2")["lifecycle"] == "paid"

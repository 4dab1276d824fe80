"""Whose units a flash sale's limit counts, and how a reservation is named
(domain/reservations.py, domain/sale_mode.py): the keys the gate keeps its
records under, and what a sale may offer and its customers hold."""
import pytest

from chalicelib.domain.reservations import customer_key, owner_key


def test_a_customer_with_a_token_is_one_person_through_every_client():
    assert customer_key("mobile-app", 42, 42) == customer_key("storefront", 42, 42) == "customer:42"


def test_a_trusted_servers_user_is_that_clients_own():
    assert customer_key("partner", 0, 7) != customer_key("storefront", 0, 7)
    assert customer_key("partner", 0, 7) == "partner|0|7"


def test_a_reservation_is_named_by_its_whole_idempotency_key():
    keys = {owner_key("dev", 0, 1, "a"), owner_key("dev", 0, 1, "b"), owner_key("dev", 0, 2, "a"),
            owner_key("other", 0, 1, "a"), owner_key("dev", 5, 1, "a")}
    assert len(keys) == 5


def test_a_sale_offers_at_most_the_stock_of_a_product_that_exists():
    from chalicelib.domain.errors import InsufficientStock, ProductNotFound
    from chalicelib.domain.sale_mode import check_offer

    check_offer(1, {"stock": 5}, 5)
    with pytest.raises(InsufficientStock):
        check_offer(1, {"stock": 4}, 5)
    with pytest.raises(ProductNotFound):
        check_offer(1, None, 1)


def test_what_a_sales_customers_hold_counts_a_token_customer_once_and_skips_given_back_orders():
    from chalicelib.domain.sale_mode import holdings

    lines = [{"client": "mobile-app", "customer_id": 9, "user_id": 9, "id": 1, "status": "created", "quantity": 2},
             {"client": "storefront", "customer_id": 9, "user_id": 9, "id": 2, "status": "created", "quantity": 1},
             {"client": "partner", "customer_id": 0, "user_id": 9, "id": 3, "status": "created", "quantity": 4},
             {"client": "partner", "customer_id": 0, "user_id": 9, "id": 4, "status": "cancelled", "quantity": 3}]
    held, returned = holdings(lines)
    assert held == {"customer:9": 3, "partner|0|9": 4}
    assert returned == [(4, "partner|0|9", 3)]


def test_a_rebuild_remembers_each_written_order_as_its_settle_left_it_and_moves_no_units():
    from chalicelib.domain.sale_mode import written_reservations

    lines = [
        {"client": "dev", "customer_id": 0, "user_id": 7, "id": 41, "status": "created", "quantity": 2,
         "client_order_id": "a", "request_hash": "h1", "flash_reservation": "r1", "total_cents": 1000},
        {"client": "app", "customer_id": 9, "user_id": 0, "id": 42, "status": "cancelled", "quantity": 1,
         "client_order_id": "b", "request_hash": "h2", "flash_reservation": "r2", "total_cents": 500},
        {"client": "dev", "customer_id": 0, "user_id": 8, "id": 43, "status": "created", "quantity": 1,
         "client_order_id": "c", "request_hash": "h3", "flash_reservation": None, "total_cents": 500},
    ]
    records = written_reservations(lines, lambda owner: f"res:{owner}")
    assert [(r.key, r.rid, r.customer, r.order_id, r.total_cents, r.request_hash) for r in records] == [
        ("res:dev|0|7|a", "r1", "dev|0|7", 41, 1000, "h1"),
        ("res:app|9|0|b", "r2", "customer:9", 42, 500, "h2")]
    assert all(r.outcome == "created" and r.lines == "" and not r.took and not r.give_back for r in records)

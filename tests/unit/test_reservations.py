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

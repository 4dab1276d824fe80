"""Whose units a flash sale's limit counts, and how a reservation is named
(domain/reservations.py): the keys the gate keeps its records under."""
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

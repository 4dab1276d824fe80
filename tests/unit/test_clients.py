"""Client definitions and the caller a key id maps to (pure)."""
import pytest

from chalicelib.domain.clients import ClientDefinitionError, ClientRegistry, parse_key_clients, validate

PLANS = {"standard": {"rate_per_second": 100, "burst": 200, "trusted_server": True},
         "admin": {"rate_per_second": 50, "burst": 100, "admin": True, "trusted_server": True},
         "public": {"rate_per_second": 2000, "burst": 4000, "person_rate_per_second": 5, "person_burst": 20}}


def registry(**clients):
    return ClientRegistry({"plans": PLANS, "clients": clients})


def test_local_keys_map_to_their_client_and_plan():
    keys = registry(shop={"plan": "standard", "keys": [1, 2], "revoked": []},
                    ops={"plan": "admin", "keys": [3], "revoked": [1, 2]}).local_keys()
    assert keys["shop-local-shop-key-0002"].client == "shop"
    assert keys["shop-local-ops-key-0003"].admin and keys["shop-local-ops-key-0003"].plan == "admin"
    assert "shop-local-ops-key-0001" not in keys  # revoked
    assert keys["shop-local-shop-key-0001"].key_id != keys["shop-local-shop-key-0002"].key_id


def test_a_cloud_key_id_maps_to_its_client_and_an_unknown_one_to_itself():
    reg = registry(shop={"plan": "standard", "keys": [1]}, ops={"plan": "admin", "keys": [1]})
    mapping = parse_key_clients("abc123=shop, def456=ops,junk")
    assert mapping == {"abc123": "shop", "def456": "ops"}
    assert reg.cloud_caller("def456", mapping).admin
    stranger = reg.cloud_caller("zzz999", mapping)
    assert (stranger.client, stranger.plan, stranger.admin) == ("key:zzz999", "standard", False)


@pytest.mark.parametrize("clients, message", [
    ({"Shop": {"plan": "standard", "keys": [1]}}, "client name"),
    ({"shop": {"plan": "gold", "keys": [1]}}, "unknown plan"),
    ({"shop": {"plan": "standard", "keys": [1], "revoked": [1]}}, "listed twice"),
    ({"shop": {"plan": "standard", "keys": [0]}}, "positive"),
    ({"shop": {"plan": "standard", "keys": [True]}}, "positive"),
])
def test_bad_definitions_are_refused(clients, message):
    with pytest.raises(ClientDefinitionError, match=message):
        validate({"plans": PLANS, "clients": clients})


def test_only_a_plan_whose_key_ships_in_an_app_limits_each_person():
    keys = registry(shop={"plan": "standard", "keys": [1]}, app={"plan": "public", "keys": [1]}).local_keys()
    assert keys["shop-local-app-key-0001"].per_person and not keys["shop-local-app-key-0001"].trusted
    assert not keys["shop-local-shop-key-0001"].per_person
    # A key API Gateway knows but the definitions do not: standard's limits, none per person.
    assert not registry().cloud_caller("zzz", {}).per_person


PUBLIC = PLANS["public"]


@pytest.mark.parametrize("plan, message", [
    # Every install shares an app's key: without per-person limits one abuser spends everyone's bucket.
    ({"rate_per_second": 2000, "burst": 4000}, "needs person_rate_per_second and person_burst"),
    ({**PUBLIC, "person_burst": None}, "person_burst a whole number"),
    ({k: v for k, v in PUBLIC.items() if k != "person_burst"}, "needs person_rate_per_second and person_burst"),
    ({**PUBLIC, "person_rate_per_second": 0}, "person_rate_per_second must be > 0"),
    ({**PUBLIC, "person_burst": 2.5}, "person_burst a whole number"),
    ({**PUBLIC, "person_burst": True}, "person_burst a whole number"),
    ({**PUBLIC, "person_rate_per_second": 3000}, "cannot exceed the key's"),
    ({**PUBLIC, "person_burst": 5000}, "cannot exceed the key's"),
    ({**PUBLIC, "rate_per_second": "fast"}, "rate_per_second must be > 0"),
    ({**PUBLIC, "burst": 0}, "burst a whole number"),
    # A trusted server's plan is limited per key: a person field there would be ignored, so it is refused.
    ({**PLANS["standard"], "person_rate_per_second": 5, "person_burst": 20}, "trusted server's plan"),
])
def test_bad_plan_limits_are_refused(plan, message):
    with pytest.raises(ClientDefinitionError, match=message):
        validate({"plans": {**PLANS, "public": plan}, "clients": {}})

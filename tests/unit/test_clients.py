"""Client definitions and the caller a key id maps to (pure)."""
import pytest

from chalicelib.domain.clients import ClientDefinitionError, ClientRegistry, parse_key_clients, validate

PLANS = {"standard": {"rate_per_second": 100, "burst": 200}, "admin": {"rate_per_second": 50, "burst": 100,
                                                                        "admin": True}}


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

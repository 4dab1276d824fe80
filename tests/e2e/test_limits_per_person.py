"""Limits per person on the app's key (plan `public`: every install shares one
key), over real HTTP: one abuser gets 429 while everyone else on the same key
is served in the same moment. A person is the customer of a verified token on
the /customer routes, and the caller's address elsewhere (chalice local hands
the peer's address to the app as API Gateway does: requests from 127.0.0.2
are another address than 127.0.0.1's). The search budget is per person too."""
import uuid

import pytest
import requests
from requests.adapters import HTTPAdapter

from tests.conftest import DEV_KEY, ApiClient, free_port, start_server
from tests.e2e.test_customer_tokens import MOBILE, bearer, pool  # noqa: F401 (pool: a fixture)
from tests.e2e.test_orders_api import create_product


class FromAddress(HTTPAdapter):
    """Connections from one loopback address of this machine."""

    def __init__(self, address):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        return super().init_poolmanager(*args, **kwargs)


def client_from(base_url, address):
    client = ApiClient(base_url)
    client.session.mount("http://", FromAddress(address))
    return client


def until_refused(call, most=200):
    """Calls until the first 429; (calls served, the 429's body)."""
    for served in range(most):
        response = call()
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            return served, response.json()
        assert response.status_code < 500, response.text
    raise AssertionError(f"{most} calls never limited")


def test_an_abusive_customer_gets_429_while_another_on_the_same_key_is_served(api, pool):  # noqa: F811
    ann, bob = pool["tokens"]["ann"], pool["tokens"]["bob"]
    served, refused = until_refused(lambda: api.get("/customer/orders/999999", key=MOBILE, headers=bearer(ann)))
    assert refused["error"]["code"] == "RATE_LIMITED" and "customer" in refused["error"]["message"]
    assert served < 40  # their own burst (20), before the key's (4000)
    # The same instant: the other customer is served, the abuser still refused.
    answer = api.get("/customer/orders/999999", key=MOBILE, headers=bearer(bob))
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert api.get("/customer/orders/999999", key=MOBILE, headers=bearer(ann)).status_code == 429


def test_a_flood_of_bad_tokens_is_limited_by_address_not_the_signed_in_customers(api, pool):  # noqa: F811
    flood = client_from(api.base_url, "127.0.0.2")
    served, refused = until_refused(lambda: flood.get("/customer/orders/1", key=MOBILE, headers=bearer("garbage")))
    assert served >= 1 and "address" in refused["error"]["message"]
    # A customer from that same address is their own person.
    assert flood.get("/customer/orders/999999", key=MOBILE, headers=bearer(pool["tokens"]["bob"])).status_code == 404


def test_a_search_loop_from_one_address_does_not_429_another(api):
    pid = create_product(api, f"PP-{uuid.uuid4().hex[:6]}")
    abuser, other = client_from(api.base_url, "127.0.0.2"), client_from(api.base_url, "127.0.0.1")
    prices = iter(range(1, 10**6))  # every search another query: nothing from the cache
    served, refused = until_refused(lambda: abuser.get("/products/search", key=MOBILE,
                                                       params={"min_price": next(prices)}))
    assert refused["error"]["code"] == "RATE_LIMITED" and served < 40
    answer = other.get("/products/search", key=MOBILE, params={"min_price": 0})
    assert answer.status_code == 200 and pid in [p["id"] for p in answer.json()["items"]]
    assert other.get(f"/products/{pid}", key=MOBILE).status_code == 200
    assert abuser.get(f"/products/{pid}", key=MOBILE).status_code == 429
    # A trusted server's key keeps its own bucket, unrelated to the app's people.
    assert abuser.get(f"/products/{pid}", key=DEV_KEY).status_code == 200


@pytest.fixture(scope="module")
def tiny_budget_server(test_env, tmp_path_factory):
    """A server whose search budget is 1 ms of database time a minute: one uncached search spends it."""
    port = free_port()
    proc = start_server({**test_env, "SEARCH_BUDGET_MS": "1"}, port, tmp_path_factory.mktemp("budget") / "server.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


def test_one_person_spending_the_search_budget_does_not_429_another(tiny_budget_server, clean_db):
    abuser, other = client_from(tiny_budget_server, "127.0.0.2"), client_from(tiny_budget_server, "127.0.0.1")
    assert abuser.get("/products/search", key=MOBILE, params={"q": "lamp"}).status_code == 200
    spent = abuser.get("/products/search", key=MOBILE, params={"q": "desk"})
    assert spent.status_code == 429 and spent.json()["error"]["details"] == {"reason": "search_budget",
                                                                             "budget_ms": 1}
    # Another address on the same key: a budget of its own; the abuser's cached answer still comes back.
    assert other.get("/products/search", key=MOBILE, params={"q": "desk"}).status_code == 200
    again = abuser.get("/products/search", key=MOBILE, params={"q": "lamp"})
    assert again.status_code == 200 and again.headers["X-Cache"] == "HIT"
    # A trusted server's key is charged per key, as before.
    assert requests.get(f"{tiny_budget_server}/products/search", params={"q": "chair"}, headers={
        "x-api-key": DEV_KEY}, timeout=30).status_code == 200

"""Customers with tokens (docs/api.md, "Customers"), over real HTTP, with real
tokens from the local endpoint's Cognito user pool: the customer comes from
the token, never the body; a customer sees only their own orders, whichever
client's app they used (the pool's admin group gives no more); their orders
wait for payment, and a customer past a cap (units of one product, units held
unpaid, orders per batch) is refused with the limit; their emails go only to
the token's verified address, never to one the body names, and carry no text
of theirs; garbage gets a contract-shaped 4xx with nothing changed; expired,
forged, other-pool and other-app tokens get 401; a key that ships in an app
cannot name users."""
import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from scripts import localstack
from tests.conftest import ADMIN_KEY, DEV_KEY
from tests.e2e.test_orders_api import create_product, stock_of

MOBILE = "shop-local-mobile-app-key-0001"
STOREFRONT = "shop-local-storefront-key-0001"
PASSWORD = "Customer-Passw0rd!"


@pytest.fixture(scope="module")
def pool(test_env):
    cognito = localstack.cognito_client(test_env["AWS_ENDPOINT_URL"])
    pool_id, client_id = test_env["COGNITO_USER_POOL_ID"], test_env["COGNITO_APP_CLIENT_IDS"]
    run = uuid.uuid4().hex[:6]
    people = {name: f"{name}-{run}@example.com" for name in ("ann", "bob", "ops")}
    if not any(g["GroupName"] == "admin" for g in cognito.list_groups(UserPoolId=pool_id)["Groups"]):
        cognito.create_group(UserPoolId=pool_id, GroupName="admin")  # a group that gives no power
    for name, email in people.items():
        localstack.ensure_customer(cognito, pool_id, email, PASSWORD, groups=("admin",) if name == "ops" else ())
    tokens = {name: localstack.sign_in(cognito, client_id, email, PASSWORD) for name, email in people.items()}
    return {"cognito": cognito, "pool_id": pool_id, "client_id": client_id, "tokens": tokens}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def place(api, token, key=MOBILE, **order):
    body = {"orders": [{"client_order_id": order.get("coid", "c-1"), "items": order["items"], **order.get("extra", {})}]}
    return api.post("/customer/orders/batch", key=key, headers=bearer(token), json=body)


def test_a_customer_orders_for_themselves_and_sees_only_their_own(api, pool):
    pid = create_product(api, "TOK-1", stock=10)
    placed = place(api, pool["tokens"]["ann"], items=[{"product_id": pid, "quantity": 2}])
    assert placed.status_code == 200, placed.text
    result = placed.json()["results"][0]
    assert result["status"] == "created"
    order_id = result["order_id"]

    mine = api.get(f"/customer/orders/{order_id}", key=MOBILE, headers=bearer(pool["tokens"]["ann"]))
    assert mine.status_code == 200
    # The same customer through another client's app: still theirs.
    assert api.get(f"/customer/orders/{order_id}", key=STOREFRONT,
                   headers=bearer(pool["tokens"]["ann"])).status_code == 200
    # Another customer: as if it did not exist, and no cancel.
    assert api.get(f"/customer/orders/{order_id}", key=MOBILE,
                   headers=bearer(pool["tokens"]["bob"])).json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert api.post(f"/customer/orders/{order_id}/cancel", key=MOBILE,
                    headers=bearer(pool["tokens"]["bob"])).status_code == 404
    assert stock_of(api, pid) == 8
    # A customer in the pool's `admin` group is a customer like any other: another's order is not theirs.
    assert "admin" in _claims(pool["tokens"]["ops"])["cognito:groups"]
    for method, path in (("GET", f"/customer/orders/{order_id}"), ("GET", f"/customer/orders/{order_id}/events"),
                         ("POST", f"/customer/orders/{order_id}/cancel")):
        answer = api.request(method, path, key=MOBILE, headers=bearer(pool["tokens"]["ops"]))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "ORDER_NOT_FOUND", path
    cancelled = api.post(f"/customer/orders/{order_id}/cancel", key=MOBILE, headers=bearer(pool["tokens"]["ann"]))
    assert cancelled.json()["order"]["status"] == "cancelled" and stock_of(api, pid) == 10


def test_the_user_comes_from_the_token_never_the_body(api, pool):
    pid = create_product(api, "TOK-2", stock=10)
    smuggled = place(api, pool["tokens"]["ann"], coid="c-2", items=[{"product_id": pid, "quantity": 1}],
                     extra={"user_id": 1})
    failed = smuggled.json()["results"][0]
    assert failed["status"] == "failed" and failed["error"]["code"] == "VALIDATION_ERROR"
    ann = place(api, pool["tokens"]["ann"], coid="c-3", items=[{"product_id": pid, "quantity": 1}]).json()
    bob = place(api, pool["tokens"]["bob"], coid="c-3", items=[{"product_id": pid, "quantity": 1}]).json()
    ann_order = api.get(f"/customer/orders/{ann['results'][0]['order_id']}", key=MOBILE,
                        headers=bearer(pool["tokens"]["ann"])).json()["order"]
    bob_order = api.get(f"/customer/orders/{bob['results'][0]['order_id']}", key=MOBILE,
                        headers=bearer(pool["tokens"]["bob"])).json()["order"]
    # Same client_order_id, two customers: two orders, each under its customer's user id.
    assert ann_order["order_id"] != bob_order["order_id"] and ann_order["user_id"] != bob_order["user_id"]
    assert stock_of(api, pid) == 8


def test_a_customers_order_waits_for_payment_and_fails_on_its_own_past_a_cap(api, pool):
    pid = create_product(api, "TOK-CAP", stock=500)
    lines = [[(pid, 50)], [(pid, 30), (pid, 30)], [(pid, 50)], [(pid, 1)]]
    body = {"orders": [{"client_order_id": f"cap-{n}", "items": [{"product_id": p, "quantity": q} for p, q in line]}
                       for n, line in enumerate(lines)]}
    answer = api.post("/customer/orders/batch", key=MOBILE, headers=bearer(pool["tokens"]["bob"]), json=body)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == ["created", "failed", "created", "failed"]
    assert results[1]["error"] == {**results[1]["error"], "code": "QUANTITY_LIMIT_EXCEEDED", "product_id": pid,
                                   "details": {"limit": 50, "product_id": pid}}
    assert results[3]["error"]["details"] == {"limit": 100, "held": 100, "requested": 1}
    order = api.get(f"/customer/orders/{results[0]['order_id']}", key=MOBILE,
                    headers=bearer(pool["tokens"]["bob"])).json()["order"]
    assert order["lifecycle"] == "pending_payment" and order["expires_at"]
    # Through another client's app the same person holds the same units.
    again = place(api, pool["tokens"]["bob"], key=STOREFRONT, coid="cap-x", items=[{"product_id": pid, "quantity": 1}])
    assert again.json()["results"][0]["error"]["details"]["held"] == 100
    assert stock_of(api, pid) == 400


def test_a_customers_batch_of_more_than_ten_orders_is_refused_whole(api, pool):
    pid = create_product(api, "TOK-413", stock=50)
    body = {"orders": [{"client_order_id": f"b-{n}", "items": [{"product_id": pid, "quantity": 1}]}
                       for n in range(11)]}
    answer = api.post("/customer/orders/batch", key=MOBILE, headers=bearer(pool["tokens"]["ann"]), json=body)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert stock_of(api, pid) == 50
    body["orders"] = body["orders"][:10]
    assert api.post("/customer/orders/batch", key=MOBILE, headers=bearer(pool["tokens"]["ann"]),
                    json=body).json()["summary"] == {"created": 10, "failed": 0}


@pytest.mark.parametrize("items", [
    [{"product_id": "PID", "quantity": "51"}], [{"product_id": "PID", "quantity": 51.0}],
    [{"product_id": "PID", "quantity": 10**12}], [{"product_id": "PID", "quantity": -50}],
    [{"product_id": "PID", "quantity": 50, "price_cents": 0}], "PID", None, [],
    [{"product_id": "PID", "quantity": 1000}] * 51,
])
def test_garbage_from_a_signed_in_customer_fails_the_order_and_changes_nothing(api, pool, items):
    pid = create_product(api, "TOK-BAD", stock=100)
    items = json.loads(json.dumps(items).replace('"PID"', str(pid)))
    answer = place(api, pool["tokens"]["ann"], coid="bad", items=items)
    assert answer.status_code == 200, answer.text
    result = answer.json()["results"][0]
    assert result["status"] == "failed" and result["error"]["code"] == "VALIDATION_ERROR"
    assert stock_of(api, pid) == 100


def test_a_key_that_ships_in_an_app_cannot_name_users(api, pool):
    pid = create_product(api, "TOK-3", stock=5)
    body = {"orders": [{"client_order_id": "m-1", "user_id": 1, "items": [{"product_id": pid, "quantity": 1}]}]}
    for method, path, kwargs in (("POST", "/orders/batch", {"json": body}), ("GET", "/orders/1", {}),
                                 ("POST", "/orders/1/cancel", {}), ("GET", "/batches/any", {}),
                                 ("POST", "/orders/1/pay", {"json": {"payment_reference": "psp-1"}}),
                                 ("POST", "/orders/1/fulfil", {})):
        response = api.request(method, path, key=MOBILE, **kwargs)
        assert response.status_code == 403 and response.json()["error"]["code"] == "FORBIDDEN", path
    assert stock_of(api, pid) == 5
    assert api.post("/orders/batch", key=DEV_KEY, json=body).json()["summary"]["created"] == 1  # trusted server


# ------------------------------------------------------------------ tokens that must not pass
def _moto_signing_key():
    """The private key the local endpoint's Cognito signs with (moto's fixed test key)."""
    from moto.utilities.utils import load_resource

    return jwt.algorithms.RSAAlgorithm.from_jwk(load_resource("cognitoidp/resources/jwks-private.json"))


def _claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _resigned(token, key, **changes):
    return jwt.encode({**_claims(token), **changes}, key, algorithm="RS256", headers={"kid": "dummy"})


def refused(api, token):
    response = api.get("/customer/orders/1", key=MOBILE, headers=bearer(token) if token is not None else {})
    assert response.status_code == 401, response.text
    return response.json()["error"]


def test_an_expired_token_is_refused(api, pool):
    # Signed with the pool's own key, so only the expiry is wrong (an hour-old token).
    expired = _resigned(pool["tokens"]["ann"], _moto_signing_key(), exp=int(time.time()) - 60)
    error = refused(api, expired)
    assert error["code"] == "UNAUTHORIZED" and "expired" in error["message"]


def test_a_forged_token_is_refused(api, pool):
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(api, _resigned(pool["tokens"]["ann"], forger, sub="someone-else"))["code"] == "UNAUTHORIZED"
    header, payload, signature = pool["tokens"]["ann"].split(".")
    claims = {**_claims(pool["tokens"]["ann"]), "cognito:groups": ["admin"]}
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert refused(api, f"{header}.{tampered}.{signature}")["code"] == "UNAUTHORIZED"


def test_a_token_of_another_pool_or_another_app_is_refused(api, pool):
    cognito = pool["cognito"]
    other_pool, other_pool_client = localstack.ensure_customer_pool(cognito, f"other-{uuid.uuid4().hex[:6]}")
    try:
        localstack.ensure_customer(cognito, other_pool, "eve@example.com", PASSWORD)
        error = refused(api, localstack.sign_in(cognito, other_pool_client, "eve@example.com", PASSWORD))
        assert "another user pool" in error["message"]
    finally:
        cognito.delete_user_pool(UserPoolId=other_pool)
    other_app = cognito.create_user_pool_client(UserPoolId=pool["pool_id"], ClientName=f"x-{uuid.uuid4().hex[:6]}",
                                                ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"])["UserPoolClient"]
    token = cognito.initiate_auth(ClientId=other_app["ClientId"], AuthFlow="USER_PASSWORD_AUTH", AuthParameters={
        "USERNAME": _claims(pool["tokens"]["ann"])["email"], "PASSWORD": PASSWORD})["AuthenticationResult"]
    assert "another app client" in refused(api, token["IdToken"])["message"]


@pytest.mark.parametrize("token", [None, "", "garbage", "a.b.c", "Bearer", "x" * 5000])
def test_a_missing_or_garbage_token_is_401_not_500(api, token):
    assert refused(api, token)["code"] == "UNAUTHORIZED"


def test_the_access_token_is_not_the_customer_token(api, pool, test_env):
    answer = pool["cognito"].initiate_auth(ClientId=pool["client_id"], AuthFlow="USER_PASSWORD_AUTH", AuthParameters={
        "USERNAME": _claims(pool["tokens"]["ann"])["email"], "PASSWORD": PASSWORD})["AuthenticationResult"]
    assert refused(api, answer["AccessToken"])["code"] == "UNAUTHORIZED"
    assert api.get("/customer/orders/1", key=ADMIN_KEY, headers=bearer(answer["IdToken"])).status_code == 404


def test_a_customer_reads_the_events_of_their_own_orders_only(api, pool):
    pid = create_product(api, "TOK-EV", stock=5)
    placed = place(api, pool["tokens"]["ann"], coid="ev-1", items=[{"product_id": pid, "quantity": 1}])
    order_id = placed.json()["results"][0]["order_id"]
    mine = api.get(f"/customer/orders/{order_id}/events", key=MOBILE, headers=bearer(pool["tokens"]["ann"]))
    assert mine.status_code == 200 and [e["type"] for e in mine.json()["events"]] == ["order.created"]
    theirs = api.get(f"/customer/orders/{order_id}/events", key=MOBILE, headers=bearer(pool["tokens"]["bob"]))
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "ORDER_NOT_FOUND"
    assert api.get(f"/customer/orders/{order_id}/events", key=MOBILE).status_code == 401
    for bad in ("abc", "0", "-1", "1e3"):
        answer = api.get(f"/customer/orders/{bad}/events", key=MOBILE, headers=bearer(pool["tokens"]["ann"]))
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "VALIDATION_ERROR"
    order = api.get(f"/customer/orders/{order_id}", key=MOBILE, headers=bearer(pool["tokens"]["ann"])).json()
    assert order["order"]["contact_email"] == _claims(pool["tokens"]["ann"])["email"]  # the token's, verified


# ------------------------------------------------------------------ emails
@pytest.fixture
def notifications(test_env, aws_endpoint):
    """Publish the outbox and run the notification consumer over what reached the queue (as the poller
    does); returns the mailbox reader of the local endpoint's SES."""
    from tests.integration.test_notifications import mailbox, relay_and_drain

    sqs = localstack.sqs_client(aws_endpoint.url)
    return lambda: relay_and_drain(sqs, test_env), lambda to: mailbox(aws_endpoint, to)


def test_a_customer_order_mails_only_the_tokens_verified_email(api, pool, notifications):
    deliver, mailbox = notifications
    stranger = f"stranger-{uuid.uuid4().hex[:8]}@example.com"
    pid = create_product(api, "TOK-MAIL", stock=5)
    # The caller's text in the id: it must not reach an email.
    coid = "Win a prize at evil.example"
    refused = place(api, pool["tokens"]["ann"], coid=coid, items=[{"product_id": pid, "quantity": 1}],
                    extra={"contact_email": stranger})
    assert refused.status_code == 200
    [failed] = refused.json()["results"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "VALIDATION_ERROR"
    assert "'contact_email' comes from the customer token" in failed["error"]["message"] and stock_of(api, pid) == 5

    placed = place(api, pool["tokens"]["ann"], coid=coid, items=[{"product_id": pid, "quantity": 2}])
    order_id = placed.json()["results"][0]["order_id"]
    ann_email = _claims(pool["tokens"]["ann"])["email"]
    assert _claims(pool["tokens"]["ann"])["email_verified"] == "true"
    cancelled = api.post(f"/customer/orders/{order_id}/cancel", key=MOBILE, headers=bearer(pool["tokens"]["ann"]))
    assert cancelled.json()["order"]["contact_email"] == ann_email
    deliver()
    assert mailbox(stranger) == []
    mails = [m for m in mailbox(ann_email) if f"#{order_id} " in m["Subject"]]
    assert sorted(m["Subject"] for m in mails) == [f"Your order #{order_id} is cancelled",
                                                   f"Your order #{order_id} is placed"]
    for mail in mails:
        assert "evil" not in mail["Subject"] + mail["Body"]["text_part"]
        assert f"2 x TOK-MAIL (product {pid})" in mail["Body"]["text_part"]  # the catalog's name


def test_a_token_whose_email_the_pool_did_not_verify_gets_no_mail(api, pool, notifications):
    deliver, mailbox = notifications
    unverified = f"unverified-{uuid.uuid4().hex[:8]}@example.com"
    localstack.ensure_customer(pool["cognito"], pool["pool_id"], unverified, PASSWORD, email_verified=False)
    token = localstack.sign_in(pool["cognito"], pool["client_id"], unverified, PASSWORD)
    assert _claims(token)["email"] == unverified and _claims(token).get("email_verified") != "true"
    pid = create_product(api, "TOK-UNV", stock=5)
    placed = place(api, token, coid="unv-1", items=[{"product_id": pid, "quantity": 1}])
    order_id = placed.json()["results"][0]["order_id"]
    order = api.get(f"/customer/orders/{order_id}", key=MOBILE, headers=bearer(token)).json()["order"]
    assert order["contact_email"] is None
    seen = [e for e in deliver() if e.get("order_id") == order_id]
    assert [e["type"] for e in seen] == ["order.created"]  # the event went through the consumer
    assert mailbox(unverified) == []

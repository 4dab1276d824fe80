"""The claims API Gateway's Cognito authorizer hands over (AWS: APP_VERIFY_TOKENS
false) held to the rules the app applies to a token it verifies itself: an ID
token of the pool, for one of COGNITO_APP_CLIENT_IDS. The authorizer checks the
signature and expiry only, and lets access tokens and any app client of the
pool through. Pure: the claims are what the Lambda event carries (strings)."""
import pytest

from chalicelib.domain.errors import ServiceUnavailable, Unauthorized
from chalicelib.entrypoints.customer_tokens import customer_for_request
from chalicelib.settings import Settings

POOL = "us-east-1_Pool1"
ISSUER = f"https://cognito-idp.us-east-1.amazonaws.com/{POOL}"
CLOUD = {"STAGE": "prod", "APP_VERIFY_TOKENS": "false", "COGNITO_USER_POOL_ID": POOL,
         "COGNITO_APP_CLIENT_IDS": "app-client-1,app-client-2", "AWS_DEFAULT_REGION": "us-east-1"}
# An ID token's claims as API Gateway passes them on (every value a string).
ID_CLAIMS = {"sub": "0f6c-ann", "iss": ISSUER, "aud": "app-client-1", "token_use": "id",
             "email": "ann@example.com", "email_verified": "true", "cognito:username": "0f6c-ann",
             "exp": "Sat Dec 05 10:00:00 UTC 2026"}
# The access token of the same sign-in: no `aud`, `client_id` instead, token_use access.
ACCESS_CLAIMS = {"sub": "0f6c-ann", "iss": ISSUER, "client_id": "app-client-1", "token_use": "access",
                 "scope": "aws.cognito.signin.user.admin", "username": "0f6c-ann"}


def customer(claims, **settings):
    context = {"authorizer": {"claims": claims}} if claims is not None else {}
    return customer_for_request(Settings({**CLOUD, **settings}), {}, context)


def test_an_id_token_of_an_app_client_is_the_customer():
    assert (customer(ID_CLAIMS).issuer, customer(ID_CLAIMS).subject) == (ISSUER, "0f6c-ann")
    assert customer({**ID_CLAIMS, "aud": "app-client-2"}).subject == "0f6c-ann"


@pytest.mark.parametrize("claims, words", [
    (ACCESS_CLAIMS, "ID token"),
    ({**ID_CLAIMS, "token_use": "access"}, "ID token"),
    ({k: v for k, v in ID_CLAIMS.items() if k != "token_use"}, "ID token"),
    ({**ID_CLAIMS, "aud": "another-app-client"}, "another app client"),
    ({k: v for k, v in ID_CLAIMS.items() if k != "aud"}, "another app client"),
    ({**ID_CLAIMS, "aud": "app-client-1,app-client-2"}, "another app client"),
    ({**ID_CLAIMS, "iss": ISSUER.replace(POOL, "us-east-1_Other")}, "another user pool"),
    ({**ID_CLAIMS, "sub": ""}, "not valid"),
    ({}, "required"),
    (None, "required"),
])
def test_claims_the_authorizer_let_through_but_the_app_refuses(claims, words):
    with pytest.raises(Unauthorized) as refused:
        customer(claims)
    assert words in refused.value.message


def test_without_the_app_clients_configured_customers_are_not_served():
    with pytest.raises(ServiceUnavailable):
        customer(ID_CLAIMS, COGNITO_APP_CLIENT_IDS="")


@pytest.mark.parametrize("verified, email", [
    ("true", "ann@example.com"), (True, "ann@example.com"),   # the authorizer's string, a JWT's boolean
    ("false", None), (False, None), ("True", None), (1, None), ("1", None), (None, None),
])
def test_the_customers_email_only_when_the_pool_verified_it(verified, email):
    claims = {**ID_CLAIMS, "email_verified": verified} if verified is not None else {
        k: v for k, v in ID_CLAIMS.items() if k != "email_verified"}
    assert customer(claims).email == email


@pytest.mark.parametrize("address", ["", "not an address", "a@b", "Ann <ann@example.com>", 42])
def test_a_verified_claim_that_is_no_single_address_gives_no_email(address):
    assert customer({**ID_CLAIMS, "email": address}).email is None

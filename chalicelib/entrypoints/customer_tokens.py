"""Customers who call with a token from the Cognito user pool (docs/api.md,
"Customers"). The customer is the token's issuer and subject, never a body
field. In AWS, API Gateway's Cognito authorizer on the /customer routes has
verified the token's signature and expiry and hands over its claims; locally
(APP_VERIFY_TOKENS) the app verifies those itself: RS256 signature against the
pool's published keys, not expired. Either way the app then holds the claims
to the same rules: an ID token (the authorizer also lets access tokens
through), issued by the pool, for one of the app clients (the authorizer takes
any app client of the pool). Anything else is 401 UNAUTHORIZED.

The pool's groups give no power here: seeing every order is for admin-plan API
keys, which are not handed out in an app (an ID token says nothing of MFA)."""
import functools
from dataclasses import dataclass
from typing import Optional

from chalicelib.domain.errors import ServiceUnavailable, Unauthorized, ValidationError
from chalicelib.domain.orders import contact_email

# Routes under this prefix are for customers with a token: scripts/package.py puts API Gateway's
# Cognito authorizer on them, and the HTTP layer reads the customer before the rate limit.
CUSTOMER_PREFIX = "/customer/"


@dataclass(frozen=True)
class Customer:
    issuer: str
    subject: str
    email: Optional[str]  # the token's email if the pool verified it (the customer proved they read it); else None


@functools.lru_cache(maxsize=4)
def _signing_keys(url):
    import jwt  # PyJWT: only where the app verifies tokens itself

    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)


def _signed_claims(token, settings):
    """The claims of a token signed by the pool and not expired, or Unauthorized."""
    import jwt

    try:
        key = _signing_keys(settings.token_keys_url).get_signing_key_from_jwt(token)
    except jwt.PyJWKClientConnectionError as exc:
        raise ServiceUnavailable("The customer token keys are unavailable; retry shortly.") from exc
    except jwt.PyJWTError:
        raise Unauthorized("The customer token is not valid.") from None
    try:
        # Issuer and audience are checked by check_claims, the same way for the authorizer's claims.
        return jwt.decode(token, key.key, algorithms=["RS256"], options={
            "require": ["exp", "iss", "sub", "token_use"], "verify_aud": False})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The customer token has expired; sign in again.") from None
    except jwt.PyJWTError:
        raise Unauthorized("The customer token is not valid.") from None


def check_claims(claims, settings):
    """Unauthorized unless the claims are an ID token of the pool for one of its app clients."""
    if claims.get("token_use") != "id":
        raise Unauthorized("Send the ID token (not the access token) as the customer token.")
    if claims.get("iss") != settings.token_issuer:
        raise Unauthorized("The customer token is from another user pool.")
    if claims.get("aud") not in settings.token_audiences:
        raise Unauthorized("The customer token is for another app client.")
    if not claims.get("sub"):
        raise Unauthorized("The customer token is not valid.")


def verified_email(claims):
    """The token's email when the pool verified it, else None. A JWT carries `email_verified`
    as a boolean; API Gateway's authorizer hands every claim over as a string ("true")."""
    verified = claims.get("email_verified")
    if not (verified is True or verified == "true"):
        return None
    try:
        return contact_email(claims.get("email"))
    except ValidationError:
        return None


def customer_for_request(settings, headers, context):
    """The Customer calling, or Unauthorized."""
    if not settings.token_issuer or not settings.token_audiences:
        raise ServiceUnavailable("Customer sign-in is not configured on this deployment.")
    if settings.verify_tokens:
        header = headers.get("authorization") or ""
        token = header[7:] if header[:7].lower() == "bearer " else header
        if not token.strip():
            raise Unauthorized("A customer token is required: header 'Authorization: Bearer <ID token>'.")
        claims = _signed_claims(token.strip(), settings)
    else:
        claims = (context.get("authorizer") or {}).get("claims") or {}
        if not claims:
            raise Unauthorized("A customer token is required: header 'Authorization: Bearer <ID token>'.")
    check_claims(claims, settings)
    return Customer(issuer=claims["iss"], subject=claims["sub"], email=verified_email(claims))

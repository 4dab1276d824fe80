"""Customers who call with a token from the Cognito user pool (docs/api.md,
"Customers"). The customer is the token's issuer and subject, never a body
field. In AWS, API Gateway's Cognito authorizer on the /customer routes has
verified the token and hands over its claims; locally (APP_VERIFY_TOKENS) the
app verifies it the same way: RS256 signature against the pool's published
keys, issuer = the pool, audience = one of the app clients, not expired, an ID
token. Anything else is 401 UNAUTHORIZED."""
import functools
from dataclasses import dataclass

from chalicelib.domain.errors import ServiceUnavailable, Unauthorized

ADMIN_GROUP = "admin"


@dataclass(frozen=True)
class Customer:
    issuer: str
    subject: str
    groups: tuple

    @property
    def admin(self):
        return ADMIN_GROUP in self.groups


def _groups(value):
    """cognito:groups: a list in the token, a string such as "[admin ops]" in API Gateway's claims."""
    if isinstance(value, list):
        return tuple(str(g) for g in value)
    text = str(value or "").strip("[]")
    return tuple(g for g in text.replace(",", " ").split() if g)


@functools.lru_cache(maxsize=4)
def _signing_keys(url):
    import jwt  # PyJWT: only where the app verifies tokens itself

    return jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)


def verify(token, settings):
    """The claims of a valid ID token of the pool, or Unauthorized."""
    import jwt

    if not settings.token_issuer or not settings.token_audiences:
        raise ServiceUnavailable("Customer sign-in is not configured on this deployment.")
    try:
        key = _signing_keys(settings.token_keys_url).get_signing_key_from_jwt(token)
    except jwt.PyJWKClientConnectionError as exc:
        raise ServiceUnavailable("The customer token keys are unavailable; retry shortly.") from exc
    except jwt.PyJWTError:
        raise Unauthorized("The customer token is not valid.") from None
    try:
        claims = jwt.decode(token, key.key, algorithms=["RS256"], issuer=settings.token_issuer,
                            audience=settings.token_audiences,
                            options={"require": ["exp", "iss", "sub", "aud", "token_use"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The customer token has expired; sign in again.") from None
    except jwt.InvalidIssuerError:
        raise Unauthorized("The customer token is from another user pool.") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized("The customer token is for another app client.") from None
    except jwt.PyJWTError:
        raise Unauthorized("The customer token is not valid.") from None
    if claims["token_use"] != "id":
        raise Unauthorized("Send the ID token (not the access token) as the customer token.")
    return claims


def customer_for_request(settings, headers, context):
    """The Customer calling, or Unauthorized."""
    if settings.verify_tokens:
        header = headers.get("authorization") or ""
        token = header[7:] if header[:7].lower() == "bearer " else header
        if not token.strip():
            raise Unauthorized("A customer token is required: header 'Authorization: Bearer <ID token>'.")
        claims = verify(token.strip(), settings)
    else:
        claims = (context.get("authorizer") or {}).get("claims") or {}
        if not claims.get("sub") or not claims.get("iss"):
            raise Unauthorized("A customer token is required: header 'Authorization: Bearer <ID token>'.")
    return Customer(issuer=claims["iss"], subject=claims["sub"], groups=_groups(claims.get("cognito:groups")))

"""The one place HTTP concerns live: API key and plan check, the customer's
token on /customer routes, rate limits (per key, and per person on a key that
ships in an app), JSON body parsing, mapping every exception to the docs/api.md
error body, metrics. Route modules in chalicelib/entrypoints/routes/ declare
views with `endpoint`."""
import contextvars
import functools
import json
import time
import uuid

from chalice import Response

from chalicelib import bootstrap
from chalicelib.domain import people
from chalicelib.domain.errors import (
    MethodNotAllowed,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    ShopError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from chalicelib.domain.validation import echo, parse_json
from chalicelib.entrypoints import auth
from chalicelib.entrypoints.deployment import refuse_if_misconfigured
from chalicelib.entrypoints.customer_tokens import CUSTOMER_PREFIX, customer_for_request
from chalicelib.ops.logs import logger
from chalicelib.ops.metrics import emit

MAX_BODY_BYTES = 1_000_000
# The Caller (chalicelib/domain/clients.py) of the request being served; None on public routes.
_caller = contextvars.ContextVar("caller", default=None)
# The Customer of a /customer route's token (chalicelib/entrypoints/customer_tokens.py).
_customer = contextvars.ContextVar("customer", default=None)
# "<client>|<person>" on a key whose plan limits each person (chalicelib/domain/people.py); else None.
_person = contextvars.ContextVar("person", default=None)


def current_caller():
    return _caller.get()


def current_customer():
    return _customer.get()


def current_person():
    return _person.get()


# Bodies are JSON. Besides application/json, the labels that generic clients
# put on a body they were not told to label are accepted (curl -d sends
# x-www-form-urlencoded); text/plain, XML and the rest are 415.
ACCEPTED_CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "application/octet-stream"]
# What Chalice lets through to a view: a request without a body labelled text/plain (some
# clients label every request so) is served; a body labelled so gets 415 in json_body.
ROUTE_CONTENT_TYPES = [*ACCEPTED_CONTENT_TYPES, "text/plain"]


def _request_id(request):
    return (request.context or {}).get("requestId") or str(uuid.uuid4())


def json_response(status, body, headers=None, request_id=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    if request_id:
        headers["X-Request-Id"] = request_id
    text = json.dumps(body, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        # A lone surrogate cannot be sent as UTF-8 (chalice local drops the
        # connection); \u-escaped, the same JSON value still reaches the client.
        text = json.dumps(body)
    return Response(body=text, status_code=status, headers=headers)


def error_response(exc, request_id):
    headers = {}
    if isinstance(exc, (RateLimited, ServiceUnavailable)):
        headers["Retry-After"] = str(exc.retry_after)
    body = exc.body()
    body["error"]["request_id"] = request_id
    return json_response(exc.status, body, headers, request_id)


# Chalice answers some requests itself before any view runs: a method the
# route does not have (405), a Content-Type it does not accept (415), a binary
# response the client did not Accept (400). Its body is {"Code", "Message"}.
_CHALICE_ERRORS = {405: MethodNotAllowed, 415: UnsupportedMediaType, 400: ValidationError}


def chalice_errors_in_contract_shape(request, get_response):
    """HTTP middleware: those answers get the contract's error body and request id."""
    response = get_response(request)
    body = response.body
    if response.status_code >= 400 and isinstance(body, dict) and set(body) == {"Code", "Message"}:
        error = _CHALICE_ERRORS.get(response.status_code, ShopError)(f"{body['Message']}.")
        shaped = error_response(error, _request_id(request))
        shaped.headers = {**response.headers, **shaped.headers}  # keeps Allow on a 405
        return shaped
    return response


def media_type(headers):
    """The Content-Type's type/subtype, lower case ('' if absent or not one type)."""
    value = (headers or {}).get("content-type")
    if value is None:
        return "application/json"  # what Chalice and API Gateway assume
    kind = value.split(";", 1)[0].strip().lower()
    return kind if kind.count("/") == 1 and "," not in kind else ""


def json_body(request):
    """The parsed JSON body: 415 if labelled as something else, 413 if huge,
    400 if missing, not JSON, too deep or not Unicode text."""
    # Chalice's own check passes "application/xml, application/json"; one type it must be.
    if media_type(request.headers) not in ACCEPTED_CONTENT_TYPES:
        raise UnsupportedMediaType(f"Request bodies are JSON: send Content-Type: application/json, not "
                                   f"{echo(request.headers.get('content-type'), 100)!r}.")
    raw = request.raw_body or b""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        raise ValidationError("A JSON request body is required.")
    return parse_json(raw)


def query_params(request):
    return dict(request.query_params or {})


def _admit(request, customer_route, admin):
    """(caller, customer, person) of a keyed request, or the error that refuses it. The key
    first; on a /customer route the token, whose customer is the person a key that ships in
    an app is limited by (elsewhere, or with no valid token: the caller's address); then the
    rate limit, so a refused token counts too; then the token's refusal; then the admin plan."""
    settings = bootstrap.settings()
    context = request.context or {}
    caller = auth.caller_for_request(settings, request.headers, context)
    customer = refusal = person = None
    if customer_route:
        try:
            customer = customer_for_request(settings, request.headers, context)
        except Unauthorized as exc:
            refusal = exc
    if caller.per_person:
        who = people.customer(customer.issuer, customer.subject) if customer else \
            people.address((context.get("identity") or {}).get("sourceIp"))
        person = f"{caller.client}|{who}"
    if settings.rate_limit_enabled or person:
        decision = bootstrap.rate_limiter().check(caller.key_id, caller.plan, person=person,
                                                  per_key=settings.rate_limit_enabled)
        if not decision.allowed:
            raise RateLimited(_TOO_MANY[decision.refused_by], retry_after=decision.retry_after)
    if refusal:
        raise refusal
    if admin:
        auth.require_admin(caller)
    return caller, customer, person


_TOO_MANY = {"key": "Too many requests for this API key.",
             "person": "Too many requests from this customer (or, without a customer token, this address) "
                       "through this app's key."}


def endpoint(routes, path, methods=("GET",), admin=False, public=False, check_key_in_app=True):
    """Declare a view on `routes` (an app or Blueprint). The view gets the
    request first and returns (status, body), (status, body, headers) or a
    ready Response (a page). `public` routes need no key anywhere;
    `check_key_in_app=False` leaves the key to API Gateway alone."""

    customer_route = path.startswith(CUSTOMER_PREFIX)

    def decorate(view):
        @functools.wraps(view)
        def handler(*args, **kwargs):
            request = routes.current_request
            request_id = _request_id(request)
            logger.append_keys(request_id=request_id)
            started = time.perf_counter()
            route = f"{request.method} {path}"
            try:
                refuse_if_misconfigured()
                caller = customer = person = None
                if not public and check_key_in_app:
                    caller, customer, person = _admit(request, customer_route, admin)
                tokens = (_caller.set(caller), _customer.set(customer), _person.set(person))
                try:
                    result = view(request, *args, **kwargs)
                finally:
                    for var, token in zip((_caller, _customer, _person), tokens):
                        var.reset(token)
                if isinstance(result, Response):
                    response = result
                    response.headers["X-Request-Id"] = request_id
                else:
                    status, body, *rest = result
                    response = json_response(status, body, rest[0] if rest else None, request_id)
            except ShopError as exc:
                if exc.status >= 500:
                    logger.warning("request failed", extra={"route": route, "code": exc.code})
                response = error_response(exc, request_id)
                emit("Errors", 1, code=exc.code)
            except Exception:
                logger.exception("unhandled error", extra={"route": route})
                response = json_response(500, {"error": {"code": "INTERNAL", "message": "Internal error; quote the request id.",
                                                         "request_id": request_id}}, request_id=request_id)
                emit("Errors", 1, code="INTERNAL")
            finally:
                logger.remove_keys(["request_id"])
            emit("RequestLatency", (time.perf_counter() - started) * 1000, unit="Milliseconds", route=route)
            return response

        routes.route(path, methods=list(methods), api_key_required=not public,
                     content_types=ROUTE_CONTENT_TYPES)(handler)
        return view

    return decorate

"""Lambda handlers: parse, call the core in chalicelib, map results and errors."""
import functools
import json
import time
import uuid

from chalice import Chalice, Response

from chalicelib import auth, bootstrap
from chalicelib.errors import PayloadTooLarge, RateLimited, ServiceUnavailable, ShopError, ValidationError
from chalicelib.observability import emit, logger
from chalicelib.validation import path_id

app = Chalice(app_name="shop")
app.api.binary_types = []

MAX_BODY_BYTES = 1_000_000
# Bodies are parsed as JSON whatever the client labels them, so a wrong label
# gets our VALIDATION_ERROR body instead of Chalice's own 415 shape.
ACCEPTED_CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
                          "application/octet-stream"]


def _request_id(request):
    return (request.context or {}).get("requestId") or str(uuid.uuid4())


def _json(status, body, headers=None, request_id=None):
    headers = {"Content-Type": "application/json", **(headers or {})}
    if request_id:
        headers["X-Request-Id"] = request_id
    return Response(body=json.dumps(body, ensure_ascii=False), status_code=status, headers=headers)


def error_response(exc, request_id):
    headers = {}
    if isinstance(exc, (RateLimited, ServiceUnavailable)):
        headers["Retry-After"] = str(exc.retry_after)
    body = exc.body()
    body["error"]["request_id"] = request_id
    return _json(exc.status, body, headers, request_id)


def json_body(request):
    """The parsed JSON body: 413 if huge, 400 if missing or not JSON."""
    raw = request.raw_body or b""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
    if not raw.strip():
        raise ValidationError("A JSON request body is required.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"The request body is not valid JSON: {exc}.") from None


def endpoint(path, methods=("GET",), admin=False, public=False):
    """Route + API key/plan check + rate limit + error mapping + metrics.
    The view returns (status, body) or (status, body, headers)."""

    def decorate(view):
        @functools.wraps(view)
        def handler(*args, **kwargs):
            request = app.current_request
            request_id = _request_id(request)
            logger.append_keys(request_id=request_id)
            started = time.perf_counter()
            route = f"{request.method} {path}"
            try:
                if not public:
                    settings = bootstrap.settings()
                    key, plan = auth.plan_for_request(settings, request.headers, request.context or {})
                    if settings.rate_limit_enabled:
                        allowed, retry_after = bootstrap.rate_limiter().check(key, plan)
                        if not allowed:
                            raise RateLimited("Too many requests for this API key.", retry_after=retry_after)
                    if admin:
                        auth.require_admin(plan)
                status, body, *rest = view(*args, **kwargs)
                response = _json(status, body, rest[0] if rest else None, request_id)
            except ShopError as exc:
                if exc.status >= 500:
                    logger.warning("request failed", extra={"route": route, "code": exc.code})
                response = error_response(exc, request_id)
                emit("Errors", 1, code=exc.code)
            except Exception:
                logger.exception("unhandled error", extra={"route": route})
                response = _json(500, {"error": {"code": "INTERNAL", "message": "Internal error; quote the request id.",
                                                 "request_id": request_id}}, request_id=request_id)
                emit("Errors", 1, code="INTERNAL")
            finally:
                logger.remove_keys(["request_id"])
            emit("RequestLatency", (time.perf_counter() - started) * 1000, unit="Milliseconds", route=route)
            return response

        app.route(path, methods=list(methods), api_key_required=not public, content_types=ACCEPTED_CONTENT_TYPES)(handler)
        return view

    return decorate


# --- health ---------------------------------------------------------------

@endpoint("/health", public=True)
def health():
    mysql_up = bootstrap.database().ping()
    redis_up = bootstrap.redis_gateway().ping()
    checks = {"mysql": "up" if mysql_up else "down", "redis": "up" if redis_up else "down"}
    return 200, {"status": "ok" if mysql_up and redis_up else "degraded", "checks": checks}


# --- products -------------------------------------------------------------

@endpoint("/products", methods=("POST",), admin=True)
def create_product():
    return 201, {"product": bootstrap.catalog().create(json_body(app.current_request))}


@endpoint("/products/bulk", methods=("POST",), admin=True)
def create_products_bulk():
    body = json_body(app.current_request)
    products = body.get("products") if isinstance(body, dict) else None
    if not isinstance(products, list) or not products:
        raise ValidationError("'products' must be a non-empty list.", details={"field": "products"})
    if len(products) > 1000:
        raise PayloadTooLarge("At most 1000 products per bulk request.")
    created = bootstrap.catalog().create_many(products)
    return 201, {"ids": [p["id"] for p in created]}


@endpoint("/products/{product_id}", methods=("GET",))
def get_product(product_id):
    product, cache_state = bootstrap.catalog().get(path_id(product_id, "product_id"))
    emit("ProductCache", 1, result=cache_state)
    return 200, {"product": product}, {"X-Cache": cache_state}


@endpoint("/products/{product_id}", methods=("PATCH",), admin=True)
def update_product(product_id):
    pid = path_id(product_id, "product_id")
    return 200, {"product": bootstrap.catalog().update(pid, json_body(app.current_request))}


@endpoint("/products/{product_id}/stock", methods=("POST",), admin=True)
def adjust_stock(product_id):
    pid = path_id(product_id, "product_id")
    return 200, {"product": bootstrap.catalog().adjust_stock(pid, json_body(app.current_request))}

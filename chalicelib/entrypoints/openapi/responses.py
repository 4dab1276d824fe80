"""What every operation can answer besides its success: the error codes (from
domain/errors.py), one error response per status with its headers, and the
JSON responses' shape."""
import inspect

from chalicelib.domain import errors
from chalicelib.entrypoints.openapi.fields import ref

# Status codes of the error classes; NOT_FOUND is their common base, answered by no route.
ERROR_CLASSES = sorted((cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                        if issubclass(cls, errors.ShopError)), key=lambda cls: (cls.status, cls.code))
ERROR_CODES = list(dict.fromkeys(cls.code for cls in ERROR_CLASSES))

HEADERS = {
    "X-Request-Id": {"description": "Request id; also error.request_id.", "schema": {"type": "string"}},
    "X-Cache": {"description": "Where the answer came from.",
                "schema": {"type": "string", "enum": ["HIT", "MISS", "BYPASS", "STALE"]}},
    "Retry-After": {"description": "Whole seconds to wait.", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
}
ERROR_RESPONSES = {  # status -> (description, extra headers)
    400: ("VALIDATION_ERROR: a bad body, parameter or path id.", ()),
    401: ("UNAUTHORIZED: no valid customer token (missing, expired, forged, another pool or app client).", ()),
    403: ("FORBIDDEN: missing, unknown or revoked x-api-key, a key whose plan may not use the route, or no such "
          "path.", ()),
    404: ("PRODUCT_NOT_FOUND, ORDER_NOT_FOUND, BATCH_NOT_FOUND, SALE_NOT_FOUND or RESERVATION_NOT_FOUND.", ()),
    409: ("DUPLICATE_SKU, VERSION_CONFLICT, INSUFFICIENT_STOCK, SALE_CONFLICT, or a lifecycle transition the "
          "order's state forbids: ORDER_EXPIRED, ORDER_CANCELLED, ALREADY_PAID, ORDER_NOT_PAID, ORDER_FULFILLED, "
          "PAYMENT_REFERENCE_USED.", ()),
    413: ("PAYLOAD_TOO_LARGE: body over 1,000,000 bytes, or too many items.", ()),
    415: ("UNSUPPORTED_MEDIA_TYPE: the body is not labelled as JSON.", ()),
    429: ("RATE_LIMITED: the key's token bucket is empty, or on an app's key (plan public) the caller's own "
          "(per customer or address); search: or the key's (app's key: the person's) search budget is spent.",
          ("Retry-After",)),
    500: ("INTERNAL: a bug; quote the request id.", ()),
    503: ("SERVICE_UNAVAILABLE: MySQL (or for async, SQS) unavailable; retry. Search: also a search stopped at its "
          "time limit (details.reason time_limit). The state store (flash sales, rate limits, search budgets) full: "
          "details.reason state_store_full, nothing changed.", ("Retry-After",)),
}



def response_headers(*names):
    return {name: HEADERS[name] for name in ("X-Request-Id", *names)}


def json_response(schema_name, description, *headers):
    return {"description": description, "headers": response_headers(*headers),
            "content": {"application/json": {"schema": ref(schema_name)}}}


def error_response(status):
    description, headers = ERROR_RESPONSES[status]
    return {"description": description, "headers": response_headers(*headers),
            "content": {"application/json": {"schema": ref("Error")}}}


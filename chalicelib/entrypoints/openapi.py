"""The machine-readable contract: an OpenAPI 3.1 document of every route,
built from the same constants the validators use (limits, error codes, search
parameters, usage plans), so it cannot drift from them. Served at
`GET /openapi.json`; docs/openapi.json is the same document, written by
`make openapi` and checked against this module by tests/unit/test_openapi.py,
which also checks it against the app's routes and docs/api.md."""
import inspect
import json

from chalicelib.domain import customer_limits
from chalicelib.domain import errors
from chalicelib.domain import order_lifecycle as lifecycle
from chalicelib.domain import related
from chalicelib.domain.orders import (MAX_CLIENT_ORDER_ID, MAX_EMAIL, MAX_LINES_PER_ORDER, MAX_ORDERS_PER_BATCH,
                                      MAX_QUANTITY)
from chalicelib.domain.products import BULK_LIMIT, MAX_PRICE_CENTS, MAX_STOCK, STATUSES
from chalicelib.domain.search_query import MAX_CURSOR_CHARS, SORTS, TOTAL_CAP
from chalicelib.domain.search_text import MAX_QUERY_CHARS
from chalicelib.domain.validation import MAX_JSON_DEPTH
from chalicelib.ops.metrics import WINDOW_SECONDS
from chalicelib.domain.sales import MAX_PER_CUSTOMER_LIMIT

VERSION = "1.3.0"
MAX_PATH_ID = 10**18 - 1  # ids in paths: up to 18 digits
# Status codes of the error classes; NOT_FOUND is their common base, answered by no route.
ERROR_CLASSES = sorted((cls for _, cls in inspect.getmembers(errors, inspect.isclass)
                        if issubclass(cls, errors.ShopError)), key=lambda cls: (cls.status, cls.code))
ERROR_CODES = list(dict.fromkeys(cls.code for cls in ERROR_CLASSES))


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


NO_NUL = r"^[^\u0000]*$"


def _string(min_length, max_length, description=None):
    """A body string: no NUL, and (when required) something left once trimmed of whitespace."""
    schema = {"type": "string", "minLength": min_length, "maxLength": max_length,
              "pattern": r"^[^\u0000]*[^\s\u0000][^\u0000]*$" if min_length else NO_NUL}
    if description:
        schema["description"] = description
    return schema


def _integer(minimum, maximum, description=None):
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if description:
        schema["description"] = description
    return schema


def _object(properties, required=(), description=None, closed=True):
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO-8601 UTC with microseconds"}
PRODUCT_FIELDS = {
    "sku": _string(1, 64, "Unique, compared case-insensitively."),
    "name": _string(1, 255),
    "description": _string(0, 10_000),
    "category": _string(1, 64),
    "price_cents": _integer(0, MAX_PRICE_CENTS),
}
MAX_DELTA = MAX_STOCK

LOW_STOCK_THRESHOLD = _integer(0, MAX_STOCK, "A stock write that takes stock from at-or-above it to below it "
                                "emits stock.low (the operator is emailed); 0 (the default): never.")
CONTACT_EMAIL = {"type": "string", "minLength": 3, "maxLength": MAX_EMAIL, "format": "email",
                 "description": "Where the order's emails go (trimmed; one address). Without it, no email."}
RESERVATION_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$",
                  "description": "A flash-sale order's reservation (GET /reservations/{reservation_id})."}
ORDER_ERROR = _object({"code": {"type": "string", "enum": [
    "VALIDATION_ERROR", "PRODUCT_NOT_FOUND", "INSUFFICIENT_STOCK", "IDEMPOTENCY_CONFLICT", "SALE_LIMIT_EXCEEDED",
    "QUANTITY_LIMIT_EXCEEDED", "SERVICE_UNAVAILABLE", "PAYLOAD_TOO_LARGE"]},
    "message": {"type": "string"}, "product_id": {"type": "integer"},
    "details": _object({"limit": {"type": "integer", "minimum": 1}, "product_id": {"type": "integer"},
                        "held": {"type": "integer", "minimum": 0}, "requested": {"type": "integer", "minimum": 1}},
                       ["limit"], "QUANTITY_LIMIT_EXCEEDED only: the cap the order went past; product_id for the "
                                  "units of one product in an order, held and requested for the units held unpaid.")},
    ["code", "message"])

SCHEMAS = {
    "ErrorCode": {"type": "string", "enum": ERROR_CODES,
                  "description": "Every code the API answers; see docs/api.md for when."},
    "Error": _object({"error": _object({
        "code": _ref("ErrorCode"),
        "message": {"type": "string"},
        "request_id": {"type": "string", "description": "Also the X-Request-Id header."},
        "details": {"type": "object", "description": "field, unknown_fields (+ allowed), skus, error, max_stock, "
                                                     "committed_client_order_ids; search: reason (time_limit, "
                                                     "search_budget), time_limit_ms, budget_ms"},
        "product_id": {"type": "integer"},
        "order_id": {"type": "integer"},
        "batch_id": {"type": "string"},
        "reservation_id": {"type": "string"},
        "current_version": {"type": "integer"},
    }, ["code", "message"], closed=False)}, ["error"]),
    "Product": _object({
        "id": {"type": "integer", "minimum": 1},
        **PRODUCT_FIELDS,
        "stock": {"type": "integer", "minimum": 0,
                  "description": f"Writes keep it within 0..{MAX_STOCK}; cancels give stock back even above that."},
        "low_stock_threshold": LOW_STOCK_THRESHOLD,
        "version": {"type": "integer", "minimum": 1},
        "status": {"type": "string", "enum": list(STATUSES)},
        "created_at": TIMESTAMP,
        "updated_at": TIMESTAMP,
    }, ["id", "sku", "name", "description", "category", "price_cents", "stock", "low_stock_threshold", "version",
        "status", "created_at", "updated_at"]),
    "ProductEnvelope": _object({"product": _ref("Product")}, ["product"]),
    "RelatedProducts": _object({
        "product_id": {"type": "integer"},
        "items": {"type": "array", "maxItems": related.MAX_LIMIT, "items": _object({
            "product": _ref("Product"),
            "bought_together": {"type": "integer", "minimum": 1,
                                "description": "Orders that held both products (cancelled and expired ones "
                                               "taken back)."},
        }, ["product", "bought_together"])},
    }, ["product_id", "items"]),
    "NewProduct": _object({**PRODUCT_FIELDS, "stock": _integer(0, MAX_STOCK), "low_stock_threshold": LOW_STOCK_THRESHOLD},
                          ["sku", "name", "category", "price_cents", "stock"]),
    "ProductPatch": {**_object({
        **{k: v for k, v in PRODUCT_FIELDS.items() if k != "sku"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "low_stock_threshold": LOW_STOCK_THRESHOLD,
        "expected_version": _integer(1, 2**53, "Fails with VERSION_CONFLICT unless it is the current version."),
    }), "anyOf": [{"required": [name]} for name in ("name", "description", "category", "price_cents", "status",
                                                     "low_stock_threshold")]},
    "StockDelta": _object({"delta": {**_integer(-MAX_DELTA, MAX_DELTA), "not": {"const": 0},
                                     "description": f"Non-zero; stock must stay within 0..{MAX_STOCK} "
                                                    "(409 INSUFFICIENT_STOCK below, 400 above)."}}, ["delta"]),
    "SearchPage": _object({"items": {"type": "array", "items": _ref("Product")},
                           "total": {"type": "integer", "minimum": 0, "maximum": TOTAL_CAP,
                                     "description": f"Matches, counted exactly up to {TOTAL_CAP}."},
                           "total_exact": {"type": "boolean", "description": f"false: more than {TOTAL_CAP} "
                                           f"match and total is the lower bound {TOTAL_CAP}."},
                           "next_cursor": {"type": ["string", "null"]}},
                          ["items", "total", "total_exact", "next_cursor"]),
    "OrderLine": _object({"product_id": _integer(1, 2**53), "quantity": _integer(1, MAX_QUANTITY)},
                         ["product_id", "quantity"]),
    "OrderRequest": _object({
        "client_order_id": {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_ORDER_ID,
                            "pattern": r"^[\x20-\x7e\u00a0-\uffff]+$",
                            "description": "Printable, case-sensitive, not trimmed; unique per user_id."},
        "user_id": _integer(1, 2**53),
        "items": {"type": "array", "minItems": 1, "maxItems": MAX_LINES_PER_ORDER, "items": _ref("OrderLine")},
        "contact_email": CONTACT_EMAIL,
    }, ["client_order_id", "user_id", "items"]),
    "CustomerOrderRequest": _object({
        "client_order_id": {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_ORDER_ID,
                            "pattern": r"^[\x20-\x7e\u00a0-\uffff]+$",
                            "description": "Printable, case-sensitive, not trimmed; unique per customer."},
        "items": {"type": "array", "minItems": 1, "maxItems": MAX_LINES_PER_ORDER, "items": _ref("OrderLine"),
                  "description": f"Lines of one product merged, at most {customer_limits.DEFAULT_UNITS_PER_PRODUCT} "
                                 "units of it (CUSTOMER_MAX_UNITS_PER_PRODUCT); more fails the order with "
                                 "QUANTITY_LIMIT_EXCEEDED."},
    }, ["client_order_id", "items"], "An order for the customer the token names (no user_id or contact_email: "
                                     "an order with either fails with VALIDATION_ERROR; its emails go to the "
                                     "token's email if the pool verified it). It waits for payment, and fails with "
                                     "QUANTITY_LIMIT_EXCEEDED if the customer's orders waiting for payment would "
                                     f"hold more than {customer_limits.DEFAULT_UNPAID_UNITS} units "
                                     "(CUSTOMER_MAX_UNPAID_UNITS)."),
    "CustomerBatchRequest": _object({
        "orders": {"type": "array", "minItems": 1, "maxItems": customer_limits.MAX_ORDERS_PER_BATCH,
                   "items": _ref("CustomerOrderRequest"),
                   "description": f"More than {customer_limits.MAX_ORDERS_PER_BATCH} orders -> 413."},
    }, ["orders"]),
    "BatchRequest": _object({
        "orders": {"type": "array", "minItems": 1, "maxItems": MAX_ORDERS_PER_BATCH, "items": _ref("OrderRequest"),
                   "description": "An invalid order fails on its own (a VALIDATION_ERROR result); more than "
                                  f"{MAX_ORDERS_PER_BATCH} orders -> 413."},
        "batch_id": {"description": "Tolerated and ignored."},
    }, ["orders"]),
    "OrderResult": {"oneOf": [
        _object({"client_order_id": {"type": "string"},
                 "status": {"type": "string", "enum": ["created", "cancelled"],
                            "description": "cancelled: a replay of an order cancelled since"},
                 "order_id": {"type": "integer"}, "total_cents": {"type": "integer"},
                 "duplicate": {"type": "boolean"}, "reservation_id": RESERVATION_ID},
                ["client_order_id", "status", "order_id", "total_cents", "duplicate"]),
        _object({"client_order_id": {"type": "string"},
                 "status": {"const": "pending",
                            "description": "A flash-sale order accepted by the gate, not written yet; poll "
                                           "GET /reservations/{reservation_id}."},
                 "duplicate": {"type": "boolean"}, "reservation_id": RESERVATION_ID},
                ["client_order_id", "status", "duplicate", "reservation_id"]),
        _object({"client_order_id": {"type": ["string", "null"], "maxLength": MAX_CLIENT_ORDER_ID,
                                     "description": "As sent, cut to 64 characters; null if not a string."},
                 "status": {"const": "failed"},
                 "error": ORDER_ERROR, "reservation_id": RESERVATION_ID},
                ["client_order_id", "status", "error"]),
    ]},
    "Summary": _object({"created": {"type": "integer", "minimum": 0}, "failed": {"type": "integer", "minimum": 0},
                        "cancelled": {"type": "integer", "minimum": 1,
                                      "description": "Present when a replay found its order cancelled."},
                        "pending": {"type": "integer", "minimum": 1,
                                    "description": "Present when flash-sale orders were accepted, not yet written."}},
                       ["created", "failed"]),
    "SaleRequest": _object({
        "sale_stock": _integer(1, MAX_STOCK, "Units the sale offers; at most the product's stock now."),
        "per_customer_limit": _integer(1, MAX_PER_CUSTOMER_LIMIT, "Units one customer may hold in the sale."),
    }, ["sale_stock"]),
    "Sale": _object({
        "product_id": {"type": "integer"}, "sale_id": {"type": "string"},
        "sale_stock": {"type": "integer"}, "per_customer_limit": {"type": ["integer", "null"]},
        "on_sale": {"type": "boolean"}, "started_at": TIMESTAMP,
        "remaining": {"type": ["integer", "null"],
                      "description": "Units the gate still offers; null when Redis cannot say or the sale ended."},
    }, ["product_id", "sale_id", "sale_stock", "per_customer_limit", "on_sale", "started_at", "remaining"]),
    "Reservation": _object({
        "reservation_id": RESERVATION_ID, "client_order_id": {"type": "string"}, "user_id": {"type": "integer"},
        "status": {"type": "string", "enum": ["pending", "created", "failed"]},
        "order_id": {"type": "integer"}, "total_cents": {"type": "integer"}, "error": ORDER_ERROR,
    }, ["reservation_id", "client_order_id", "user_id", "status"]),
    "BatchResponse": _object({"results": {"type": "array", "items": _ref("OrderResult")},
                              "summary": _ref("Summary")}, ["results", "summary"]),
    "BatchAccepted": _object({"batch_id": {"type": "string"}, "status": {"const": "queued"}},
                             ["batch_id", "status"]),
    "BatchStatus": _object({
        "batch_id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "processing", "done"],
                   "description": "done: every order has its final result (no flash-sale order still pending)."},
        "order_count": {"type": "integer", "minimum": 1},
        "results": {"type": "array", "items": _ref("OrderResult")},
        "summary": _object({"created": {"type": "integer"}, "failed": {"type": "integer"},
                            "cancelled": {"type": "integer"},
                            "pending": {"type": "integer", "description": "Orders not processed yet plus flash-sale "
                                        "orders accepted and not written yet."}},
                           ["created", "failed", "pending"]),
    }, ["batch_id", "status", "order_count", "results", "summary"]),
    "Order": _object({
        "order_id": {"type": "integer"}, "client_order_id": {"type": "string"}, "user_id": {"type": "integer"},
        "status": {"type": "string", "enum": ["created", "cancelled"]}, "total_cents": {"type": "integer"},
        "lifecycle": {"type": "string", "enum": list(lifecycle.STATES),
                      "description": "pending_payment -> paid -> fulfilled, or cancelled / expired; status stays "
                                     "created while the order holds its stock."},
        "expires_at": {"type": ["string", "null"], "description": "When a pending order expires (else null)."},
        "payment_reference": {"type": ["string", "null"]},
        "contact_email": {"type": ["string", "null"], "description": "The address the order's emails go to: "
                                                                     "a trusted server's order's own, a customer's "
                                                                     "verified token email; null: no email."},
        "items": {"type": "array", "items": _object({"product_id": {"type": "integer"},
                                                     "quantity": {"type": "integer"},
                                                     "unit_price_cents": {"type": "integer"}},
                                                    ["product_id", "quantity", "unit_price_cents"])},
        "created_at": TIMESTAMP,
    }, ["order_id", "client_order_id", "user_id", "status", "lifecycle", "total_cents", "items", "created_at"]),
    "PaymentConfirmation": _object({
        "payment_reference": {"type": "string", "minLength": 1, "maxLength": lifecycle.MAX_PAYMENT_REFERENCE,
                              "pattern": NO_NUL, "description": "The provider's payment id; the call is "
                                                                "idempotent on it."},
    }, ["payment_reference"]),
    "OrderEvents": _object({"events": {"type": "array", "items": _object({
        "event_id": {"type": "string"}, "sequence": {"type": "integer"},
        "type": {"type": "string"}, "data": {"type": "object"}, "occurred_at": TIMESTAMP,
    }, ["event_id", "sequence", "type", "data", "occurred_at"])}}, ["events"]),
    "OrderEnvelope": _object({"order": _ref("Order")}, ["order"]),
    "SaleEnvelope": _object({"sale": _ref("Sale")}, ["sale"]),
    "ReservationEnvelope": _object({"reservation": _ref("Reservation")}, ["reservation"]),
    "Health": _object({"status": {"type": "string", "enum": ["ok", "degraded"]},
                       "checks": _object({"mysql": {"type": "string", "enum": ["up", "down"]},
                                          "redis": {"type": "string", "enum": ["up", "down"]}},
                                         ["mysql", "redis"])}, ["status", "checks"]),
    "Stats": _object({k: {"type": t} for k, t in (
        ("window_seconds", "integer"), ("generated_at", "string"), ("source", "string"), ("orders", "object"),
        ("cache", "object"), ("requests", "object"), ("routes", "object"), ("series", "object"))},
        ["window_seconds", "generated_at", "source", "orders", "cache", "requests", "routes", "series"],
        closed=False),
}

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


def _headers(*names):
    return {name: HEADERS[name] for name in ("X-Request-Id", *names)}


def _json(schema_name, description, *headers):
    return {"description": description, "headers": _headers(*headers),
            "content": {"application/json": {"schema": _ref(schema_name)}}}


def _error_response(status):
    description, headers = ERROR_RESPONSES[status]
    return {"description": description, "headers": _headers(*headers),
            "content": {"application/json": {"schema": _ref("Error")}}}


def _body(schema_name):
    return {"required": True, "content": {"application/json": {"schema": _ref(schema_name)}},
            "description": f"JSON (Content-Type application/json; x-www-form-urlencoded and octet-stream are also "
                           f"read as JSON), at most 1,000,000 bytes and {MAX_JSON_DEPTH} levels deep."}


def _path_param(name, schema):
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name, schema, description=None):
    param = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


PRODUCT_ID = _path_param("product_id", _integer(1, MAX_PATH_ID))
ORDER_ID = _path_param("order_id", _integer(1, MAX_PATH_ID))
RESERVATION_PARAM = _path_param("reservation_id", {"type": "string", "minLength": 1, "maxLength": 64})


def _operation(operation_id, summary, responses, *, admin=False, public=False, customer=False, parameters=(),
               body=None, statuses=(400, 403, 429, 500)):
    """Every keyed operation can answer 403, 429 and 500; `statuses` adds the others it names.
    A `customer` operation needs the customer's token as well as the key (401 without)."""
    codes = set(statuses) | ({503} if not public else set()) | ({401} if customer else set())
    if not public:
        codes |= {403, 429}
    if body is not None:
        codes |= {400, 413, 415}
    operation = {"operationId": operation_id, "summary": summary + (" (admin plan)" if admin else ""),
                 "responses": {**responses, **{str(s): _error_response(s) for s in sorted(codes)}}}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = _body(body)
    operation["security"] = [] if public else [{"ApiKey": [], "CustomerToken": []} if customer else {"ApiKey": []}]
    if admin:
        operation["x-plan"] = "admin"
    return operation


def build():
    """The OpenAPI 3.1 document (a fresh dict)."""
    paths = {
        "/health": {"get": _operation("health", "Health of MySQL and Redis; no key, not rate-limited",
                                      {"200": _json("Health", "Always 200.")}, public=True, statuses=(500,))},
        "/openapi.json": {"get": _operation("openapi", "This document", {
            "200": {"description": "The OpenAPI document.", "headers": _headers(),
                    "content": {"application/json": {"schema": {"type": "object"}}}}}, statuses=(500,))},
        "/products": {"post": _operation("createProduct", "Create a product", {
            "201": _json("ProductEnvelope", "Created: status active, version 1.")},
            admin=True, body="NewProduct", statuses=(400, 409, 500))},
        "/products/bulk": {"post": _operation("createProducts", "Create 1..1000 products, all or nothing", {
            "201": {"description": "Their ids in request order.", "headers": _headers(),
                    "content": {"application/json": {"schema": _object(
                        {"ids": {"type": "array", "items": {"type": "integer"}}}, ["ids"])}}}},
            admin=True, body="BulkProducts", statuses=(400, 409, 500))},
        "/products/search": {"get": _operation("searchProducts", "Keyword search over active products; an empty "
                                               "parameter is the same as leaving it out; min_price <= max_price", {
            "200": _json("SearchPage", "A page of matches.", "X-Cache")},
            parameters=[
                _query("q", {"type": "string", "maxLength": MAX_QUERY_CHARS, "pattern": NO_NUL},
                       "Keywords, at most 10 distinct terms; a non-empty q needs a letter or digit (blank browses)."),
                _query("category", {"type": "string", "maxLength": 64, "pattern": NO_NUL}),
                _query("min_price", _integer(0, MAX_PRICE_CENTS)),
                _query("max_price", _integer(0, MAX_PRICE_CENTS)),
                _query("in_stock", {"type": "string", "enum": ["true", "false", "1", "0"]},
                       "Any case of true/false/1/0."),
                _query("sort", {"type": "string", "enum": list(SORTS)}),
                _query("limit", _integer(1, 100)),
                _query("cursor", {"type": "string", "maxLength": MAX_CURSOR_CHARS, "pattern": NO_NUL},
                       "next_cursor of the previous page (opaque; any cursor this deployment did not issue, "
                       "or issued for another query, is 400)."),
                _query("typo", {"type": "string", "enum": ["true", "false", "1", "0"]},
                       "Any case of true/false/1/0; default true: words of 5+ letters also match with one "
                       "typo, of 8+ with two, ranked below exact matches. false turns that off."),
            ])},
        "/products/{product_id}": {
            "get": _operation("getProduct", "A product, also inactive", {
                "200": _json("ProductEnvelope", "The product.", "X-Cache")},
                parameters=[PRODUCT_ID], statuses=(400, 404, 500)),
            "patch": _operation("updateProduct", "Change name, description, category, price or status", {
                "200": _json("ProductEnvelope", "The product, version increased.")},
                admin=True, parameters=[PRODUCT_ID], body="ProductPatch", statuses=(400, 404, 409, 500)),
        },
        "/products/{product_id}/related": {"get": _operation(
            "relatedProducts", "Products most often bought together with this one (active, in stock), best first", {
                "200": _json("RelatedProducts", "Up to limit partners; fresh within a minute of new orders.",
                             "X-Cache")},
            parameters=[PRODUCT_ID, _query("limit", _integer(1, related.MAX_LIMIT),
                                           f"At most this many (default {related.DEFAULT_LIMIT}).")],
            statuses=(400, 404, 500))},
        "/products/{product_id}/stock": {"post": _operation("adjustStock", "Add to or take from stock", {
            "200": _json("ProductEnvelope", "The product with its new stock.")},
            admin=True, parameters=[PRODUCT_ID], body="StockDelta", statuses=(400, 404, 409, 500))},
        "/orders/batch": {"post": _operation("placeOrders", "Place 1..100 orders, each all or nothing", {
            "200": _json("BatchResponse", "mode=sync: one result per order, in request order."),
            "202": _json("BatchAccepted", "mode=async: queued; follow GET /batches/{batch_id}.")},
            parameters=[_query("mode", {"type": "string", "enum": ["sync", "async"]})],
            body="BatchRequest", statuses=(400, 500))},
        "/orders/{order_id}": {"get": _operation("getOrder", "An order", {
            "200": _json("OrderEnvelope", "The order.")}, parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/orders/{order_id}/cancel": {"post": _operation("cancelOrder", "Cancel an order; its stock comes back once", {
            "200": _json("OrderEnvelope", "The order, status cancelled (also when it already was).")},
            parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/orders/{order_id}/pay": {"post": _operation("payOrder", "Confirm payment (a provider's webhook or "
                                                      "the shop's backend); idempotent on the reference", {
            "200": _json("OrderEnvelope", "The order, lifecycle paid.")},
            parameters=[ORDER_ID], body="PaymentConfirmation", statuses=(400, 404, 409, 500))},
        "/orders/{order_id}/fulfil": {"post": _operation("fulfilOrder", "Mark a paid order fulfilled (shipped)", {
            "200": _json("OrderEnvelope", "The order, lifecycle fulfilled (also when it already was).")},
            parameters=[ORDER_ID], statuses=(400, 404, 409, 500))},
        "/orders/{order_id}/events": {"get": _operation("orderEvents", "The order's history, oldest first", {
            "200": _json("OrderEvents", "Its events (the outbox rows).")},
            parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/batches/{batch_id}": {"get": _operation("getBatch", "An async batch and its results so far", {
            "200": _json("BatchStatus", "queued, processing or done.")},
            parameters=[_path_param("batch_id", {"type": "string", "minLength": 1, "maxLength": 64})],
            statuses=(404, 500))},
        "/customer/orders/batch": {"post": _operation("placeCustomerOrders", "The signed-in customer places "
                                                      f"1..{customer_limits.MAX_ORDERS_PER_BATCH} of their own "
                                                      "orders (sync only), each waiting for payment", {
            "200": _json("BatchResponse", "One result per order, in request order.")},
            customer=True, parameters=[_query("mode", {"type": "string", "enum": ["sync"]})],
            body="CustomerBatchRequest", statuses=(400, 500))},
        "/customer/orders/{order_id}": {"get": _operation("getCustomerOrder", "One of the customer's orders", {
            "200": _json("OrderEnvelope", "The order.")},
            customer=True, parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/customer/orders/{order_id}/events": {"get": _operation(
            "customerOrderEvents", "The history of one of the customer's orders, oldest first", {
                "200": _json("OrderEvents", "Its events.")},
            customer=True, parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/customer/orders/{order_id}/cancel": {"post": _operation(
            "cancelCustomerOrder", "Cancel one of the customer's orders", {
                "200": _json("OrderEnvelope", "The order, status cancelled (also when it already was).")},
            customer=True, parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/products/{product_id}/sale": {
            "post": _operation("startSale", "Put a product on flash sale: its sync orders go through the gate", {
                "201": _json("SaleEnvelope", "On sale.")},
                admin=True, parameters=[PRODUCT_ID], body="SaleRequest", statuses=(400, 404, 409, 500)),
            "get": _operation("getSale", "A product's running sale", {
                "200": _json("SaleEnvelope", "On sale, with what the gate still offers.")},
                admin=True, parameters=[PRODUCT_ID], statuses=(400, 404, 500)),
            "delete": _operation("stopSale", "Take a product off sale; accepted orders are still written", {
                "200": _json("SaleEnvelope", "The sale as it ended (on_sale false).")},
                admin=True, parameters=[PRODUCT_ID], statuses=(400, 404, 500)),
        },
        "/reservations/{reservation_id}": {"get": _operation(
            "getReservation", "A flash-sale order's state: pending until written, then created or failed", {
                "200": _json("ReservationEnvelope", "The reservation.")},
            parameters=[RESERVATION_PARAM], statuses=(400, 404, 500))},
        "/customer/reservations/{reservation_id}": {"get": _operation(
            "getCustomerReservation", "One of the customer's flash-sale orders", {
                "200": _json("ReservationEnvelope", "The reservation.")},
            customer=True, parameters=[RESERVATION_PARAM], statuses=(400, 404, 500))},
        "/admin/stats": {"get": _operation("adminStats", "Numbers of the last window seconds", {
            "200": _json("Stats", "Rolling-window numbers (Cache-Control: no-store).")},
            admin=True, parameters=[_query("window", _integer(1, WINDOW_SECONDS)), _query("step", _integer(1, 60))],
            statuses=(400, 500))},
        "/dashboard": {"get": _operation("dashboard", "HTML page charting /admin/stats", {
            "200": {"description": "The page; it asks for the admin key itself.", "headers": _headers(),
                    "content": {"text/html": {"schema": {"type": "string"}}}}}, statuses=(500,))},
    }
    schemas = dict(SCHEMAS)
    schemas["BulkProducts"] = _object({"products": {"type": "array", "minItems": 1, "maxItems": BULK_LIMIT,
                                                    "items": _ref("NewProduct")}}, ["products"])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shop API", "version": VERSION,
            "description": "Batch orders and product search. The prose contract, with the rules this document "
                           "cannot express (idempotency, ordering, caching), is docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:8000", "description": "make run (local stage)"}],
        "security": [{"ApiKey": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey", "in": "header", "name": "x-api-key",
                    "description": "Every route but GET /health. Each key is one client's, on a plan "
                                   "(chalicelib/usage_plans.json): operations marked x-plan: admin need a key on "
                                   "the admin plan; /orders and /batches need a trusted-server plan (not "
                                   "public); any other key gets 403 FORBIDDEN. A client sees only its own "
                                   "orders and batches. Over the key's rate, or on a public-plan key over the "
                                   "caller's own (per customer or address) -> 429 RATE_LIMITED.",
                },
                "CustomerToken": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "The ID token of a customer signed in to the shop's Cognito user pool "
                                   "(InitiateAuth); the /customer routes need it with the key. Missing, expired, "
                                   "forged, or from another pool or app client -> 401 UNAUTHORIZED.",
                },
            },
        },
    }


def render():
    """docs/openapi.json's exact text."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"

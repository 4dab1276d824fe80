"""The OpenAPI document's components: the schema of every body the API reads
or answers, with the limits the validators enforce."""
from chalicelib.domain import customer_limits
from chalicelib.domain import order_lifecycle as lifecycle
from chalicelib.domain import related
from chalicelib.domain.orders import (MAX_CLIENT_ORDER_ID, MAX_EMAIL, MAX_LINES_PER_ORDER, MAX_ORDERS_PER_BATCH,
                                      MAX_QUANTITY)
from chalicelib.domain.products import BULK_LIMIT, MAX_PRICE_CENTS, MAX_STOCK, STATUSES
from chalicelib.domain.sale_mode import MAX_PER_CUSTOMER_LIMIT
from chalicelib.domain.search_query import TOTAL_CAP
from chalicelib.entrypoints.openapi.fields import NO_NUL, TIMESTAMP, integer, object_schema, ref, string
from chalicelib.entrypoints.openapi.responses import ERROR_CODES

PRODUCT_FIELDS = {
    "sku": string(1, 64, "Unique, compared case-insensitively."),
    "name": string(1, 255),
    "description": string(0, 10_000),
    "category": string(1, 64),
    "price_cents": integer(0, MAX_PRICE_CENTS),
}
MAX_DELTA = MAX_STOCK

LOW_STOCK_THRESHOLD = integer(0, MAX_STOCK, "A stock write that takes stock from at-or-above it to below it "
                                "emits stock.low (the operator is emailed); 0 (the default): never.")
CONTACT_EMAIL = {"type": "string", "minLength": 3, "maxLength": MAX_EMAIL, "format": "email",
                 "description": "Where the order's emails go (trimmed; one address). Without it, no email."}
RESERVATION_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$",
                  "description": "A flash-sale order's reservation (GET /reservations/{reservation_id})."}
ORDER_ERROR = object_schema({"code": {"type": "string", "enum": [
    "VALIDATION_ERROR", "PRODUCT_NOT_FOUND", "INSUFFICIENT_STOCK", "IDEMPOTENCY_CONFLICT", "SALE_LIMIT_EXCEEDED",
    "QUANTITY_LIMIT_EXCEEDED", "SERVICE_UNAVAILABLE", "PAYLOAD_TOO_LARGE"]},
    "message": {"type": "string"}, "product_id": {"type": "integer"},
    "details": object_schema({"limit": {"type": "integer", "minimum": 1}, "product_id": {"type": "integer"},
                              "held": {"type": "integer", "minimum": 0},
                              "requested": {"type": "integer", "minimum": 1}},
                             ["limit"], "QUANTITY_LIMIT_EXCEEDED only: the cap the order went past; product_id for the "
                                  "units of one product in an order, held and requested for the units held unpaid.")},
    ["code", "message"])

SCHEMAS = {
    "ErrorCode": {"type": "string", "enum": ERROR_CODES,
                  "description": "Every code the API answers; see docs/api.md for when."},
    "Error": object_schema({"error": object_schema({
        "code": ref("ErrorCode"),
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
    "Product": object_schema({
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
    "ProductEnvelope": object_schema({"product": ref("Product")}, ["product"]),
    "RelatedProducts": object_schema({
        "product_id": {"type": "integer"},
        "items": {"type": "array", "maxItems": related.MAX_LIMIT, "items": object_schema({
            "product": ref("Product"),
            "bought_together": {"type": "integer", "minimum": 1,
                                "description": "Orders that held both products (cancelled and expired ones "
                                               "taken back)."},
        }, ["product", "bought_together"])},
    }, ["product_id", "items"]),
    "NewProduct": object_schema({**PRODUCT_FIELDS, "stock": integer(0, MAX_STOCK),
                                 "low_stock_threshold": LOW_STOCK_THRESHOLD},
                                ["sku", "name", "category", "price_cents", "stock"]),
    "ProductPatch": {**object_schema({
        **{k: v for k, v in PRODUCT_FIELDS.items() if k != "sku"},
        "status": {"type": "string", "enum": list(STATUSES)},
        "low_stock_threshold": LOW_STOCK_THRESHOLD,
        "expected_version": integer(1, 2**53, "Fails with VERSION_CONFLICT unless it is the current version."),
    }), "anyOf": [{"required": [name]} for name in ("name", "description", "category", "price_cents", "status",
                                                     "low_stock_threshold")]},
    "StockDelta": object_schema({"delta": {**integer(-MAX_DELTA, MAX_DELTA), "not": {"const": 0},
                                           "description": f"Non-zero; stock must stay within 0..{MAX_STOCK} "
                                                    "(409 INSUFFICIENT_STOCK below, 400 above)."}}, ["delta"]),
    "SearchPage": object_schema({"items": {"type": "array", "items": ref("Product")},
                                 "total": {"type": "integer", "minimum": 0, "maximum": TOTAL_CAP,
                                           "description": f"Matches, counted exactly up to {TOTAL_CAP}."},
                                 "total_exact": {"type": "boolean", "description": f"false: more than {TOTAL_CAP} "
                                                 f"match and total is the lower bound {TOTAL_CAP}."},
                                 "next_cursor": {"type": ["string", "null"]}},
                                ["items", "total", "total_exact", "next_cursor"]),
    "OrderLine": object_schema({"product_id": integer(1, 2**53), "quantity": integer(1, MAX_QUANTITY)},
                               ["product_id", "quantity"]),
    "OrderRequest": object_schema({
        "client_order_id": {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_ORDER_ID,
                            "pattern": r"^[\x20-\x7e\u00a0-\uffff]+$",
                            "description": "Printable, case-sensitive, not trimmed; unique per user_id."},
        "user_id": integer(1, 2**53),
        "items": {"type": "array", "minItems": 1, "maxItems": MAX_LINES_PER_ORDER, "items": ref("OrderLine")},
        "contact_email": CONTACT_EMAIL,
    }, ["client_order_id", "user_id", "items"]),
    "CustomerOrderRequest": object_schema({
        "client_order_id": {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_ORDER_ID,
                            "pattern": r"^[\x20-\x7e\u00a0-\uffff]+$",
                            "description": "Printable, case-sensitive, not trimmed; unique per customer."},
        "items": {"type": "array", "minItems": 1, "maxItems": MAX_LINES_PER_ORDER, "items": ref("OrderLine"),
                  "description": f"Lines of one product merged, at most {customer_limits.DEFAULT_UNITS_PER_PRODUCT} "
                                 "units of it (CUSTOMER_MAX_UNITS_PER_PRODUCT); more fails the order with "
                                 "QUANTITY_LIMIT_EXCEEDED."},
    }, ["client_order_id", "items"], "An order for the customer the token names (no user_id or contact_email: "
                                     "an order with either fails with VALIDATION_ERROR; its emails go to the "
                                     "token's email if the pool verified it). It waits for payment, and fails with "
                                     "QUANTITY_LIMIT_EXCEEDED if the customer's orders waiting for payment would "
                                     f"hold more than {customer_limits.DEFAULT_UNPAID_UNITS} units "
                                     "(CUSTOMER_MAX_UNPAID_UNITS)."),
    "CustomerBatchRequest": object_schema({
        "orders": {"type": "array", "minItems": 1, "maxItems": customer_limits.MAX_ORDERS_PER_BATCH,
                   "items": ref("CustomerOrderRequest"),
                   "description": f"More than {customer_limits.MAX_ORDERS_PER_BATCH} orders -> 413."},
    }, ["orders"]),
    "BatchRequest": object_schema({
        "orders": {"type": "array", "minItems": 1, "maxItems": MAX_ORDERS_PER_BATCH, "items": ref("OrderRequest"),
                   "description": "An invalid order fails on its own (a VALIDATION_ERROR result); more than "
                                  f"{MAX_ORDERS_PER_BATCH} orders -> 413."},
        "batch_id": {"description": "Tolerated and ignored."},
    }, ["orders"]),
    "OrderResult": {"oneOf": [
        object_schema({"client_order_id": {"type": "string"},
                       "status": {"type": "string", "enum": ["created", "cancelled"],
                                  "description": "cancelled: a replay of an order cancelled since"},
                       "order_id": {"type": "integer"}, "total_cents": {"type": "integer"},
                       "duplicate": {"type": "boolean"}, "reservation_id": RESERVATION_ID},
                      ["client_order_id", "status", "order_id", "total_cents", "duplicate"]),
        object_schema({"client_order_id": {"type": "string"},
                       "status": {"const": "pending",
                                  "description": "A flash-sale order accepted by the gate, not written yet; poll "
                                                 "GET /reservations/{reservation_id}."},
                       "duplicate": {"type": "boolean"}, "reservation_id": RESERVATION_ID},
                      ["client_order_id", "status", "duplicate", "reservation_id"]),
        object_schema({"client_order_id": {"type": ["string", "null"], "maxLength": MAX_CLIENT_ORDER_ID,
                                           "description": "As sent, cut to 64 characters; null if not a string."},
                       "status": {"const": "failed"},
                       "error": ORDER_ERROR, "reservation_id": RESERVATION_ID},
                      ["client_order_id", "status", "error"]),
    ]},
    "Summary": object_schema({"created": {"type": "integer", "minimum": 0}, "failed": {"type": "integer", "minimum": 0},
                              "cancelled": {"type": "integer", "minimum": 1,
                                            "description": "Present when a replay found its order cancelled."},
                              "pending": {"type": "integer", "minimum": 1,
                                          "description": "Present when flash-sale orders were accepted, not yet "
                                                         "written."}},
                             ["created", "failed"]),
    "SaleRequest": object_schema({
        "sale_stock": integer(1, MAX_STOCK, "Units the sale offers; at most the product's stock now."),
        "per_customer_limit": integer(1, MAX_PER_CUSTOMER_LIMIT, "Units one customer may hold in the sale."),
    }, ["sale_stock"]),
    "Sale": object_schema({
        "product_id": {"type": "integer"}, "sale_id": {"type": "string"},
        "sale_stock": {"type": "integer"}, "per_customer_limit": {"type": ["integer", "null"]},
        "on_sale": {"type": "boolean"}, "started_at": TIMESTAMP,
        "remaining": {"type": ["integer", "null"],
                      "description": "Units the gate still offers; null when Redis cannot say or the sale ended."},
    }, ["product_id", "sale_id", "sale_stock", "per_customer_limit", "on_sale", "started_at", "remaining"]),
    "Reservation": object_schema({
        "reservation_id": RESERVATION_ID, "client_order_id": {"type": "string"}, "user_id": {"type": "integer"},
        "status": {"type": "string", "enum": ["pending", "created", "failed"]},
        "order_id": {"type": "integer"}, "total_cents": {"type": "integer"}, "error": ORDER_ERROR,
    }, ["reservation_id", "client_order_id", "user_id", "status"]),
    "BatchResponse": object_schema({"results": {"type": "array", "items": ref("OrderResult")},
                                    "summary": ref("Summary")}, ["results", "summary"]),
    "BatchAccepted": object_schema({"batch_id": {"type": "string"}, "status": {"const": "queued"}},
                                   ["batch_id", "status"]),
    "BatchStatus": object_schema({
        "batch_id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "processing", "done"],
                   "description": "done: every order has its final result (no flash-sale order still pending)."},
        "order_count": {"type": "integer", "minimum": 1},
        "results": {"type": "array", "items": ref("OrderResult")},
        "summary": object_schema({"created": {"type": "integer"}, "failed": {"type": "integer"},
                                  "cancelled": {"type": "integer"},
                                  "pending": {"type": "integer",
                                              "description": "Orders not processed yet plus flash-sale orders "
                                                             "accepted and not written yet."}},
                                 ["created", "failed", "pending"]),
    }, ["batch_id", "status", "order_count", "results", "summary"]),
    "Order": object_schema({
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
        "items": {"type": "array", "items": object_schema({"product_id": {"type": "integer"},
                                                           "quantity": {"type": "integer"},
                                                           "unit_price_cents": {"type": "integer"}},
                                                          ["product_id", "quantity", "unit_price_cents"])},
        "created_at": TIMESTAMP,
    }, ["order_id", "client_order_id", "user_id", "status", "lifecycle", "total_cents", "items", "created_at"]),
    "PaymentConfirmation": object_schema({
        "payment_reference": {"type": "string", "minLength": 1, "maxLength": lifecycle.MAX_PAYMENT_REFERENCE,
                              "pattern": NO_NUL, "description": "The provider's payment id; the call is "
                                                                "idempotent on it."},
    }, ["payment_reference"]),
    "OrderEvents": object_schema({"events": {"type": "array", "items": object_schema({
        "event_id": {"type": "string"}, "sequence": {"type": "integer"},
        "type": {"type": "string"}, "data": {"type": "object"}, "occurred_at": TIMESTAMP,
    }, ["event_id", "sequence", "type", "data", "occurred_at"])}}, ["events"]),
    "OrderEnvelope": object_schema({"order": ref("Order")}, ["order"]),
    "SaleEnvelope": object_schema({"sale": ref("Sale")}, ["sale"]),
    "ReservationEnvelope": object_schema({"reservation": ref("Reservation")}, ["reservation"]),
    "Health": object_schema({"status": {"type": "string", "enum": ["ok", "degraded"]},
                             "checks": object_schema({"mysql": {"type": "string", "enum": ["up", "down"]},
                                                      "redis": {"type": "string", "enum": ["up", "down"]}},
                                                     ["mysql", "redis"])}, ["status", "checks"]),
    "Stats": object_schema({k: {"type": t} for k, t in (
        ("window_seconds", "integer"), ("generated_at", "string"), ("source", "string"), ("orders", "object"),
        ("cache", "object"), ("requests", "object"), ("routes", "object"), ("series", "object"))},
        ["window_seconds", "generated_at", "source", "orders", "cache", "requests", "routes", "series"],
        closed=False),
    "BulkProducts": object_schema({"products": {"type": "array", "minItems": 1, "maxItems": BULK_LIMIT,
                                                "items": ref("NewProduct")}}, ["products"]),
}

"""The OpenAPI document's paths: one operation per route, with its
parameters, body and every status it can answer."""
from chalicelib.domain import customer_limits
from chalicelib.domain import related
from chalicelib.domain.products import MAX_PRICE_CENTS
from chalicelib.domain.search_query import MAX_CURSOR_CHARS, SORTS
from chalicelib.domain.search_text import MAX_QUERY_CHARS
from chalicelib.domain.validation import MAX_JSON_DEPTH
from chalicelib.entrypoints.openapi.fields import NO_NUL, integer, object_schema, ref
from chalicelib.entrypoints.openapi.responses import error_response, json_response, response_headers
from chalicelib.ops.metrics import WINDOW_SECONDS

MAX_PATH_ID = 10**18 - 1  # ids in paths: up to 18 digits


def request_body(schema_name):
    return {"required": True, "content": {"application/json": {"schema": ref(schema_name)}},
            "description": f"JSON (Content-Type application/json; x-www-form-urlencoded and octet-stream are also "
                           f"read as JSON), at most 1,000,000 bytes and {MAX_JSON_DEPTH} levels deep."}


def path_param(name, schema):
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query_param(name, schema, description=None):
    param = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


PRODUCT_ID = path_param("product_id", integer(1, MAX_PATH_ID))
ORDER_ID = path_param("order_id", integer(1, MAX_PATH_ID))
RESERVATION_PARAM = path_param("reservation_id", {"type": "string", "minLength": 1, "maxLength": 64})


def operation(operation_id, summary, responses, *, admin=False, public=False, customer=False, parameters=(),
              body=None, statuses=(400, 403, 429, 500)):
    """Every keyed operation can answer 403, 429 and 500; `statuses` adds the others it names.
    A `customer` operation needs the customer's token as well as the key (401 without)."""
    codes = set(statuses) | ({503} if not public else set()) | ({401} if customer else set())
    if not public:
        codes |= {403, 429}
    if body is not None:
        codes |= {400, 413, 415}
    operation = {"operationId": operation_id, "summary": summary + (" (admin plan)" if admin else ""),
                 "responses": {**responses, **{str(s): error_response(s) for s in sorted(codes)}}}
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = request_body(body)
    operation["security"] = [] if public else [{"ApiKey": [], "CustomerToken": []} if customer else {"ApiKey": []}]
    if admin:
        operation["x-plan"] = "admin"
    return operation


def _service():
    """Health and this document."""
    return {
        "/health": {"get": operation("health", "Health of MySQL and Redis; no key, not rate-limited",
                                     {"200": json_response("Health", "Always 200.")}, public=True, statuses=(500,))},
        "/openapi.json": {"get": operation("openapi", "This document", {
            "200": {"description": "The OpenAPI document.", "headers": response_headers(),
                    "content": {"application/json": {"schema": {"type": "object"}}}}}, statuses=(500,))},
    }


def _catalog():
    """Products: writes (admin), reads, search, bought together, stock."""
    return {
        "/products": {"post": operation("createProduct", "Create a product", {
            "201": json_response("ProductEnvelope", "Created: status active, version 1.")},
            admin=True, body="NewProduct", statuses=(400, 409, 500))},
        "/products/bulk": {"post": operation("createProducts", "Create 1..1000 products, all or nothing", {
            "201": {"description": "Their ids in request order.", "headers": response_headers(),
                    "content": {"application/json": {"schema": object_schema(
                        {"ids": {"type": "array", "items": {"type": "integer"}}}, ["ids"])}}}},
            admin=True, body="BulkProducts", statuses=(400, 409, 500))},
        "/products/search": {"get": operation("searchProducts", "Keyword search over active products; an empty "
                                              "parameter is the same as leaving it out; min_price <= max_price", {
           "200": json_response("SearchPage", "A page of matches.", "X-Cache")},
            parameters=[
                query_param("q", {"type": "string", "maxLength": MAX_QUERY_CHARS, "pattern": NO_NUL},
                            "Keywords, at most 10 distinct terms; a non-empty q needs a letter or digit "
                            "(blank browses)."),
                query_param("category", {"type": "string", "maxLength": 64, "pattern": NO_NUL}),
                query_param("min_price", integer(0, MAX_PRICE_CENTS)),
                query_param("max_price", integer(0, MAX_PRICE_CENTS)),
                query_param("in_stock", {"type": "string", "enum": ["true", "false", "1", "0"]},
                            "Any case of true/false/1/0."),
                query_param("sort", {"type": "string", "enum": list(SORTS)}),
                query_param("limit", integer(1, 100)),
                query_param("cursor", {"type": "string", "maxLength": MAX_CURSOR_CHARS, "pattern": NO_NUL},
                            "next_cursor of the previous page (opaque; any cursor this deployment did not issue, "
                            "or issued for another query, is 400)."),
                query_param("typo", {"type": "string", "enum": ["true", "false", "1", "0"]},
                            "Any case of true/false/1/0; default true: words of 5+ letters also match with one "
                            "typo, of 8+ with two, ranked below exact matches. false turns that off."),
            ])},
        "/products/{product_id}": {
            "get": operation("getProduct", "A product, also inactive", {
                "200": json_response("ProductEnvelope", "The product.", "X-Cache")},
                parameters=[PRODUCT_ID], statuses=(400, 404, 500)),
            "patch": operation("updateProduct", "Change name, description, category, price or status", {
                "200": json_response("ProductEnvelope", "The product, version increased.")},
                admin=True, parameters=[PRODUCT_ID], body="ProductPatch", statuses=(400, 404, 409, 500)),
        },
        "/products/{product_id}/related": {"get": operation(
            "relatedProducts", "Products most often bought together with this one (active, in stock), best first", {
                "200": json_response("RelatedProducts", "Up to limit partners; fresh within a minute of new orders.",
                                     "X-Cache")},
            parameters=[PRODUCT_ID, query_param("limit", integer(1, related.MAX_LIMIT),
                                                f"At most this many (default {related.DEFAULT_LIMIT}).")],
            statuses=(400, 404, 500))},
        "/products/{product_id}/stock": {"post": operation("adjustStock", "Add to or take from stock", {
            "200": json_response("ProductEnvelope", "The product with its new stock.")},
            admin=True, parameters=[PRODUCT_ID], body="StockDelta", statuses=(400, 404, 409, 500))},
    }


def _orders():
    """A trusted server's orders and async batches."""
    return {
        "/orders/batch": {"post": operation("placeOrders", "Place 1..100 orders, each all or nothing", {
            "200": json_response("BatchResponse", "mode=sync: one result per order, in request order."),
            "202": json_response("BatchAccepted", "mode=async: queued; follow GET /batches/{batch_id}.")},
            parameters=[query_param("mode", {"type": "string", "enum": ["sync", "async"]})],
            body="BatchRequest", statuses=(400, 500))},
        "/orders/{order_id}": {"get": operation("getOrder", "An order", {
            "200": json_response("OrderEnvelope", "The order.")}, parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/orders/{order_id}/cancel": {"post": operation("cancelOrder", "Cancel an order; its stock comes back once", {
            "200": json_response("OrderEnvelope", "The order, status cancelled (also when it already was).")},
            parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/orders/{order_id}/pay": {"post": operation("payOrder", "Confirm payment (a provider's webhook or "
                                                     "the shop's backend); idempotent on the reference", {
           "200": json_response("OrderEnvelope", "The order, lifecycle paid.")},
            parameters=[ORDER_ID], body="PaymentConfirmation", statuses=(400, 404, 409, 500))},
        "/orders/{order_id}/fulfil": {"post": operation("fulfilOrder", "Mark a paid order fulfilled (shipped)", {
            "200": json_response("OrderEnvelope", "The order, lifecycle fulfilled (also when it already was).")},
            parameters=[ORDER_ID], statuses=(400, 404, 409, 500))},
        "/orders/{order_id}/events": {"get": operation("orderEvents", "The order's history, oldest first", {
            "200": json_response("OrderEvents", "Its events (the outbox rows).")},
            parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/batches/{batch_id}": {"get": operation("getBatch", "An async batch and its results so far", {
            "200": json_response("BatchStatus", "queued, processing or done.")},
            parameters=[path_param("batch_id", {"type": "string", "minLength": 1, "maxLength": 64})],
            statuses=(404, 500))},
    }


def _customer_orders():
    """A signed-in customer's own orders."""
    return {
        "/customer/orders/batch": {"post": operation("placeCustomerOrders", "The signed-in customer places "
                                                     f"1..{customer_limits.MAX_ORDERS_PER_BATCH} of their own "
                                                     "orders (sync only), each waiting for payment", {
           "200": json_response("BatchResponse", "One result per order, in request order.")},
            customer=True, parameters=[query_param("mode", {"type": "string", "enum": ["sync"]})],
            body="CustomerBatchRequest", statuses=(400, 500))},
        "/customer/orders/{order_id}": {"get": operation("getCustomerOrder", "One of the customer's orders", {
            "200": json_response("OrderEnvelope", "The order.")},
            customer=True, parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/customer/orders/{order_id}/events": {"get": operation(
            "customerOrderEvents", "The history of one of the customer's orders, oldest first", {
                "200": json_response("OrderEvents", "Its events.")},
            customer=True, parameters=[ORDER_ID], statuses=(400, 404, 500))},
        "/customer/orders/{order_id}/cancel": {"post": operation(
            "cancelCustomerOrder", "Cancel one of the customer's orders", {
                "200": json_response("OrderEnvelope", "The order, status cancelled (also when it already was).")},
            customer=True, parameters=[ORDER_ID], statuses=(400, 404, 500))},
    }


def _flash_sales():
    """Sale mode (admin) and the reservations of sale orders."""
    return {
        "/products/{product_id}/sale": {
            "post": operation("startSale", "Put a product on flash sale: its sync orders go through the gate", {
                "201": json_response("SaleEnvelope", "On sale.")},
                admin=True, parameters=[PRODUCT_ID], body="SaleRequest", statuses=(400, 404, 409, 500)),
            "get": operation("getSale", "A product's running sale", {
                "200": json_response("SaleEnvelope", "On sale, with what the gate still offers.")},
                admin=True, parameters=[PRODUCT_ID], statuses=(400, 404, 500)),
            "delete": operation("stopSale", "Take a product off sale; accepted orders are still written", {
                "200": json_response("SaleEnvelope", "The sale as it ended (on_sale false).")},
                admin=True, parameters=[PRODUCT_ID], statuses=(400, 404, 500)),
        },
        "/reservations/{reservation_id}": {"get": operation(
            "getReservation", "A flash-sale order's state: pending until written, then created or failed", {
                "200": json_response("ReservationEnvelope", "The reservation.")},
            parameters=[RESERVATION_PARAM], statuses=(400, 404, 500))},
        "/customer/reservations/{reservation_id}": {"get": operation(
            "getCustomerReservation", "One of the customer's flash-sale orders", {
                "200": json_response("ReservationEnvelope", "The reservation.")},
            customer=True, parameters=[RESERVATION_PARAM], statuses=(400, 404, 500))},
    }


def _admin():
    """The numbers of the last minutes and the dashboard page."""
    return {
        "/admin/stats": {"get": operation("adminStats", "Numbers of the last window seconds", {
            "200": json_response("Stats", "Rolling-window numbers (Cache-Control: no-store).")},
            admin=True,
            parameters=[query_param("window", integer(1, WINDOW_SECONDS)), query_param("step", integer(1, 60))],
            statuses=(400, 500))},
        "/dashboard": {"get": operation("dashboard", "HTML page charting /admin/stats", {
            "200": {"description": "The page; it asks for the admin key itself.", "headers": response_headers(),
                    "content": {"text/html": {"schema": {"type": "string"}}}}}, statuses=(500,))},
    }


def paths():
    """Every path's operations (a fresh dict), in the document's order."""
    return {**_service(), **_catalog(), **_orders(), **_customer_orders(), **_flash_sales(), **_admin()}

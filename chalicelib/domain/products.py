"""Products: the rules for a valid new product, a change and a stock delta, and
the API shape of a product row. Pure: no I/O (the writes are service/catalog.py)."""
from chalicelib.domain import validation as v
from chalicelib.domain.errors import InsufficientStock, ProductNotFound, ValidationError

STATUSES = ("active", "inactive")
MAX_PRICE_CENTS = 10**12
MAX_STOCK = 10**9
BULK_LIMIT = 1000
CREATE_FIELDS = ("sku", "name", "description", "category", "price_cents", "stock", "low_stock_threshold")
PATCH_FIELDS = ("name", "description", "category", "price_cents", "status", "low_stock_threshold", "expected_version")
# A product row as the API shows it (to_api), column by column.
PRODUCT_COLUMNS = ("id, sku, name, description, category, price_cents, stock, low_stock_threshold, version, "
                   "status, created_at, updated_at")


def unsellable(product_id, row, wanted, stock=None):
    """Why `wanted` units of the product (`row`: its status, and stock unless `stock` says
    what is left of it) cannot be sold, or None: the one rule every order writer applies."""
    if row is None or row["status"] != "active":
        return ProductNotFound(f"Product {product_id} does not exist or is not for sale.", product_id=product_id)
    left = row["stock"] if stock is None else stock
    if left < wanted:
        return InsufficientStock(f"Product {product_id} has {left} in stock; {wanted} requested.",
                                 product_id=product_id)
    return None


def iso(ts):
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_api(row):
    product = dict(row)
    product["created_at"] = iso(row["created_at"])
    product["updated_at"] = iso(row["updated_at"])
    return product


def validate_new_product(body, what="product"):
    v.require_object(body, what)
    v.reject_unknown(body, CREATE_FIELDS, what)
    for field in ("sku", "name", "category", "price_cents", "stock"):
        if field not in body:
            raise ValidationError(f"'{field}' is required.", details={"field": field})
    product = {
        "sku": v.string(body["sku"], "sku", 1, 64),
        "name": v.string(body["name"], "name", 1, 255),
        "description": v.string(body.get("description", ""), "description", 0, 10000),
        "category": v.string(body["category"], "category", 1, 64),
        "price_cents": v.integer(body["price_cents"], "price_cents", 0, MAX_PRICE_CENTS),
        "stock": v.integer(body["stock"], "stock", 0, MAX_STOCK),
    }
    if "low_stock_threshold" in body:  # absent: 0, no low-stock alert (stock is never below 0)
        product["low_stock_threshold"] = v.integer(body["low_stock_threshold"], "low_stock_threshold", 0, MAX_STOCK)
    return product


def validate_patch(body):
    v.require_object(body)
    v.reject_unknown(body, PATCH_FIELDS)
    changes = {}
    if "name" in body:
        changes["name"] = v.string(body["name"], "name", 1, 255)
    if "description" in body:
        changes["description"] = v.string(body["description"], "description", 0, 10000)
    if "category" in body:
        changes["category"] = v.string(body["category"], "category", 1, 64)
    if "price_cents" in body:
        changes["price_cents"] = v.integer(body["price_cents"], "price_cents", 0, MAX_PRICE_CENTS)
    if "status" in body:
        changes["status"] = v.choice(body["status"], "status", STATUSES)
    if "low_stock_threshold" in body:
        changes["low_stock_threshold"] = v.integer(body["low_stock_threshold"], "low_stock_threshold", 0, MAX_STOCK)
    if not changes:
        raise ValidationError("Nothing to change: give at least one of name, description, category, price_cents, "
                              "status, low_stock_threshold.")
    expected = body.get("expected_version")
    if expected is not None:
        expected = v.integer(expected, "expected_version", 1)
    return changes, expected


def validate_delta(body):
    v.require_object(body)
    v.reject_unknown(body, ("delta",))
    if "delta" not in body:
        raise ValidationError("'delta' is required.", details={"field": "delta"})
    delta = v.integer(body["delta"], "delta", -MAX_STOCK, MAX_STOCK)
    if delta == 0:
        raise ValidationError("'delta' must not be 0.", details={"field": "delta"})
    return delta

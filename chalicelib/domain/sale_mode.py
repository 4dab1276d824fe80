"""Sale mode's request rules (POST /products/{id}/sale). Pure: no I/O."""
from chalicelib.domain import validation as v
from chalicelib.domain.errors import ValidationError
from chalicelib.domain.products import MAX_STOCK

SALE_FIELDS = ("sale_stock", "per_customer_limit")
MAX_PER_CUSTOMER_LIMIT = 1_000_000


def validate_sale(body):
    """(sale_stock, per_customer_limit or None)."""
    v.require_object(body)
    v.reject_unknown(body, SALE_FIELDS)
    if "sale_stock" not in body:
        raise ValidationError("'sale_stock' is required.", details={"field": "sale_stock"})
    stock = v.integer(body["sale_stock"], "sale_stock", 1, MAX_STOCK)
    limit = body.get("per_customer_limit")
    if limit is not None:
        limit = v.integer(limit, "per_customer_limit", 1, MAX_PER_CUSTOMER_LIMIT)
    return stock, limit

"""Sale mode's rules (POST /products/{id}/sale): the request, what may be
offered, and what MySQL says a sale's customers hold. Pure: no I/O."""
from chalicelib.domain import validation as v
from chalicelib.domain.errors import InsufficientStock, ProductNotFound, ValidationError
from chalicelib.domain.products import MAX_STOCK
from chalicelib.domain.reservations import Settlement, customer_key, owner_key

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


def check_offer(product_id, product, sale_stock):
    """A sale may offer at most the product's stock now; `product`: {stock} or None (unknown)."""
    if product is None:
        raise ProductNotFound(f"Product {product_id} does not exist.", product_id=product_id)
    if product["stock"] < sale_stock:
        raise InsufficientStock(f"Product {product_id} has {product['stock']} in stock; a sale of "
                                f"{sale_stock} cannot be offered.", product_id=product_id)


def holdings(lines):
    """({customer: units held}, [(order id, customer, units) of cancelled or expired orders, whose
    units went back to the sale]) from the sale's order lines as MySQL records them."""
    held, returned = {}, []
    for r in lines:
        customer = customer_key(r["client"], r["customer_id"], r["user_id"])
        if r["status"] == "cancelled":
            returned.append((r["id"], customer, int(r["quantity"])))
            continue
        held[customer] = held.get(customer, 0) + int(r["quantity"])
    return held, returned


def written_reservations(lines, reservation_key):
    """The records of the sale's written orders as their settle left them ("created", the order's id,
    total and request hash), from its order lines as MySQL records them; `reservation_key(owner)`
    names a record. Units are left alone (no lines): the rebuild counts them."""
    return [Settlement(reservation_key(owner_key(r["client"], r["customer_id"], r["user_id"], r["client_order_id"])),
                       r["flash_reservation"], "", customer_key(r["client"], r["customer_id"], r["user_id"]),
                       "created", took=False, give_back=False, order_id=int(r["id"]),
                       total_cents=int(r["total_cents"]), request_hash=r["request_hash"])
            for r in lines if r["flash_reservation"]]

"""Health and catalog routes (docs/api.md: Health, Products)."""
from chalice import Blueprint

from chalicelib import bootstrap
from chalicelib.domain import related
from chalicelib.domain.errors import PayloadTooLarge, ValidationError
from chalicelib.domain.validation import path_id
from chalicelib.entrypoints.http import endpoint, json_body, query_params
from chalicelib.ops.metrics import emit

routes = Blueprint(__name__)


@endpoint(routes, "/health", public=True)
def health(request):
    mysql_up = bootstrap.database().ping()
    # "redis": the cache and the state store both answer.
    redis_up = bootstrap.redis_gateway().ping() and bootstrap.state_gateway().ping()
    checks = {"mysql": "up" if mysql_up else "down", "redis": "up" if redis_up else "down"}
    return 200, {"status": "ok" if mysql_up and redis_up else "degraded", "checks": checks}


@endpoint(routes, "/products", methods=("POST",), admin=True)
def create_product(request):
    return 201, {"product": bootstrap.catalog().create(json_body(request))}


@endpoint(routes, "/products/bulk", methods=("POST",), admin=True)
def create_products_bulk(request):
    body = json_body(request)
    products = body.get("products") if isinstance(body, dict) else None
    if not isinstance(products, list) or not products:
        raise ValidationError("'products' must be a non-empty list.", details={"field": "products"})
    if len(products) > 1000:
        raise PayloadTooLarge("At most 1000 products per bulk request.")
    created = bootstrap.catalog().create_many(products)
    return 201, {"ids": [p["id"] for p in created]}


@endpoint(routes, "/products/{product_id}", methods=("GET",))
def get_product(request, product_id):
    product, cache_state = bootstrap.catalog().get(path_id(product_id, "product_id"))
    emit("ProductCache", 1, result=cache_state)
    return 200, {"product": product}, {"X-Cache": cache_state}


@endpoint(routes, "/products/{product_id}/related")
def related_products(request, product_id):
    product_id = path_id(product_id, "product_id")
    limit = related.limit_param(query_params(request))
    body, cache_state = bootstrap.related_products().related(product_id, limit)
    emit("RelatedCache", 1, result=cache_state)
    return 200, body, {"X-Cache": cache_state}


@endpoint(routes, "/products/{product_id}", methods=("PATCH",), admin=True)
def update_product(request, product_id):
    return 200, {"product": bootstrap.catalog().update(path_id(product_id, "product_id"), json_body(request))}


@endpoint(routes, "/products/{product_id}/stock", methods=("POST",), admin=True)
def adjust_stock(request, product_id):
    return 200, {"product": bootstrap.catalog().adjust_stock(path_id(product_id, "product_id"), json_body(request))}

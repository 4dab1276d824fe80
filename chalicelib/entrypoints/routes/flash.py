"""Flash-sale routes (docs/api.md: Flash sales): sale mode per product (admin)
and the reservations that accepted sale orders are polled by."""
from chalice import Blueprint

from chalicelib import bootstrap
from chalicelib.domain.validation import path_id
from chalicelib.entrypoints.http import endpoint, json_body
from chalicelib.entrypoints.routes.orders import owner

routes = Blueprint(__name__)


@endpoint(routes, "/products/{product_id}/sale", methods=("POST",), admin=True)
def start_sale(request, product_id):
    return 201, {"sale": bootstrap.flash_admin().start(path_id(product_id, "product_id"), json_body(request))}


@endpoint(routes, "/products/{product_id}/sale", methods=("GET",), admin=True)
def get_sale(request, product_id):
    return 200, {"sale": bootstrap.flash_admin().get(path_id(product_id, "product_id"))}


@endpoint(routes, "/products/{product_id}/sale", methods=("DELETE",), admin=True)
def stop_sale(request, product_id):
    return 200, {"sale": bootstrap.flash_admin().stop(path_id(product_id, "product_id"))}


@endpoint(routes, "/reservations/{reservation_id}", methods=("GET",))
def get_reservation(request, reservation_id):
    return 200, {"reservation": bootstrap.flash_sales().reservation(reservation_id, owner())}

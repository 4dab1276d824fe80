"""Order routes (API.md: Orders)."""
from chalice import Blueprint

from .. import bootstrap
from ..http import endpoint, json_body
from ..orders import parse_batch
from ..validation import path_id

routes = Blueprint(__name__)


@endpoint(routes, "/orders/batch", methods=("POST",))
def place_batch(request):
    parsed = parse_batch(json_body(request))
    return 200, bootstrap.orders().place_batch(parsed)


@endpoint(routes, "/orders/{order_id}", methods=("GET",))
def get_order(request, order_id):
    return 200, {"order": bootstrap.orders().get(path_id(order_id, "order_id"))}


@endpoint(routes, "/orders/{order_id}/cancel", methods=("POST",))
def cancel_order(request, order_id):
    return 200, {"order": bootstrap.orders().cancel(path_id(order_id, "order_id"))}

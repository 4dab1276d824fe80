"""Order routes (docs/api.md: Orders)."""
from chalice import Blueprint

from chalicelib import bootstrap
from chalicelib.domain.errors import ValidationError
from chalicelib.domain.orders import parse_batch
from chalicelib.domain.validation import path_id
from chalicelib.entrypoints.http import current_caller, endpoint, json_body, query_params

routes = Blueprint(__name__)


@endpoint(routes, "/orders/batch", methods=("POST",))
def place_batch(request):
    mode = query_params(request).get("mode", "sync")
    if mode not in ("sync", "async"):
        raise ValidationError("'mode' must be 'sync' or 'async'.", details={"field": "mode"})
    body = json_body(request)
    client = current_caller().client
    if mode == "async":
        # Same whole-request validation; the orders go through the order-ingest queue.
        return 202, bootstrap.submit_async_batch(body, client)
    return 200, bootstrap.orders().place_batch(parse_batch(body, client))


def owner():
    """Whose orders the caller may see: its own; an admin caller any."""
    caller = current_caller()
    return None if caller.admin else caller.client


@endpoint(routes, "/orders/{order_id}", methods=("GET",))
def get_order(request, order_id):
    return 200, {"order": bootstrap.orders().get(path_id(order_id, "order_id"), owner())}


@endpoint(routes, "/orders/{order_id}/cancel", methods=("POST",))
def cancel_order(request, order_id):
    return 200, {"order": bootstrap.orders().cancel(path_id(order_id, "order_id"), owner())}

"""Order routes (docs/api.md: Orders)."""
from chalice import Blueprint

from chalicelib import bootstrap
from chalicelib.domain.errors import Forbidden, ValidationError
from chalicelib.domain import validation as v
from chalicelib.domain.order_lifecycle import MAX_PAYMENT_REFERENCE
from chalicelib.domain.orders import Owner, parse_batch
from chalicelib.domain.validation import path_id
from chalicelib.entrypoints.http import current_caller, endpoint, json_body, query_params

routes = Blueprint(__name__)


def trusted_caller():
    """The /orders routes name users in the body: trusted servers only. A key that
    ships in an app (plan not `trusted_server`) goes through /customer/orders."""
    caller = current_caller()
    if not caller.trusted:
        raise Forbidden("This key may not name users; customers order through /customer/orders with their token.")
    return caller


@endpoint(routes, "/orders/batch", methods=("POST",))
def place_batch(request):
    trusted_caller()
    mode = query_params(request).get("mode", "sync")
    if mode not in ("sync", "async"):
        raise ValidationError("'mode' must be 'sync' or 'async'.", details={"field": "mode"})
    body = json_body(request)
    client = current_caller().client
    batch = parse_batch(body, client)  # whole-request errors raise here, in either mode
    if mode == "async":
        return 202, bootstrap.async_batches().submit(body["orders"], client)
    return 200, bootstrap.orders().place_batch(batch)


def owner():
    """Whose orders the caller may see: its own client's; an admin caller any."""
    caller = trusted_caller()
    return None if caller.admin else Owner(client=caller.client)


@endpoint(routes, "/orders/{order_id}", methods=("GET",))
def get_order(request, order_id):
    return 200, {"order": bootstrap.orders().get(path_id(order_id, "order_id"), owner())}


@endpoint(routes, "/orders/{order_id}/cancel", methods=("POST",))
def cancel_order(request, order_id):
    return 200, {"order": bootstrap.orders().cancel(path_id(order_id, "order_id"), owner())}


@endpoint(routes, "/orders/{order_id}/pay", methods=("POST",))
def pay_order(request, order_id):
    """The payment provider's webhook or the shop's backend confirms payment."""
    body = json_body(request)
    v.require_object(body)
    v.reject_unknown(body, ("payment_reference",))
    reference = v.string(body.get("payment_reference"), "payment_reference", 1, MAX_PAYMENT_REFERENCE)
    return 200, {"order": bootstrap.orders().pay(path_id(order_id, "order_id"), reference, owner())}


@endpoint(routes, "/orders/{order_id}/fulfil", methods=("POST",))
def fulfil_order(request, order_id):
    return 200, {"order": bootstrap.orders().fulfil(path_id(order_id, "order_id"), owner())}


@endpoint(routes, "/orders/{order_id}/events", methods=("GET",))
def order_events(request, order_id):
    return 200, {"events": bootstrap.orders().events(path_id(order_id, "order_id"), owner())}

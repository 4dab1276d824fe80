"""Customer routes (docs/api.md: Customers): a customer's own orders, with the
customer from the token (chalicelib/entrypoints/customer_tokens.py) and the client
from the key. A customer sees and cancels only their own orders, whichever
client's app they used (the pool's groups give no more: every order is for admin-plan keys)."""
from chalice import Blueprint

from chalicelib import bootstrap
from chalicelib.domain.errors import ValidationError
from chalicelib.domain.orders import Owner, parse_batch
from chalicelib.domain.validation import path_id
from chalicelib.entrypoints.http import current_caller, current_customer, endpoint, json_body, query_params

routes = Blueprint(__name__)


def _customer():
    """The token's customer (the HTTP layer read it: chalicelib/entrypoints/customer_tokens.py) and their id."""
    customer = current_customer()
    return customer, bootstrap.customer_directory().id_for(customer.issuer, customer.subject)


def _owner():
    _, customer_id = _customer()
    return Owner(customer_id=customer_id)


@endpoint(routes, "/customer/orders/batch", methods=("POST",))
def place_customer_batch(request):
    if query_params(request).get("mode", "sync") != "sync":
        raise ValidationError("Customer batches are sync only: 'mode' must be 'sync'.", details={"field": "mode"})
    customer, customer_id = _customer()
    body = json_body(request)
    orders = parse_batch(body, current_caller().client, customer_id, bootstrap.customer_limits(), customer.email)
    return 200, bootstrap.orders().place_batch(orders)


@endpoint(routes, "/customer/orders/{order_id}", methods=("GET",))
def get_customer_order(request, order_id):
    return 200, {"order": bootstrap.orders().get(path_id(order_id, "order_id"), _owner())}


@endpoint(routes, "/customer/orders/{order_id}/events", methods=("GET",))
def customer_order_events(request, order_id):
    return 200, {"events": bootstrap.orders().events(path_id(order_id, "order_id"), _owner())}


@endpoint(routes, "/customer/orders/{order_id}/cancel", methods=("POST",))
def cancel_customer_order(request, order_id):
    return 200, {"order": bootstrap.orders().cancel(path_id(order_id, "order_id"), _owner())}


@endpoint(routes, "/customer/reservations/{reservation_id}", methods=("GET",))
def get_customer_reservation(request, reservation_id):
    return 200, {"reservation": bootstrap.flash_sales().reservation(reservation_id, _owner())}

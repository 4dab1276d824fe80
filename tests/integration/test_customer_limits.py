"""A signed-in but hostile customer (open sign-up, the app key that ships in
the mobile app) against the real MariaDB, Redis and the local SQS endpoint:
a flash sale's per-customer limit counts the person once, whichever client's
app they order through."""

from chalicelib import bootstrap
from chalicelib.domain.orders import parse_batch
from tests.integration.test_flash_sale import (  # noqa: F401 - fixtures
    consume, flash_queue, on_sale, reconcile, remaining, sqs,
)


def customer(name):
    """A customer as the token's issuer and subject make one (customers.id)."""
    return bootstrap.customer_directory().id_for("https://issuer.example", f"{name}-subject")


def place_as(customer_id, client, *orders):
    """A customer's batch through `client`'s app: [(client_order_id, {product_id: quantity})]."""
    body = {"orders": [{"client_order_id": coid, "items": [{"product_id": pid, "quantity": qty}
                                                          for pid, qty in lines.items()]} for coid, lines in orders]}
    return bootstrap.orders().place_batch(parse_batch(body, client, customer_id))["results"]


def test_a_sale_limit_counts_a_customer_once_whichever_app_they_use(sqs, flash_queue):
    pid = on_sale(stock=10, limit=2)
    ann, bob = customer("ann"), customer("bob")
    assert place_as(ann, "mobile-app", ("a-1", {pid: 2}))[0]["status"] == "pending"
    refused = place_as(ann, "storefront", ("a-2", {pid: 1}))[0]
    assert refused["status"] == "failed" and refused["error"]["code"] == "SALE_LIMIT_EXCEEDED"
    assert place_as(bob, "storefront", ("b-1", {pid: 2}))[0]["status"] == "pending"  # another person
    consume(sqs, flash_queue)
    assert remaining(pid) == 6
    # Written, and rebuilt from MySQL after Redis lost the sale: still one person's units.
    bootstrap.redis_gateway().call(lambda r: r.delete(bootstrap.redis_gateway().key(f"flash:sale:{pid}"),
                                                      bootstrap.redis_gateway().key(f"flash:held:{pid}")))
    bootstrap.flash_gate().lost_since(pid, now_ms=0)
    assert bootstrap.flash_sales().reconcile(pid)["action"] == "rebuilt"
    again = place_as(ann, "partner", ("a-3", {pid: 1}))[0]
    assert again["status"] == "failed" and again["error"]["code"] == "SALE_LIMIT_EXCEEDED"
    reconcile(pid, 10)

"""What one client can learn about or do to another client's orders, against
the real MariaDB: payment references are unique per client (another client's
use of a reference neither shows nor blocks)."""
import pytest

from chalicelib import bootstrap
from chalicelib.domain.errors import PaymentReferenceUsed
from chalicelib.domain.orders import Owner, parse_batch
from tests.conftest import make_product


@pytest.fixture
def window(clean_db):
    """Orders wait for payment, so paying them is a transition."""
    bootstrap.reset(ORDER_PAYMENT_WINDOW_SECONDS="600")
    yield
    bootstrap.reset()


def place(client, product_id, coid, user_id=1):
    result = bootstrap.orders().place_batch(parse_batch({"orders": [
        {"client_order_id": coid, "user_id": user_id, "items": [{"product_id": product_id, "quantity": 1}]}]},
        client))["results"][0]
    assert result["status"] == "created", result
    return result["order_id"]


def test_a_payment_reference_another_client_used_pays_this_clients_order(window):
    orders = bootstrap.orders()
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    storefront, partner, partner_again = place("storefront", pid, "s-1"), place("partner", pid, "p-1"), \
        place("partner", pid, "p-2")
    assert orders.pay(storefront, "psp-1", Owner(client="storefront"))["lifecycle"] == "paid"
    # The partner's webhook with the same provider reference: paid, and nothing says storefront used it.
    paid = orders.pay(partner, "psp-1", Owner(client="partner"))
    assert paid["lifecycle"] == "paid" and paid["payment_reference"] == "psp-1"
    # Within one client a reference still pays one order only.
    with pytest.raises(PaymentReferenceUsed):
        orders.pay(partner_again, "psp-1", Owner(client="partner"))
    assert orders.get(partner_again)["lifecycle"] == "pending_payment"


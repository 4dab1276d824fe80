"""How much stock one customer with a token may take (pure rules). Anyone can
sign up and the mobile app's key is public, so a customer's orders are capped:
a batch holds at most MAX_ORDERS_PER_BATCH orders (more: 413, as a trusted
server's batch past its cap), an order at most `units_per_product` units of one
product once its lines are merged, and the customer holds at most
`unpaid_units` units in orders waiting for payment, across every client's app.
Past a cap that order fails on its own with QUANTITY_LIMIT_EXCEEDED (Saleor
caps a checkout line at 50 units; commercetools caps cart quantities "to
prevent denial of inventory")."""
from dataclasses import dataclass
from typing import Mapping

from chalicelib.domain.errors import QuantityLimitExceeded

MAX_ORDERS_PER_BATCH = 10
DEFAULT_UNITS_PER_PRODUCT = 50
DEFAULT_UNPAID_UNITS = 100


@dataclass(frozen=True)
class CustomerLimits:
    units_per_product: int = DEFAULT_UNITS_PER_PRODUCT
    unpaid_units: int = DEFAULT_UNPAID_UNITS

    def check_lines(self, quantities: Mapping[int, int]):
        """An order's merged lines: each product at most `units_per_product` units."""
        for product_id, quantity in quantities.items():
            if quantity > self.units_per_product:
                raise QuantityLimitExceeded(
                    f"A customer's order may hold at most {self.units_per_product} units of one product; "
                    f"{quantity} of product {product_id} asked for.", product_id=product_id,
                    details={"limit": self.units_per_product, "product_id": product_id})

    def check_unpaid(self, held: int, requested: int):
        """Units the customer's orders waiting for payment hold (`held`) plus this order's."""
        if held + requested > self.unpaid_units:
            raise QuantityLimitExceeded(
                f"A customer may hold at most {self.unpaid_units} units in orders waiting for payment; "
                f"{held} held, {requested} more asked for. Pay or cancel an order first.",
                details={"limit": self.unpaid_units, "held": held, "requested": requested})

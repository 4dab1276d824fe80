-- A customer's order reads the units their orders waiting for payment hold
-- (the unpaid cap, chalicelib/domain/customer_limits.py): the customer's
-- pending orders are one index range, not every order they ever placed.
-- It also serves every lookup by customer_id alone, as the index it replaces.
ALTER TABLE orders
  ADD KEY ix_orders_customer_lifecycle (customer_id, lifecycle),
  DROP INDEX ix_orders_customer;

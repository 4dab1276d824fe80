-- A payment reference is unique within the client that owns the order, not
-- across every client: with one global key a client learnt that another
-- client had used a reference (409 PAYMENT_REFERENCE_USED) and could take a
-- reference first, so the rightful client's payment was refused and its
-- order expired. The same client reusing a reference for another of its
-- orders is still refused.
ALTER TABLE orders
  ADD UNIQUE KEY uq_orders_client_payment_reference (client, payment_reference),
  DROP INDEX uq_orders_payment_reference;

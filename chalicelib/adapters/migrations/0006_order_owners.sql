-- Orders and async batches belong to the API client that placed them
-- (chalicelib/domain/clients.py); an order a customer placed with a Cognito
-- token also records the customer (customers.id, 0 for orders a trusted
-- server placed for its own user_id). Rows from before have no client ('')
-- and are visible to admin callers only. Idempotency is per client and
-- customer: nobody replays or conflicts with another's (user_id, client_order_id).
CREATE TABLE customers (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  -- The token's issuer (the user pool) and subject: a customer's stable identity.
  issuer VARCHAR(191) NOT NULL,
  subject VARCHAR(64) NOT NULL,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  UNIQUE KEY uq_customers_identity (issuer, subject)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE orders
  ADD COLUMN client VARCHAR(64) NOT NULL DEFAULT '' AFTER id,
  ADD COLUMN customer_id BIGINT UNSIGNED NOT NULL DEFAULT 0 AFTER client,
  DROP INDEX uq_orders_user_client,
  ADD UNIQUE KEY uq_orders_owner (client, customer_id, user_id, client_order_id),
  ADD KEY ix_orders_customer (customer_id);

ALTER TABLE batches
  ADD COLUMN client VARCHAR(64) NOT NULL DEFAULT '' AFTER id;

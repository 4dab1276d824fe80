-- Orders and async batches belong to the API client that placed them
-- (chalicelib/domain/clients.py). Rows from before have no client ('') and
-- are visible to admin callers only. Idempotency is per client: two clients
-- never see or replay each other's (user_id, client_order_id).
ALTER TABLE orders
  ADD COLUMN client VARCHAR(64) NOT NULL DEFAULT '' AFTER id,
  DROP INDEX uq_orders_user_client,
  ADD UNIQUE KEY uq_orders_owner (client, user_id, client_order_id);

ALTER TABLE batches
  ADD COLUMN client VARCHAR(64) NOT NULL DEFAULT '' AFTER id;

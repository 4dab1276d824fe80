-- Order lifecycle (docs/api.md, "Order lifecycle"): pending_payment -> paid ->
-- fulfilled, or cancelled / expired. `status` keeps its contract meaning
-- (created | cancelled: whether the order still holds its stock). Orders from
-- before were final at creation: paid, or cancelled.
ALTER TABLE orders
  ADD COLUMN lifecycle VARCHAR(16) NOT NULL DEFAULT 'paid' AFTER status,
  ADD COLUMN expires_at DATETIME(6) NULL,
  ADD COLUMN payment_reference VARCHAR(128) NULL,
  ADD UNIQUE KEY uq_orders_payment_reference (payment_reference),
  ADD KEY ix_orders_expiry (lifecycle, expires_at);

UPDATE orders SET lifecycle = 'cancelled' WHERE status = 'cancelled';

-- The outbox: one row per state change, written in the transaction that makes
-- the change; the relay publishes rows in id order and stamps published_at.
CREATE TABLE order_events (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  event_id CHAR(36) NOT NULL,
  order_id BIGINT UNSIGNED NOT NULL,
  sequence INT NOT NULL,
  type VARCHAR(32) NOT NULL,
  payload TEXT NOT NULL,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  published_at DATETIME(6) NULL,
  UNIQUE KEY uq_order_events_event (event_id),
  UNIQUE KEY uq_order_events_sequence (order_id, sequence),
  KEY ix_order_events_unpublished (published_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

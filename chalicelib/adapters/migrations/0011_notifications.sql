-- Low stock (docs/api.md, "Products"): a product whose stock an order or any
-- other stock write takes from at-or-above `low_stock_threshold` to below it
-- gets a `stock.low` event in that transaction. 0: no alert.
ALTER TABLE products ADD COLUMN low_stock_threshold INT UNSIGNED NOT NULL DEFAULT 0;

-- stock.low is a product's event, not an order's: it has no order (order_id
-- NULL, so it takes no sequence of an order and is not in an order's history)
-- and names its product. The relay publishes it from the same outbox, in id order.
ALTER TABLE order_events
  MODIFY order_id BIGINT UNSIGNED NULL,
  ADD COLUMN product_id BIGINT UNSIGNED NULL;

-- The notification consumer's record of the emails it sent, one row per event:
-- a redelivered event finds its row and sends nothing again.
CREATE TABLE notifications_sent (
  event_id CHAR(36) NOT NULL PRIMARY KEY,
  event_type VARCHAR(32) NOT NULL,
  recipient VARCHAR(254) NULL,        -- NULL: the order had no address, nothing was sent
  ses_message_id VARCHAR(128) NULL,
  sent_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A contact address the order carries (customers without a token, guests).
ALTER TABLE orders ADD COLUMN contact_email VARCHAR(254) NULL;

-- Flash sales (docs/design.md section 10). A product on sale sells through the
-- Redis gate (chalicelib/adapters/flash_gate.py) and the coalescing consumer;
-- this table is the durable record of which products are on sale, so the API
-- can refuse sale orders when Redis is unreachable instead of bypassing the gate.
CREATE TABLE flash_sales (
  product_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  -- A new id per start: units of an old sale's reservations never flow into a new one.
  sale_id CHAR(32) NOT NULL,
  sale_stock BIGINT NOT NULL,
  per_customer_limit INT NULL,
  started_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The reservation an order was written for (NULL: not a flash-sale order). Unique:
-- a redelivered reservation finds its own order instead of writing it twice.
ALTER TABLE orders
  ADD COLUMN flash_reservation CHAR(32) NULL,
  ADD UNIQUE KEY uq_orders_flash_reservation (flash_reservation);

CREATE TABLE orders (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  user_id BIGINT NOT NULL,
  client_order_id VARCHAR(64) NOT NULL,
  -- Hash of the merged order lines: a replay with other lines is an IDEMPOTENCY_CONFLICT.
  request_hash CHAR(64) NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'created',
  total_cents BIGINT NOT NULL,
  batch_id VARCHAR(64) NULL,
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  cancelled_at DATETIME(6) NULL,
  -- Exactly-once effect per (user_id, client_order_id), enforced by the database.
  UNIQUE KEY uq_orders_user_client (user_id, client_order_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE order_items (
  order_id BIGINT UNSIGNED NOT NULL,
  product_id BIGINT UNSIGNED NOT NULL,
  quantity INT NOT NULL,
  unit_price_cents BIGINT NOT NULL,
  PRIMARY KEY (order_id, product_id),
  KEY ix_order_items_product (product_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE batches (
  id VARCHAR(64) NOT NULL PRIMARY KEY,
  order_count INT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'queued',
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE batch_results (
  batch_id VARCHAR(64) NOT NULL,
  position INT NOT NULL,
  result TEXT NOT NULL,
  PRIMARY KEY (batch_id, position)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- "Bought together" (docs/design.md, "Bought together"): co-purchase counts
-- kept by the related-products consumer from order events.
-- Both directions of a pair are stored, so a product's partners are one range
-- of the rank index, best first. `orders` may be briefly negative: a cancel
-- can be applied before the creation it takes back (SQS does not keep order).
CREATE TABLE product_pairs (
  product_id BIGINT UNSIGNED NOT NULL,
  other_id BIGINT UNSIGNED NOT NULL,
  orders INT NOT NULL,
  PRIMARY KEY (product_id, other_id),
  KEY ix_product_pairs_rank (product_id, orders DESC, other_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Events already counted (dedupe under redelivery): written in the transaction
-- that applies the event's counts.
CREATE TABLE related_events (
  event_id VARCHAR(64) NOT NULL PRIMARY KEY,
  processed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;

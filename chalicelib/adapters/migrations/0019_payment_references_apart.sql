-- Payment references in a table of their own, unique per client, written only
-- when an order is paid. As a unique key on orders (migration 0016) every new
-- order put a NULL reference into it, and that one key cut the flash-order
-- consumer's writes to a third (docs/benchmarks.md, bench/flash); placing an
-- order no longer touches it.
CREATE TABLE payment_references (
  client VARCHAR(64) NOT NULL,
  reference VARCHAR(128) NOT NULL,
  order_id BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (client, reference)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT INTO payment_references (client, reference, order_id)
  SELECT client, payment_reference, id FROM orders WHERE payment_reference IS NOT NULL;

ALTER TABLE orders DROP INDEX uq_orders_client_payment_reference;

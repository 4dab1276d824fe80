-- What search filters and sorts on, one compact row per product, so that
-- counting, filtering, sorting and paging the matches of a query never touch
-- the wide `products` rows (at 1M products they miss the buffer pool: about
-- 0.1 ms per candidate). `products` is read only for the page (<= limit rows)
-- and, with in_stock=true, for the stock of the candidates that pass every
-- other condition: stock is deliberately NOT copied here, because orders and
-- POST /stock change it with plain UPDATEs that do not reindex.
--
-- Maintained by chalicelib/search.py index() in the same transaction as every
-- product create/update (the only writers of status, category, price_cents).
--   active:   status = 'active'
--   category: same collation as products.category, so the filter compares
--             exactly as it did against products.
CREATE TABLE search_meta (
  product_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  active TINYINT NOT NULL,
  category VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL,
  price_cents BIGINT NOT NULL,
  created_at DATETIME(6) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Backfill for databases that already hold products.
INSERT INTO search_meta (product_id, active, category, price_cents, created_at)
  SELECT id, IF(status = 'active', 1, 0), category, price_cents, created_at FROM products

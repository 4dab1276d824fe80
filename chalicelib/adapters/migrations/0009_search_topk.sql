-- Top-k plans for broad searches. Every posting carries a
-- copy of its product's search_meta values (kept by search_index.index() in
-- the product transaction), so one term's postings can be walked in the order
-- a page is sorted in and the walk stops after limit+1 matches, with the
-- filters checked on the index entry itself: no plan materialises or sorts
-- all matches of a common word. Counting reads the primary-key range (term,
-- product_id), whose rows now carry the filters too, and stops at the cap.
--   ix_search_terms_name:       relevance, name hits first (in_name = 1), then id
--   ix_search_terms_price:      price_asc
--   ix_search_terms_price_desc: price_desc (price descending, id ascending)
--   ix_search_terms_created:    newest, read backwards (created_at, id descending)
--   ix_search_terms_category:   counting the matches in one category
-- The trailing columns after product_id do not change the order: they are
-- there so the filters are checked without reading the clustered row.
ALTER TABLE search_terms
  ADD COLUMN active TINYINT NOT NULL DEFAULT 0,
  ADD COLUMN category VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT '',
  ADD COLUMN price_cents BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN created_at DATETIME(6) NOT NULL DEFAULT '1970-01-01 00:00:00';

UPDATE search_terms t JOIN search_meta m ON m.product_id = t.product_id
  SET t.active = m.active, t.category = m.category, t.price_cents = m.price_cents, t.created_at = m.created_at;

ALTER TABLE search_terms
  ADD KEY ix_search_terms_name (term, in_name, product_id, active, category, price_cents),
  ADD KEY ix_search_terms_price (term, price_cents, product_id, active, category),
  ADD KEY ix_search_terms_price_desc (term, price_cents DESC, product_id, active, category),
  ADD KEY ix_search_terms_created (term, created_at, product_id, active, category, price_cents),
  ADD KEY ix_search_terms_category (term, category, product_id, active);

-- No (id, stock) index for in_stock probes: MariaDB then picks it for the
-- order path's `UPDATE products ... WHERE id = ? AND stock >= ?` (a range on
-- the index it updates, "Using buffer"), which takes the secondary lock before
-- the row's and deadlocks concurrent orders on a hot product (bench/flash's
-- bare-SQL ceiling did). The probe reads the product row by primary key.

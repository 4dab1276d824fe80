-- Product search term index (chalicelib/search.py), maintained in the same
-- transaction as every product write.
--   Latin-script words: one row per distinct lower-cased word (NFKC + casefold);
--     queries match words by prefix with a range scan on the primary key.
--   CJK runs: one row per character (unigram) and per adjacent pair (bigram);
--     longer query runs intersect their bigrams and are then verified exactly
--     against search_docs.
-- utf8mb4_bin: terms are already normalised, and a *_ci collation would fold
-- distinct terms together (and make 'ß' collide with 'ss' in the primary key).
CREATE TABLE search_terms (
  term VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  product_id BIGINT UNSIGNED NOT NULL,
  in_name TINYINT NOT NULL DEFAULT 0,
  PRIMARY KEY (term, product_id),
  KEY ix_search_terms_product (product_id, term, in_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The normalised text, used only to verify CJK substrings longer than two
-- characters on the few candidates the bigrams leave.
CREATE TABLE search_docs (
  product_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  name_norm TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  body_norm MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Browsing by filters (empty q) sorted by price or recency without a table scan.
CREATE INDEX ix_products_status_price ON products (status, price_cents);
CREATE INDEX ix_products_status_created ON products (status, created_at)

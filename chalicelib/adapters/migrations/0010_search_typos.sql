-- Typo dictionary (typo-tolerant search): one row per deletion variant of each
-- distinct indexed Latin word of 4..24 letters (SymSpell), keyed by the
-- variant. A query word looks up its own deletion variants here (a few dozen
-- primary-key reads), and the words found within its edit budget become
-- extra whole-word lookups in search_terms. Per distinct word, not per
-- product: a word already here costs a product write one indexed read.
-- The word itself is its own variant (variant = term), which also says the
-- word is in the dictionary. Words that leave the catalog stay: a word
-- without postings matches nothing, so it costs a lookup, never a wrong hit.
-- Pinyin needs no table: its terms ('py:...', 'pi:...') live in search_terms.
-- Products indexed before this migration get pinyin and typo entries when
-- they are next re-indexed (scripts/reindex_search.py does them all).
CREATE TABLE search_typos (
  variant VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  term VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  PRIMARY KEY (variant, term)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin

-- in_stock=true on the index entry (the search filter): search_meta.active and the
-- copy on every posting become the listing state (search_sql.listing):
--   0  not for sale (status is not 'active')
--   1  for sale, in stock (what "active" meant so far: most rows keep it)
--   2  for sale, sold out (stock 0)
-- A broad in-stock search then filters on the posting like category or price,
-- instead of reading each candidate's products row. The unit of work moves a
-- product between 1 and 2 when a transaction takes its stock to zero or back
-- (ProductTransaction.finish); any other change re-indexes it as before.
-- The indexes stay as they are: `active` is already in each of them. Only
-- the postings of sold-out products are rewritten here.
UPDATE search_meta m JOIN products p ON p.id = m.product_id
  SET m.active = 2 WHERE m.active = 1 AND p.stock <= 0;

UPDATE search_terms t JOIN search_meta m ON m.product_id = t.product_id
  SET t.active = 2 WHERE m.active = 2 AND t.active = 1;

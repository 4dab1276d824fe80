-- The API keeps stock within 0..10^9 (docs/api.md), but a cancel always gives
-- its stock back, also past that bound; BIGINT leaves it room (an INT
-- overflowed at 2,147,483,647 and the cancel failed with a 500).
ALTER TABLE products MODIFY stock BIGINT NOT NULL;

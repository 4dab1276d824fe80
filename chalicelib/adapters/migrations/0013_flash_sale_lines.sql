-- The sale each flash-sale order line was sold in (NULL: an ordinary line). A
-- cancelled or expired sale order gives its units back to that sale if it still
-- runs (never to a later sale of the product), and reconcile counts a sale's
-- units and customers by it instead of by dates.
ALTER TABLE order_items
  ADD COLUMN flash_sale_id CHAR(32) NULL;

-- Lines of running sales written before this column: a sale order written after its sale started.
UPDATE order_items i
  JOIN orders o ON o.id = i.order_id
  JOIN flash_sales s ON s.product_id = i.product_id
  SET i.flash_sale_id = s.sale_id
  WHERE o.flash_reservation IS NOT NULL AND o.created_at >= s.started_at;

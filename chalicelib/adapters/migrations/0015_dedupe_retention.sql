-- The consumers' dedupe records (related_events, notifications_sent) grew by
-- one row per order event forever. The lifecycle function now deletes those
-- older than the time any copy of an event can still arrive
-- (service/expiry_and_outbox.py, DEDUPE_RETENTION_DAYS), oldest first: these indexes
-- make that a range read, not a scan of the whole table each minute.
ALTER TABLE related_events ADD KEY ix_related_events_processed (processed_at);
ALTER TABLE notifications_sent ADD KEY ix_notifications_sent_at (sent_at);

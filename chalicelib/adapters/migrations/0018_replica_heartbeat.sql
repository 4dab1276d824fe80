-- How far behind the writer a reader (a binlog replica, an Aurora reader) is:
-- the writer's event scheduler stamps this row every second (epoch ms of the
-- writer's clock) and replication carries the stamp, so on a reader "now minus
-- the stamp it has" is its lag, within the one-second stamp interval
-- (chalicelib/adapters/readers.py). Without the scheduler (event_scheduler=OFF)
-- the stamp stands still and readers are never used.
CREATE TABLE IF NOT EXISTS replica_heartbeat (
  id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
  beat_ms BIGINT NOT NULL
);
INSERT IGNORE INTO replica_heartbeat (id, beat_ms) VALUES (1, FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000));
CREATE EVENT IF NOT EXISTS replica_heartbeat ON SCHEDULE EVERY 1 SECOND
  DO UPDATE replica_heartbeat SET beat_ms = FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000) WHERE id = 1;

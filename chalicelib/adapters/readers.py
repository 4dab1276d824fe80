"""MySQL readers (a binlog replica, an Aurora reader behind RDS Proxy's
read-only endpoint): which database a read that may lag a little goes to.

A reader is used while it answers and its lag is within `max_lag_ms`; else the
read goes to the writer and `ReaderFallback` (reason `down` or `lag`) counts
it. The lag is measured by the heartbeat row (migration 0018) the writer
stamps every second: the reader's clock minus the stamp it has replicated,
read at most every `check_seconds` per process (`ReaderLag`, milliseconds).

What a caller may cache from a reader is its own business: the product cache's
version fence refuses an old copy (service/catalog.py), and a search page is
cached only when `covers()` shows the snapshot it was read from had every
write before its search generation was made (service/search.py)."""
import logging
import threading
import time

import pymysql

from chalicelib.domain.errors import ServiceUnavailable, StatementTimeout

log = logging.getLogger(__name__)

HEARTBEAT_SQL = ("SELECT beat_ms, FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000) AS now_ms "
                 "FROM replica_heartbeat WHERE id = 1")


class StampedReader:
    """The reader's Database whose every transaction reads the heartbeat first. Under
    REPEATABLE READ the snapshot is taken at that first read, so all the transaction reads
    holds at least the stamp's writes, whichever reader behind an endpoint (or a proxy's
    multiplexed connection) served it. `stamp()`: this thread's last transaction's stamp."""

    def __init__(self, db):
        self.db = db
        self._local = threading.local()

    def run(self, work, **options):
        self._local.stamp = None

        def stamped(cur):
            cur.execute("SELECT beat_ms FROM replica_heartbeat WHERE id = 1")
            row = cur.fetchone()
            self._local.stamp = int(row["beat_ms"]) if row else None
            return work(cur)

        return self.db.run(stamped, **options)

    def stamp(self):
        return getattr(self._local, "stamp", None)

    def __getattr__(self, name):
        return getattr(self.db, name)


class Readers:
    def __init__(self, writer, reader=None, max_lag_ms=2500, clock_skew_ms=100, check_seconds=0.5,
                 monotonic=time.monotonic, metrics=None):
        self.writer = writer
        self.reader = reader
        self.stamped = StampedReader(reader) if reader is not None else None
        self.max_lag_ms = max_lag_ms
        # How far the app's clock (a search generation's birth) and the writer's (the stamp) may differ.
        self.clock_skew_ms = clock_skew_ms
        self.check_seconds = check_seconds
        self.monotonic = monotonic
        self.emit = metrics or (lambda *args, **dimensions: None)   # ops.metrics.emit, from bootstrap
        self._lock = threading.Lock()
        self._checked_at = None
        self.lag_ms = None      # None: not measured, or the reader did not answer
        self.down = False

    def _check(self):
        """Read the reader's heartbeat unless it was read within check_seconds."""
        now = self.monotonic()
        with self._lock:
            if self._checked_at is not None and now - self._checked_at < self.check_seconds:
                return
            self._checked_at = now
        try:
            rows = self.reader.query(HEARTBEAT_SQL)
        except (ServiceUnavailable, pymysql.err.MySQLError) as exc:
            # A reader without the heartbeat table (not migrated, another database) is as good as down.
            log.warning("mysql reader unavailable: %s", exc)
            self.down, self.lag_ms = True, None
            return
        self.down = False
        if not rows:
            self.lag_ms = None
            return
        self.lag_ms = max(0, int(rows[0]["now_ms"]) - int(rows[0]["beat_ms"]))
        self.emit("ReaderLag", self.lag_ms, unit="Milliseconds")

    def status(self):
        """{"configured", "up", "lag_ms", "max_lag_ms"} as of the last check (the ops view)."""
        if self.reader is None:
            return {"configured": False}
        self._check()
        return {"configured": True, "up": not self.down, "lag_ms": self.lag_ms, "max_lag_ms": self.max_lag_ms}

    def choose(self):
        """The reader if it answers and is close enough behind, else the writer."""
        if self.reader is None:
            return self.writer
        self._check()
        if self.down:
            self.emit("ReaderFallback", 1, reason="down")
            return self.writer
        if self.lag_ms is None or self.lag_ms > self.max_lag_ms:
            self.emit("ReaderFallback", 1, reason="lag")
            return self.writer
        return self.reader

    def covers(self, since_ms):
        """True when the snapshot of this thread's last `stamped` transaction holds every write the
        writer committed before `since_ms` (epoch ms, the app's clock): its heartbeat stamp is
        later, by more than the two clocks may differ."""
        stamp = self.stamped.stamp() if self.stamped is not None else None
        return stamp is not None and since_ms is not None and stamp >= since_ms + self.clock_skew_ms

    def failed(self, exc):
        """A read on the reader lost its connection: the next reads go to the writer until a check sees it up."""
        log.warning("mysql reader failed, reading from the writer: %s", exc)
        self.down = True
        self.emit("ReaderFallback", 1, reason="down")

    def read(self, fn):
        """(fn(db), on_reader) with `db` the chosen database; a read the reader fails runs on the writer.
        A statement the server stopped at its time limit is not retried: it would cost the writer as much."""
        db = self.choose()
        if db is self.writer:
            return fn(self.writer), False
        try:
            return fn(db), True
        except StatementTimeout:
            raise
        except ServiceUnavailable as exc:
            self.failed(exc)
            return fn(self.writer), False

    def query(self, sql, args=None):
        """(rows, on_reader) of one read (see `read`)."""
        return self.read(lambda db: db.query(sql, args))


class RoutedReads:
    """A read port (ProductReads, PairCounts) whose every call runs on the reader while
    `Readers.choose()` takes it, else on the writer: `make(db)` builds the port over a database.
    `answered()`: whether this thread's last call was served by the reader."""

    def __init__(self, readers, make):
        self.readers = readers
        self._make = make
        self._local = threading.local()

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            result, self._local.on_reader = self.readers.read(lambda db: getattr(self._make(db), name)(*args, **kwargs))
            return result

        return call

    def answered(self):
        return getattr(self._local, "on_reader", False)

    def fell_back(self, reason):
        """A caller refused what the reader gave (`stale`) and read the writer."""
        self.readers.emit("ReaderFallback", 1, reason=reason)

"""MySQL access: a small pool of lazily created connections (reused across
warm Lambda invocations and across the threads of the local server), whose
size bounds the transactions in flight the way RDS Proxy does for a fleet; a
circuit breaker; bounded retries of deadlocks and lock-wait timeouts."""
import logging
import queue
import random
import re
import time
from contextlib import contextmanager

import pymysql
import pymysql.cursors

from chalicelib.domain.in_flight import InFlightLimit
from chalicelib.adapters.breaker import CircuitBreaker, CircuitOpen
from chalicelib.adapters.tls import client_context
from chalicelib.domain.errors import ConcurrencyExhausted, DuplicateKey, ServiceUnavailable, StatementTimeout

log = logging.getLogger(__name__)


def placeholders(n):
    """`%s,%s,...`: the parameter marks of an IN list or a row of `n` values."""
    return ",".join(["%s"] * n)


DEADLOCK = 1213
LOCK_WAIT_TIMEOUT = 1205
RETRYABLE_ERRNOS = frozenset({DEADLOCK, LOCK_WAIT_TIMEOUT})
# The server is unreachable or the connection died (restart, kill, idle cut).
# 1040 (too many connections) is transient in the same way.
CONNECTION_ERRNOS = frozenset({0, 1040, 1053, 1927, 2003, 2006, 2013, 2014, 2055, 4031})
DUPLICATE_KEY = 1062
# The server stopped a statement at its time limit: MariaDB max_statement_time,
# MySQL MAX_EXECUTION_TIME. The connection stays healthy.
STATEMENT_TIMEOUT_ERRNOS = frozenset({1969, 3024})
_SELECT = re.compile(r"^\s*SELECT\b", re.IGNORECASE)

# A statement that changes product rows (see adapters/product_writes.py).
_PRODUCT_WRITE = re.compile(
    r"^\s*(?:(?:INSERT|REPLACE)(?:\s+(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE))*(?:\s+INTO)?"
    r"|UPDATE(?:\s+(?:LOW_PRIORITY|IGNORE))*|DELETE(?:\s+(?:LOW_PRIORITY|QUICK|IGNORE))*\s+FROM|TRUNCATE(?:\s+TABLE)?)"
    r"\s+(?:`?\w+`?\.)?`?products`?(?![\w`])", re.IGNORECASE)


class DuplicateKeyError(DuplicateKey, pymysql.err.IntegrityError):
    """The domain's DuplicateKey, still the driver's IntegrityError (errno first) for
    adapter code that tells errors apart by the driver's number."""


class ProductWriteOutsideUnitOfWork(RuntimeError):
    """A statement tried to change `products` without going through product_writes.ProductTransaction."""


def server_flavor(conn):
    """'mariadb' or 'mysql', from the handshake (no query), once per connection."""
    flavor = getattr(conn, "shop_flavor", None)
    if flavor is None:
        flavor = conn.shop_flavor = "mariadb" if "mariadb" in (conn.get_server_info() or "").lower() else "mysql"
    return flavor


def time_limited(sql, flavor, ms):
    """`sql` (a SELECT) with a server-side time limit of `ms` milliseconds."""
    if not _SELECT.match(sql):
        raise ValueError("only a SELECT can run under a time limit: " + sql[:80])
    if flavor == "mariadb":
        return f"SET STATEMENT max_statement_time={ms / 1000:.3f} FOR {sql}"
    return _SELECT.sub(f"SELECT /*+ MAX_EXECUTION_TIME({ms}) */", sql, count=1)


class Cursor(pymysql.cursors.DictCursor):
    """The cursor of every transaction and query: product rows change only
    through a ProductTransaction, which keeps versions, the search index and
    the caches in step (executemany of an INSERT ends in execute, so it is covered);
    a duplicate key raises the domain's DuplicateKey.

    With a `deadline` (Database.run(time_limit_ms=...)) every statement runs
    under a server-side time limit of what is left of it, so the server stops
    a costly statement instead of the client giving up while it runs on."""

    products_writable = False
    deadline = None          # time.monotonic() value
    time_limit_ms = None

    def _mogrify(self, query, args):
        # Most parameters are ints and NULLs (ids, quantities, prices): rendered here, without the
        # driver's per-value dispatch (a batch's 50-row orders INSERT binds in 2.0 us a row instead
        # of 4.8). Everything else, strings above all, is rendered by the driver. pymysql's execute
        # and executemany bind through this method (requirements.txt pins the driver; a test
        # compares the output).
        if not isinstance(args, (list, tuple)):
            return super()._mogrify(query, args)
        escape = self.connection.escape
        try:
            return query % tuple(str(a) if type(a) is int else "NULL" if a is None else escape(a) for a in args)
        except TypeError as exc:
            raise pymysql.err.ProgrammingError(str(exc)) from None

    def execute(self, query, args=None):
        # executemany hands its multi-row INSERT back here as bytes
        head = query if isinstance(query, str) else query[:128].decode("utf-8", "replace")
        if not self.products_writable and _PRODUCT_WRITE.match(head):
            raise ProductWriteOutsideUnitOfWork(
                "products is written only through product_writes.ProductTransaction: " + head[:120])
        try:
            if self.deadline is None:
                return super().execute(query, args)
            left_ms = int((self.deadline - time.monotonic()) * 1000)
            if left_ms < 1:
                raise StatementTimeout(self.time_limit_ms)
            return super().execute(time_limited(query, server_flavor(self.connection), left_ms), args)
        except pymysql.err.OperationalError as exc:
            if self.deadline is not None and exc.args and exc.args[0] in STATEMENT_TIMEOUT_ERRNOS:
                raise StatementTimeout(self.time_limit_ms) from exc
            raise
        except pymysql.err.IntegrityError as exc:
            # The one place a duplicate key is recognised: callers catch DuplicateKey.
            if exc.args and exc.args[0] == DUPLICATE_KEY:
                raise DuplicateKeyError(*exc.args) from exc
            raise


def is_connection_error(exc):
    if isinstance(exc, (pymysql.err.InterfaceError, ConnectionError, OSError)):
        return True
    return isinstance(exc, pymysql.err.OperationalError) and exc.args and exc.args[0] in CONNECTION_ERRNOS


def is_retryable(exc):
    return isinstance(exc, pymysql.err.MySQLError) and bool(exc.args) and exc.args[0] in RETRYABLE_ERRNOS


class Database:
    def __init__(self, target, connect_timeout=2.0, read_timeout=10.0, max_in_flight=16, name="mysql"):
        self.target = target
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.breaker = CircuitBreaker(name, failure_threshold=2, reset_after=1.0)
        self._slots = InFlightLimit(max_in_flight)
        self._idle = queue.LifoQueue()

    def connect(self, database=True):
        conn = self._open(database)
        # pymysql reads the handshake under read_timeout: a server that accepts
        # but never answers (partition, a proxy in front of a dead database)
        # would cost the full read timeout per connect. Connect under the short
        # connect timeout, then give queries their read/write timeouts.
        conn._read_timeout = conn._write_timeout = self.read_timeout
        return conn

    def _open(self, database):
        return pymysql.connect(
            host=self.target.host,
            port=self.target.port,
            user=self.target.user,
            password=self.target.password,
            database=self.target.database if database else None,
            charset="utf8mb4",
            autocommit=True,
            connect_timeout=self.connect_timeout,
            read_timeout=self.connect_timeout,
            write_timeout=self.connect_timeout,
            cursorclass=Cursor,
            ssl=client_context(self.target.ca_file) if self.target.tls else None,
        )

    def close(self):
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            _close_quietly(conn)

    def _checkout(self, begin):
        """A healthy pooled connection, optionally inside BEGIN.

        An idle connection found dead (server restart, frozen container, idle
        connections reaped) says nothing about the server now: it is closed
        with all its idle siblings (they almost always died together; trying
        them one by one would fail one request per dead connection) and a
        fresh connection is made. Only a failed fresh connect counts against
        the breaker. Nothing has run on the connection yet, so this is safe."""
        try:
            self.breaker.before_call()
        except CircuitOpen:
            raise ServiceUnavailable("The database is unavailable; retry shortly.") from None
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = None
        if conn is not None:
            try:
                if begin:
                    conn.begin()
                self.breaker.record_success()
                return conn
            except Exception as exc:
                _close_quietly(conn)
                if not is_connection_error(exc):
                    self.breaker.record_success()  # the server answered
                    raise
                log.info("dropping dead pooled mysql connections: %s", exc)
                self.close()
        conn = None
        try:
            conn = self.connect()
            if begin:
                conn.begin()
        except Exception as exc:
            if conn is not None:
                _close_quietly(conn)
            if not is_connection_error(exc):
                # The server answered (bad credentials, unknown database): it is
                # up. Report it, or a half-open probe would never finish.
                self.breaker.record_success()
                raise
            self.breaker.record_failure()
            log.warning("mysql unavailable: %s", exc)
            raise ServiceUnavailable("The database is unavailable; retry shortly.") from exc
        self.breaker.record_success()
        return conn

    @contextmanager
    def connection(self, begin=False):
        """A pooled connection for the duration of the block; a connection that
        failed is closed, a healthy one goes back to the pool."""
        with self._slots:
            conn = self._checkout(begin)
            healthy = True
            try:
                yield conn
            except BaseException as exc:
                healthy = self._recover(conn, exc)
                raise
            finally:
                if healthy:
                    self._idle.put(conn)
                else:
                    _close_quietly(conn)

    def _recover(self, conn, exc):
        """Roll back after a failure; False if the connection must be dropped."""
        if is_connection_error(exc):
            self.breaker.record_failure()
            self.close()  # the idle ones most likely died with it (restart, cut)
            return False
        try:
            conn.rollback()
            return True
        except Exception:
            return False

    @contextmanager
    def transaction(self, deadline=None, time_limit_ms=None):
        """One transaction, committed at the end of the block, rolled back on
        any error. With a deadline, every statement runs under a server-side
        time limit (see Cursor)."""
        with self.connection(begin=True) as conn:
            with conn.cursor() as cur:
                cur.deadline, cur.time_limit_ms = deadline, time_limit_ms
                yield cur
            conn.commit()

    def run(self, work, attempts=6, time_limit_ms=None):
        """Run `work(cursor)` in a transaction, retrying deadlocks and lock-wait
        timeouts with jittered backoff; a cut connection becomes a 503. With
        `time_limit_ms`, all of `work`'s statements together get that long on
        the server (StatementTimeout, a 503 that leaves the breaker and the
        connection alone, when they take longer)."""
        deadline = time.monotonic() + time_limit_ms / 1000 if time_limit_ms else None
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction(deadline, time_limit_ms) as cur:
                    return work(cur)
            except pymysql.err.MySQLError as exc:
                if is_retryable(exc):
                    if attempt == attempts:
                        raise ConcurrencyExhausted("Too much contention; retry shortly.") from exc
                    time.sleep(random.uniform(0, 0.005 * 2 ** attempt))
                    continue
                if is_connection_error(exc):
                    raise ServiceUnavailable("The database connection was lost; retry shortly.") from exc
                raise

    def query(self, sql, args=None):
        """Autocommit read (reads only) outside any transaction. A read on a pooled
        connection that turns out dead is repeated once on a fresh one."""
        for attempt in (1, 2):
            try:
                with self.connection() as conn:
                    with conn.cursor() as cur:
                        cur.execute(sql, args)
                        return cur.fetchall()
            except pymysql.err.MySQLError as exc:
                if not is_connection_error(exc):
                    raise
                if attempt == 2:
                    raise ServiceUnavailable("The database connection was lost; retry shortly.") from exc

    def ping(self):
        try:
            self.query("SELECT 1")
            return True
        except ServiceUnavailable:
            return False


def _close_quietly(conn):
    try:
        conn.close()
    except Exception:
        pass

"""Broken MySQL connections: idle connections cut (server restart, a Lambda
container frozen then thawed), a connection killed mid-transaction, the reply
to COMMIT lost. Nothing partial, nothing lost, and the client gets a correct
result or a retryable 503, never a wrong answer."""
import time

import pymysql
import pytest

from chalicelib import bootstrap
from chalicelib.adapters.breaker import CircuitBreaker, CircuitOpen
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.orders import parse_batch
from tests.faults.conftest import seed_products


def kill_connections(port, database):
    """`KILL` every client connection to `database` on the server at `port`
    (what an operator or a failover does to sessions mid-transaction)."""
    conn = pymysql.connect(host="127.0.0.1", port=port, user="root", password="", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
                        (database,))
            for (pid,) in cur.fetchall():
                try:
                    cur.execute(f"KILL {int(pid)}")
                except pymysql.err.MySQLError:
                    pass  # already gone
    finally:
        conn.close()


def _order(coid, pid, qty=1, user=1):
    return {"client_order_id": coid, "user_id": user, "items": [{"product_id": pid, "quantity": qty}]}


def _place(order):
    return bootstrap.orders().place_batch(parse_batch({"orders": [order]}))["results"][0]


def _stock(pid):
    return bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (pid,))[0]["stock"]


def _orders_named(coid):
    return bootstrap.database().query("SELECT id FROM orders WHERE client_order_id = %s", (coid,))


def _warm_pool(n):
    """Put n live connections in the pool, as a warm Lambda/local server has."""
    db = bootstrap.database()
    conns = [db.connect() for _ in range(n)]
    for conn in conns:
        db._idle.put(conn)


def test_idle_connections_cut_are_replaced_without_a_single_503(stack):
    """Frozen-then-thawed container / NAT idle reap: every pooled connection is
    dead, the next requests notice and reconnect instead of failing."""
    pid = next(iter(seed_products(1, stock=100)))
    _warm_pool(8)
    stack.mysql_proxy.cut()  # every idle connection is now dead
    for i in range(12):
        assert _place(_order(f"thaw-{i}", pid))["status"] == "created"
    assert _stock(pid) == 100 - 12
    assert bootstrap.database().breaker.state == "closed"


def test_server_restart_reconnects(stack):
    """A real mariadbd restart (SIGKILL + crash recovery): the pool's connections
    die with it; once it is back, requests reconnect on their own."""
    pid = next(iter(seed_products(1, stock=50)))
    _warm_pool(4)
    assert _place(_order("before", pid))["status"] == "created"
    stack.mariadb.kill()
    with pytest.raises(ServiceUnavailable):
        _place(_order("during", pid))
    stack.mariadb.start()
    deadline = time.monotonic() + 5
    while True:  # the breaker lets a probe through within reset_after
        try:
            result = _place(_order("during", pid))
            break
        except ServiceUnavailable:
            assert time.monotonic() < deadline, "no automatic recovery after the restart"
            time.sleep(0.05)
    assert result["status"] == "created"
    assert _stock(pid) == 48
    assert len(_orders_named("during")) == 1


def _hook_reserve(monkeypatch, hook):
    strategy = bootstrap.inventory_strategy()
    real = strategy.reserve

    def reserve(tx, quantities):
        prices = real(tx, quantities)
        hook(tx.cursor)
        return prices

    monkeypatch.setattr(strategy, "reserve", reserve)


def test_connection_killed_mid_transaction_leaves_nothing(stack, monkeypatch):
    """`KILL <id>` on the server after stock was reserved but before the order
    lines and the commit: the order must vanish entirely, stock untouched, 503."""
    pid = next(iter(seed_products(1, stock=10)))
    armed = {"on": True}

    def kill_self(cur):
        if armed.pop("on", False):
            thread_id = cur.connection.thread_id()
            stack.mariadb.execute(f"KILL {int(thread_id)}")

    _hook_reserve(monkeypatch, kill_self)
    with pytest.raises(ServiceUnavailable):
        _place(_order("killed", pid, qty=3))
    assert _stock(pid) == 10
    assert len(_orders_named("killed")) == 0
    # the client's retry goes through on a fresh connection
    result = _place(_order("killed", pid, qty=3))
    assert result["status"] == "created" and result["duplicate"] is False
    assert _stock(pid) == 7


def test_proxy_cut_mid_transaction_leaves_nothing(stack, monkeypatch):
    pid = next(iter(seed_products(1, stock=10)))
    armed = {"on": True}

    def cut(cur):
        if armed.pop("on", False):
            stack.mysql_proxy.cut()

    _hook_reserve(monkeypatch, cut)
    with pytest.raises(ServiceUnavailable):
        _place(_order("cut", pid, qty=2))
    assert _stock(pid) == 10 and len(_orders_named("cut")) == 0
    assert _place(_order("cut", pid, qty=2))["status"] == "created"
    assert _stock(pid) == 8


@pytest.mark.parametrize("committed", [True, False], ids=["reply-lost", "commit-never-arrived"])
def test_connection_lost_during_commit_is_resolved_by_the_retry(stack, monkeypatch, committed):
    """The ambiguous case: the connection dies while COMMIT is in flight. The
    client cannot know whether the order exists; it gets a 503, and its retry
    with the same client_order_id returns the committed order (duplicate: true)
    or creates it now, reserving stock exactly once either way."""
    pid = next(iter(seed_products(1, stock=10)))
    real_commit = pymysql.connections.Connection.commit
    armed = {"on": True}

    def commit(conn):
        if not armed.pop("on", False):
            return real_commit(conn)
        if committed:
            real_commit(conn)  # the server committed ...
            stack.mysql_proxy.cut()  # ... and the reply never arrives
            raise pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
        stack.mysql_proxy.cut()  # the connection dies before COMMIT reaches the server
        return real_commit(conn)

    monkeypatch.setattr(pymysql.connections.Connection, "commit", commit)
    with pytest.raises(ServiceUnavailable) as info:
        _place(_order("ambiguous", pid, qty=4))
    assert info.value.retry_after >= 1
    retry = _place(_order("ambiguous", pid, qty=4))
    assert retry["status"] == "created"
    assert retry["duplicate"] is committed
    rows = _orders_named("ambiguous")
    assert len(rows) == 1 and rows[0]["id"] == retry["order_id"]
    assert _stock(pid) == 6
    again = _place(_order("ambiguous", pid, qty=4))
    assert again["duplicate"] is True and again["order_id"] == retry["order_id"] and _stock(pid) == 6


def test_killing_every_session_under_load_reconciles(stack):
    """KILL every app session on the server repeatedly while buyers run."""
    from tests.faults.harness import OrderLoad, reconcile

    initial = seed_products(6, stock=150)
    load = OrderLoad(initial, threads=6, prefix="kill").start()
    try:
        for _ in range(8):
            time.sleep(0.12)
            kill_connections(stack.mariadb.port, "shop_faults")
    finally:
        time.sleep(0.3)
        load.stop()
    load.drain()
    report = reconcile(load, initial)
    assert report["problems"] == [], report
    assert report["created"] > 0


def test_breaker_probe_that_never_reports_does_not_wedge_the_breaker():
    """A half-open probe that ends in an unexpected exception (neither success
    nor failure recorded) must not keep the circuit open forever."""
    now = [0.0]
    breaker = CircuitBreaker("x", failure_threshold=1, reset_after=1.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 1.5
    breaker.before_call()  # the probe goes out ... and its caller dies without reporting
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # while it may still be running, others fail fast
    now[0] = 3.0
    breaker.before_call()  # a lost probe is replaced after another reset window
    breaker.record_success()
    assert breaker.state == "closed"


def test_database_probe_ending_in_a_non_connection_error_reports_success(stack):
    """The server answered (e.g. unknown database): it is up; the breaker must not stay open."""
    db = bootstrap.database()
    db.breaker.record_failure()
    db.breaker.record_failure()
    assert db.breaker.state == "open"
    db.breaker._opened_at -= db.breaker.reset_after  # half-open now
    real_connect = db.connect

    def connect(database=True):
        raise pymysql.err.OperationalError(1049, "Unknown database")

    db.connect = connect
    db.close()
    with pytest.raises(pymysql.err.OperationalError):
        db.query("SELECT 1")
    db.connect = real_connect
    assert db.query("SELECT 1 AS one")[0]["one"] == 1

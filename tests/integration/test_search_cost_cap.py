"""The search cost cap on the real MariaDB: every search statement runs under
a server-side time limit; a search stopped by it answers a clear 503 while
the MySQL breaker stays closed, the pooled connections stay pooled and the
other routes keep answering. Runs the app in-process (the breaker and the
pool are this process's)."""
import os
import threading

import pytest
from chalice.test import Client

from chalicelib import bootstrap
from chalicelib.adapters import db as db_module
from chalicelib.adapters.search_mysql import MySQLSearchBackend
from chalicelib.domain.errors import StatementTimeout
from tests.conftest import DEV_KEY, make_product, session_settings

LIMIT_MS = 300


@pytest.fixture
def app_client(clean_db):
    # Chalice's test client puts the local stage's config in os.environ; the session's own values win.
    bootstrap.reset(**{**session_settings(clean_db), "SEARCH_TIME_LIMIT_MS": str(LIMIT_MS)})
    from app import app

    # Chalice's test client swaps os.environ for a patched copy per request and
    # back; requests from several threads at once can leave the copy in place.
    environ = os.environ
    try:
        with Client(app, stage_name="local") as client:
            yield client
    finally:
        os.environ = environ
        bootstrap.reset()


@pytest.fixture
def slow_search(monkeypatch):
    """Every search first runs a 5 s SLEEP on its own cursor, so it goes
    through the same transaction, cursor and time limit as the real statements.
    Returns the MySQL thread ids of the connections the slow searches used."""
    used = []
    estimate = MySQLSearchBackend._estimate

    def slow(self, cur, atoms):
        used.append(cur.connection.thread_id())
        cur.execute("SELECT SLEEP(5) AS slept")
        return estimate(self, cur, atoms)

    monkeypatch.setattr(MySQLSearchBackend, "_estimate", slow)
    return used


def test_time_limited_sql_per_server():
    sql = "SELECT STRAIGHT_JOIN id FROM t WHERE a = %s"
    assert db_module.time_limited(sql, "mariadb", 1500) == \
        "SET STATEMENT max_statement_time=1.500 FOR " + sql
    assert db_module.time_limited(sql, "mysql", 1500) == \
        "SELECT /*+ MAX_EXECUTION_TIME(1500) */ STRAIGHT_JOIN id FROM t WHERE a = %s"
    with pytest.raises(ValueError):
        db_module.time_limited("UPDATE t SET a = 1", "mysql", 10)


def test_server_flavor_is_read_from_the_handshake_once(clean_db):
    conn = bootstrap.database().connect()
    try:
        assert db_module.server_flavor(conn) == "mariadb"   # the local server
        conn.get_server_info = None  # a second call must use the cached answer
        assert db_module.server_flavor(conn) == "mariadb"
    finally:
        conn.close()


def test_a_statement_over_the_limit_is_stopped_by_the_server_and_keeps_the_connection(clean_db):
    db = bootstrap.database()
    thread_ids = []

    def slow(cur):
        thread_ids.append(cur.connection.thread_id())
        cur.execute("SELECT SLEEP(5) AS slept")
        return cur.fetchone()

    with pytest.raises(StatementTimeout) as raised:
        db.run(slow, time_limit_ms=200)
    assert raised.value.extra["details"] == {"reason": "time_limit", "time_limit_ms": 200}
    assert db.breaker.state == "closed"
    # The same connection went back to the pool and answers the next statement.
    assert [c.thread_id() for c in db._idle.queue] == thread_ids
    assert db.query("SELECT CONNECTION_ID() AS id")[0]["id"] == thread_ids[0]
    # Without a limit the cursor runs statements as they are.
    assert db.run(lambda cur: cur.execute("SELECT SLEEP(0.3) AS slept") and cur.fetchone()) == {"slept": 0}


def test_slow_searches_answer_503_without_opening_the_breaker(app_client, catalog, slow_search, monkeypatch):
    product = make_product(catalog, name="Teapot", stock=10)
    key = {"x-api-key": DEV_KEY}
    responses = []

    def search(i):
        responses.append(app_client.http.get(f"/products/search?q=teapot{i}", headers=key))

    # Concurrent slow searches: before the cap, two client read timeouts opened the breaker.
    threads = [threading.Thread(target=search, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in responses] == [503] * 4
    for r in responses:
        assert r.headers["Retry-After"] == "2"
        error = r.json_body["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE"
        assert error["details"] == {"reason": "time_limit", "time_limit_ms": LIMIT_MS}
    db = bootstrap.database()
    assert db.breaker.state == "closed"
    assert set(slow_search) <= {c.thread_id() for c in db._idle.queue}   # no pooled connection dropped

    got = app_client.http.get(f"/products/{product['id']}", headers=key)
    assert got.status_code == 200 and got.json_body["product"]["name"] == "Teapot"
    batch = app_client.http.post("/orders/batch", headers={**key, "content-type": "application/json"},
                                 body='{"orders":[{"client_order_id":"cap-1","user_id":1,'
                                      f'"items":[{{"product_id":{product["id"]},"quantity":1}}]}}]}}')
    assert batch.status_code == 200 and batch.json_body["results"][0]["status"] == "created"
    health = app_client.http.get("/health")
    assert health.json_body["checks"]["mysql"] == "up"
    monkeypatch.undo()   # searches fast again: answered at once, no breaker to wait for
    found = app_client.http.get("/products/search?q=teapot", headers=key)
    assert found.status_code == 200 and found.json_body["total"] == 1

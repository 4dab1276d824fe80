"""One path for every product write (chalicelib/adapters/product_writes.py): every path
bumps `version`, reports exactly the versions MySQL holds to the cache
invalidation after commit, and a write that skips the unit of work is refused."""
import pytest

from chalicelib import bootstrap
from chalicelib.service.catalog import Catalog
from chalicelib.adapters.db import ProductWriteOutsideUnitOfWork
from chalicelib.adapters.inventory import STRATEGIES, make_strategy
from chalicelib.adapters.order_repository import MySQLOrderRepository
from chalicelib.adapters.product_reads import MySQLProductReads
from chalicelib.service.orders import OrderService
from chalicelib.domain.orders import parse_batch
from chalicelib.adapters.search_sql import LISTED_IN_STOCK as IN, LISTED_SOLD_OUT as OUT, NOT_LISTED as NONE
from chalicelib.adapters.search_mysql import MySQLSearchBackend
from chalicelib.domain.search_query import parse_query
from chalicelib.adapters.product_writes import ProductWrites
from tests.conftest import make_product


class RecordingInvalidator:
    def __init__(self):
        self.calls = []

    def after_commit(self, versions, search=True, enqueue=True):
        self.calls.append(dict(versions))


def _versions(ids):
    rows = bootstrap.database().query(
        f"SELECT id, version FROM products WHERE id IN ({','.join(['%s'] * len(ids))})", list(ids))
    return {r["id"]: r["version"] for r in rows}


@pytest.fixture
def recorded(clean_db):
    db = bootstrap.database()
    invalidator = RecordingInvalidator()
    writes = ProductWrites(db, invalidator, MySQLSearchBackend(db))
    return invalidator, writes, Catalog(MySQLProductReads(db), bootstrap.product_cache(), writes)


def test_catalog_writes_report_the_versions_mysql_holds(recorded):
    invalidator, _, catalog = recorded
    created = catalog.create_many([{"sku": f"UOW-{i}", "name": f"thing {i}", "category": "c",
                                    "price_cents": 100, "stock": 5} for i in range(3)])
    ids = [p["id"] for p in created]
    assert invalidator.calls == [_versions(ids)]

    before = _versions(ids[:1])[ids[0]]
    catalog.update(ids[0], {"name": "renamed widget"})
    assert invalidator.calls[-1] == {ids[0]: before + 1} == _versions(ids[:1])
    catalog.adjust_stock(ids[1], {"delta": 4})
    assert invalidator.calls[-1] == {ids[1]: 2} == _versions(ids[1:2])

    calls = len(invalidator.calls)
    with pytest.raises(Exception):
        catalog.adjust_stock(ids[2], {"delta": -6})  # would go below zero: rolled back
    assert len(invalidator.calls) == calls  # nothing committed, nothing invalidated
    # the search index followed the rename inside the same transaction
    page = MySQLSearchBackend(bootstrap.database()).search(parse_query({"q": "widget"})).to_api()
    assert [p["id"] for p in page["items"]] == [ids[0]]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_orders_and_cancels_report_the_versions_mysql_holds(recorded, strategy):
    invalidator, writes, catalog = recorded
    a, b = (make_product(catalog, stock=10)["id"] for _ in range(2))
    service = OrderService(bootstrap.database(), make_strategy(strategy, bootstrap.state_gateway()), writes,
                           MySQLOrderRepository)
    invalidator.calls.clear()

    result = service.place_batch(parse_batch({"orders": [
        {"client_order_id": "u-1", "user_id": 1, "items": [{"product_id": a, "quantity": 2}, {"product_id": b, "quantity": 1}]},
        {"client_order_id": "u-2", "user_id": 1, "items": [{"product_id": a, "quantity": 1}]},
        {"client_order_id": "u-3", "user_id": 1, "items": [{"product_id": b, "quantity": 99}]},
    ]}))
    assert [r["status"] for r in result["results"]] == ["created", "created", "failed"]
    # one invalidation for the batch, with the last committed version of each product
    assert invalidator.calls == [_versions([a, b])]

    service.cancel(result["results"][0]["order_id"])
    assert invalidator.calls[-1] == _versions([a, b])
    assert len(invalidator.calls) == 2


def _listing(pid):
    """(search_meta's listing, the set of listings on the product's postings)."""
    db = bootstrap.database()
    meta = db.query("SELECT active FROM search_meta WHERE product_id = %s", (pid,))[0]["active"]
    postings = {r["active"] for r in db.query("SELECT DISTINCT active FROM search_terms WHERE product_id = %s",
                                               (pid,))}
    return meta, postings


def _in_stock_hits(term, monkeypatch):
    """Ids found with in_stock=true by the probe plan and by the top-k walk (which reads the postings)."""
    found = []
    for sample in (MySQLSearchBackend.DRIVER_SAMPLE, 1):
        with monkeypatch.context() as m:
            m.setattr(MySQLSearchBackend, "DRIVER_SAMPLE", sample)
            page = MySQLSearchBackend(bootstrap.database()).search(parse_query({"q": term, "in_stock": "true"}))
            found.append([p["id"] for p in page.items])
    return found


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_listing_follows_stock_across_zero_on_every_write_path(recorded, strategy, monkeypatch):
    """in_stock=true reads the listing copied on search_meta and the postings: an order that
    sells a product out, a cancel that brings it back, and admin stock changes all move it,
    in their own transaction; a change that does not cross zero leaves it alone."""
    _, writes, catalog = recorded
    pid = make_product(catalog, name="Lantern brass", stock=2)["id"]
    assert _listing(pid) == (IN, {IN}) and _in_stock_hits("lantern", monkeypatch) == [[pid], [pid]]
    service = OrderService(bootstrap.database(), make_strategy(strategy, bootstrap.state_gateway()), writes,
                           MySQLOrderRepository)

    def order(coid, quantity):
        return service.place_batch(parse_batch({"orders": [
            {"client_order_id": coid, "user_id": 1, "items": [{"product_id": pid, "quantity": quantity}]}]}))

    first = order("l-1", 1)["results"][0]
    assert first["status"] == "created" and _listing(pid) == (IN, {IN})  # 1 left: still in stock
    last = order("l-2", 1)["results"][0]
    assert last["status"] == "created" and _listing(pid) == (OUT, {OUT})
    assert _in_stock_hits("lantern", monkeypatch) == [[], []]
    assert MySQLSearchBackend(bootstrap.database()).search(parse_query({"q": "lantern"})).total == 1

    service.cancel(last["order_id"])
    assert _listing(pid) == (IN, {IN}) and _in_stock_hits("lantern", monkeypatch) == [[pid], [pid]]
    catalog.adjust_stock(pid, {"delta": -1})
    assert _listing(pid) == (OUT, {OUT})
    catalog.adjust_stock(pid, {"delta": 5})
    assert _listing(pid) == (IN, {IN})
    catalog.update(pid, {"status": "inactive"})
    assert _listing(pid) == (NONE, {NONE})
    catalog.update(pid, {"status": "active"})
    assert _listing(pid) == (IN, {IN})


def test_migration_0014_lists_the_sold_out_products_of_an_existing_index(recorded):
    from chalicelib.adapters.migrate import migrate

    _, _, catalog = recorded
    sold_out, in_stock = (make_product(catalog, name="Lantern", stock=n)["id"] for n in (0, 3))
    hidden = make_product(catalog, name="Lantern", stock=0)["id"]
    catalog.update(hidden, {"status": "inactive"})
    db = bootstrap.database()
    conn = db.connect()
    try:
        with conn.cursor() as cur:   # what an index from before 0014 held: 1 for every product for sale
            cur.execute("UPDATE search_meta SET active = 1 WHERE active = 2")
            cur.execute("UPDATE search_terms SET active = 1 WHERE active = 2")
            cur.execute("DELETE FROM schema_migrations WHERE name = '0014_search_in_stock.sql'")
        conn.commit()
    finally:
        conn.close()
    assert _listing(sold_out) == (IN, {IN})
    assert migrate(db) == ["0014_search_in_stock.sql"]
    assert [_listing(pid) for pid in (sold_out, in_stock, hidden)] == [(OUT, {OUT}), (IN, {IN}), (NONE, {NONE})]


def test_a_product_write_outside_the_unit_of_work_is_refused(recorded):
    _, writes, catalog = recorded
    pid = make_product(catalog, stock=10)["id"]
    db = bootstrap.database()
    statements = [
        ("UPDATE products SET stock = 0 WHERE id = %s", (pid,)),
        ("update `products` set stock = 0 where id = %s", (pid,)),
        ("DELETE FROM products WHERE id = %s", (pid,)),
        ("INSERT INTO products (sku, name, description, category, price_cents, stock) "
         "VALUES ('X-1', 'x', '', 'c', 1, 1)", None),
    ]
    for sql, args in statements:
        with pytest.raises(ProductWriteOutsideUnitOfWork):
            db.run(lambda cur: cur.execute(sql, args))
        with pytest.raises(ProductWriteOutsideUnitOfWork):
            db.query(sql, args)
    with pytest.raises(ProductWriteOutsideUnitOfWork):
        db.run(lambda cur: cur.executemany(
            "INSERT INTO products (sku, name, description, category, price_cents, stock) VALUES (%s, %s, %s, %s, %s, %s)",
            [("X-2", "x", "", "c", 1, 1), ("X-3", "x", "", "c", 1, 1)]))

    # Inside a unit of work too, a raw statement on its cursor is refused, and the
    # whole transaction (including the legitimate change before it) rolls back.
    def sneaky(tx):
        tx.update([pid], "stock = stock + 1", stock_delta={pid: 1})
        tx.cursor.execute("UPDATE products SET stock = 0 WHERE id = %s", (pid,))

    with pytest.raises(ProductWriteOutsideUnitOfWork):
        writes.run(sneaky)
    row = db.query("SELECT stock, version FROM products WHERE id = %s", (pid,))[0]
    assert (row["stock"], row["version"]) == (10, 1)
    # reads and other tables are untouched by the guard
    assert db.query("SELECT COUNT(*) AS n FROM products")[0]["n"] == 1
    db.run(lambda cur: cur.execute("UPDATE orders SET total_cents = 0 WHERE id = -1"))


def test_every_connection_the_database_opens_has_the_guard(recorded):
    """Not only the pooled transactions: a connection from Database.connect()
    (migrations, scripts) refuses product writes too."""
    conn = bootstrap.database().connect()
    try:
        with conn.cursor() as cur, pytest.raises(ProductWriteOutsideUnitOfWork):
            cur.execute("UPDATE products SET stock = 0")
    finally:
        conn.close()


def test_stock_updates_find_their_row_by_primary_key(clean_db):
    """A secondary index led by `id` (an (id, stock) index once made in_stock
    probes cheaper) is what MariaDB picks for `UPDATE products ... WHERE id = ?
    AND stock >= ?`: it then locks that index before the row and concurrent
    orders on a hot product deadlock. The order path must find rows by PRIMARY."""
    pid = make_product(bootstrap.catalog(), stock=5)["id"]
    [plan] = bootstrap.database().query(
        "EXPLAIN UPDATE products SET stock = stock - 1, version = version + 1 WHERE id = %s AND stock >= 1", (pid,))
    assert plan["key"] == "PRIMARY", plan
    led_by_id = bootstrap.database().query(
        "SELECT index_name FROM information_schema.statistics WHERE table_schema = DATABASE() "
        "AND table_name = 'products' AND seq_in_index = 1 AND column_name = 'id' AND index_name <> 'PRIMARY'")
    assert not led_by_id, led_by_id

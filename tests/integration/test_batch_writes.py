"""Batches written in one transaction (service/batch_writer.py) against the real
MariaDB: the invariants of docs/design.md with concurrent batches that share
products in different orders, every per-order answer kept (each failure kind in
one batch, answered as the per-order path answers it), a replay racing its
first request, and an outage mid-batch that leaves nothing half-written."""
import random

import pytest

from chalicelib import bootstrap
from chalicelib.adapters.order_repository import MySQLOrderRepository
from chalicelib.adapters.product_writes import ProductTransaction
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.order_records import NewOrder, OrderLine
from chalicelib.domain.orders import parse_batch
from chalicelib.service import batch_writer
from tests.conftest import make_product
from tests.integration.test_customer_limits import customer
from tests.support.threads import run_together


def stock(pid):
    return bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (pid,))[0]["stock"]


def sold(pid):
    return int(bootstrap.database().query(
        "SELECT COALESCE(SUM(i.quantity), 0) AS n FROM order_items i JOIN orders o ON o.id = i.order_id "
        "WHERE i.product_id = %s AND o.status = 'created'", (pid,))[0]["n"])


def count(sql, args=None):
    return bootstrap.database().query(sql, args)[0]["n"]


def order(coid, *lines, user_id=1):
    return {"client_order_id": coid, "user_id": user_id,
            "items": [{"product_id": pid, "quantity": qty} for pid, qty in lines]}


def place(orders, service=None, client="", customer_id=0):
    return (service or bootstrap.orders()).place_batch(
        parse_batch({"orders": orders}, client, customer_id, bootstrap.customer_limits()))["results"]


@pytest.fixture
def writes_counted(monkeypatch):
    """How many batches the batch writer wrote (optimistic and locked attempts)."""
    counted = {"optimistic": 0, "locked": 0}
    write = batch_writer.BatchWriter._write

    def counting(self, tx, orders, batch_of, recorded, lock):
        counted["locked" if lock else "optimistic"] += 1
        return write(self, tx, orders, batch_of, recorded, lock)

    monkeypatch.setattr(batch_writer.BatchWriter, "_write", counting)
    return counted


def test_concurrent_batches_sharing_products_in_any_order_reconcile(clean_db, writes_counted):
    catalog = bootstrap.catalog()
    initial = {make_product(catalog, stock=60, low_stock_threshold=20)["id"]: 60 for _ in range(8)}
    ids = list(initial)
    rng = random.Random(11)
    batches = []
    for b in range(24):
        orders = []
        for k in range(10):
            lines = [(pid, rng.randint(1, 3)) for pid in rng.sample(ids, rng.randint(1, 4))]
            rng.shuffle(lines)  # any order in the request: the writer locks in ascending id order
            orders.append(order(f"c-{b}-{k}", *lines))
        batches.append(orders)
    results = [None] * len(batches)

    def client(indexes):
        for i in indexes:
            results[i] = place(batches[i])

    assert run_together(client, [list(range(t, len(batches), 8)) for t in range(8)]) == []
    flat = [r for batch in results for r in batch]
    assert {r["error"]["code"] for r in flat if r["status"] == "failed"} <= {"INSUFFICIENT_STOCK"}
    assert any(r["status"] == "failed" for r in flat) and any(r["status"] == "created" for r in flat)
    for pid, stocked in initial.items():
        assert stock(pid) >= 0
        assert sold(pid) + stock(pid) == stocked, f"product {pid} does not reconcile"
    created = {r["order_id"] for r in flat if r["status"] == "created"}
    assert {row["id"] for row in bootstrap.database().query("SELECT id FROM orders")} == created
    assert count("SELECT COUNT(*) AS n FROM order_events WHERE type = 'order.created'") == len(created)
    # Every product crossed its threshold once, with one stock.low row.
    assert count("SELECT COUNT(DISTINCT product_id) AS n FROM order_events WHERE type = 'stock.low'") == len(ids)
    assert count("SELECT COUNT(*) AS n FROM order_events WHERE type = 'stock.low'") == len(ids)
    # The batches were written in bulk (locked again once stock ran short), not order by order.
    assert writes_counted["optimistic"] >= len(batches) and writes_counted["locked"] >= 1


def test_a_hot_product_never_oversells_through_concurrent_batches(clean_db):
    hot = make_product(bootstrap.catalog(), stock=100)["id"]
    batches = [[order(f"h-{b}-{k}", (hot, 1), user_id=b * 10 + k + 1) for k in range(10)] for b in range(16)]
    results = []

    assert run_together(lambda batch: results.extend(place(batch)), batches) == []

    assert sum(1 for r in results if r["status"] == "created") == 100
    assert {r["error"]["code"] for r in results if r["status"] == "failed"} == {"INSUFFICIENT_STOCK"}
    assert (stock(hot), sold(hot)) == (0, 100)


def mixed_batch(plenty, short, hidden, user):
    lines = [("ok", (plenty, 2)), ("invalid",), ("missing", (plenty, 1), (10**9, 1)), ("hidden", (hidden, 1)),
             ("short", (plenty, 1), (short, 5)), ("replayed", (plenty, 1)), ("conflict", (plenty, 2)),
             ("twice", (plenty, 1)), ("twice", (plenty, 1)), ("twice-other", (plenty, 1)),
             ("twice-other", (plenty, 2)), ("takes-the-rest", (short, 3)), ("after-the-rest", (short, 1))]
    return [order(coid, *items, user_id=user) for coid, *items in lines]  # "invalid": no items


def answers(results):
    return [(r["client_order_id"], r["status"], r.get("duplicate"), r.get("total_cents"),
             (r["error"]["code"], r["error"].get("product_id")) if r["status"] == "failed" else None)
            for r in results]


def run_mixed(service, user):
    catalog = bootstrap.catalog()
    plenty = make_product(catalog, stock=50, price_cents=100)["id"]
    short = make_product(catalog, stock=3, price_cents=700)["id"]
    hidden = make_product(catalog, stock=5)["id"]
    catalog.update(hidden, {"status": "inactive"})
    place([order("replayed", (plenty, 1), user_id=user), order("conflict", (plenty, 1), user_id=user)], service)
    results = place(mixed_batch(plenty, short, hidden, user), service)
    return results, (stock(plenty), stock(short), stock(hidden)), (plenty, short, hidden)


def test_a_batch_with_every_failure_kind_answers_as_order_by_order(clean_db, writes_counted, monkeypatch):
    bulk, stocks, ids = run_mixed(bootstrap.orders(), user=1)
    assert writes_counted["locked"] >= 1  # unsellable lines are only decided on locked rows

    plenty, short, hidden = ids
    expected = [
        ("ok", "created", False, 200, None),
        ("invalid", "failed", None, None, ("VALIDATION_ERROR", None)),
        ("missing", "failed", None, None, ("PRODUCT_NOT_FOUND", 10**9)),
        ("hidden", "failed", None, None, ("PRODUCT_NOT_FOUND", hidden)),
        ("short", "failed", None, None, ("INSUFFICIENT_STOCK", short)),
        ("replayed", "created", True, 100, None),
        ("conflict", "failed", None, None, ("IDEMPOTENCY_CONFLICT", None)),
        ("twice", "created", False, 100, None),
        ("twice", "created", True, 100, None),
        ("twice-other", "created", False, 100, None),
        ("twice-other", "failed", None, None, ("IDEMPOTENCY_CONFLICT", None)),
        ("takes-the-rest", "created", False, 2100, None),
        ("after-the-rest", "failed", None, None, ("INSUFFICIENT_STOCK", short)),
    ]
    assert answers(bulk) == expected
    assert bulk[7]["order_id"] == bulk[8]["order_id"]
    assert stocks == (50 - 2 - 2 - 1 - 1, 0, 5)  # the two earlier orders, ok, twice, twice-other

    # The same batch order by order (another user, new products): the very same answers.
    one_by_one = bootstrap.orders()
    monkeypatch.setattr(one_by_one, "batch_writer", None)
    single, single_stocks, single_ids = run_mixed(one_by_one, user=2)
    renamed = dict(zip(single_ids, ids))
    assert [(c, s, d, t, e and (e[0], renamed.get(e[1], e[1]))) for c, s, d, t, e in answers(single)] == expected
    assert single_stocks == stocks


def test_a_customers_unpaid_cap_counts_the_batchs_own_orders(clean_db):
    pid = make_product(bootstrap.catalog(), stock=500)["id"]
    ann = customer("ann")
    limit = bootstrap.customer_limits().unpaid_units
    per_order = bootstrap.customer_limits().units_per_product
    orders = [{"client_order_id": f"u-{i}", "items": [{"product_id": pid, "quantity": per_order}]}
              for i in range(limit // per_order + 1)] + [
        {"client_order_id": "u-0", "items": [{"product_id": pid, "quantity": per_order}]}]
    results = place(orders, client="mobile-app", customer_id=ann)

    codes = [r["error"]["code"] if r["status"] == "failed" else r["duplicate"] for r in results]
    assert codes == [False] * (limit // per_order) + ["QUANTITY_LIMIT_EXCEEDED", True]
    assert results[-1]["order_id"] == results[0]["order_id"]
    rows = bootstrap.database().query("SELECT lifecycle, expires_at FROM orders WHERE customer_id = %s", (ann,))
    assert len(rows) == limit // per_order
    assert all(r["lifecycle"] == "pending_payment" and r["expires_at"] is not None for r in rows)
    assert stock(pid) == 500 - limit


def test_a_replay_racing_its_first_request_is_created_once(clean_db):
    pids = [make_product(bootstrap.catalog(), stock=100)["id"] for _ in range(3)]
    batch = [order(f"r-{k}", (pids[k % 3], 1), (pids[(k + 1) % 3], 2)) for k in range(20)]
    responses = []

    assert run_together(lambda _: responses.append(place(batch)), range(6)) == []
    assert len(responses) == 6
    for k in range(20):
        mine = [response[k] for response in responses]
        assert {r["status"] for r in mine} == {"created"}
        assert len({r["order_id"] for r in mine}) == 1
        assert sum(1 for r in mine if not r["duplicate"]) == 1
    assert count("SELECT COUNT(*) AS n FROM orders") == 20
    wanted = {pid: sum(line["quantity"] for o in batch for line in o["items"] if line["product_id"] == pid)
              for pid in pids}
    assert [stock(pid) for pid in pids] == [100 - wanted[pid] for pid in pids]


def test_an_outage_mid_batch_leaves_nothing_half_written(clean_db, monkeypatch):
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    batch = [order(f"o-{k}", (pid, 1)) for k in range(5)]
    take = ProductTransaction.take_stock

    def cut_then_take(tx, quantities, prices=None):
        # The orders, lines and outbox rows are written; the connection dies before the stock update.
        killer = bootstrap.database().connect()
        with killer.cursor() as cur:
            cur.execute("KILL CONNECTION %s", (tx.cursor.connection.thread_id(),))
        killer.close()
        return take(tx, quantities, prices)

    monkeypatch.setattr(ProductTransaction, "take_stock", cut_then_take)
    with pytest.raises(ServiceUnavailable) as info:
        place(batch)
    # Nothing of the transaction committed, so the 503 names nothing.
    assert "details" not in info.value.body()["error"]
    assert stock(pid) == 10
    assert count("SELECT COUNT(*) AS n FROM orders") == 0
    assert count("SELECT COUNT(*) AS n FROM order_items") == 0
    assert count("SELECT COUNT(*) AS n FROM order_events") == 0

    monkeypatch.setattr(ProductTransaction, "take_stock", take)
    retried = place(batch)
    assert [(r["status"], r["duplicate"]) for r in retried] == [("created", False)] * 5
    assert stock(pid) == 5


def test_a_key_committed_by_another_request_sends_the_batch_order_by_order(clean_db, monkeypatch):
    pid = make_product(bootstrap.catalog(), stock=10)["id"]
    batch = [order("first", (pid, 1)), order("raced", (pid, 2)), order("third", (pid, 3))]
    add_many = MySQLOrderRepository.add_many
    raced = []

    def another_request_commits_first(self, orders):
        if not raced:
            raced.append(place([order("raced", (pid, 2))], bootstrap.orders())[0])
        return add_many(self, orders)

    monkeypatch.setattr(MySQLOrderRepository, "add_many", another_request_commits_first)
    results = place(batch)

    assert [(r["client_order_id"], r["status"], r["duplicate"]) for r in results] == [
        ("first", "created", False), ("raced", "created", True), ("third", "created", False)]
    assert results[1]["order_id"] == raced[0]["order_id"]
    assert stock(pid) == 4 and count("SELECT COUNT(*) AS n FROM orders") == 3


@pytest.mark.parametrize("step", [1, 3])
def test_a_bulk_insert_gives_each_order_its_own_id_whatever_the_auto_increment_step(clean_db, step):
    """Ids read back after one multi-row INSERT: consecutive (step 1, told by one aggregate row) or
    spaced (an auto_increment_increment of 3, as some replication setups have: the rows are read)."""
    pid = make_product(bootstrap.catalog(), stock=100)["id"]
    orders = [NewOrder("", 0, 1, f"ids-{step}-{k}", "h", 100 + k, [OrderLine(pid, 1, 100 + k)]) for k in range(6)]
    with bootstrap.database().connection() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION auto_increment_increment = %s", (step,))
        try:
            conn.begin()
            ids = MySQLOrderRepository(cur).add_many(orders)
            conn.commit()
        finally:
            cur.execute("SET SESSION auto_increment_increment = 1")
    stored = {r["client_order_id"]: (r["id"], r["total_cents"], r["line_cents"]) for r in bootstrap.database().query(
        "SELECT o.id, o.client_order_id, o.total_cents, i.unit_price_cents AS line_cents FROM orders o "
        "JOIN order_items i ON i.order_id = o.id")}
    assert [stored[o.client_order_id] for o in orders] == [(i, o.total_cents, o.total_cents)
                                                          for i, o in zip(ids, orders)]
    assert {b - a for a, b in zip(ids, ids[1:])} == {step}

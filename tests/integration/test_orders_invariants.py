"""docs/design.md invariants 1-4 against the real MariaDB and Redis, for every
inventory strategy: hammer one hot product and many products from threads and
processes, then reconcile every order line against stock."""
import multiprocessing
import random
import threading

import pytest

from chalicelib import bootstrap
from chalicelib.adapters.inventory import STRATEGIES
from chalicelib.domain.orders import parse_batch
from tests.conftest import make_product
from tests.support.order_load import process_main, run_buyers
from tests.support.threads import run_together

pytestmark = pytest.mark.parametrize("strategy", STRATEGIES)


def _stock(product_id):
    return bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (product_id,))[0]["stock"]


def _sold(product_id):
    row = bootstrap.database().query(
        "SELECT COALESCE(SUM(i.quantity), 0) AS sold FROM order_items i JOIN orders o ON o.id = i.order_id "
        "WHERE i.product_id = %s AND o.status = 'created'", (product_id,))[0]
    return int(row["sold"])


def _run_everywhere(test_env, strategy, orders, processes, threads_per_worker):
    """Split `orders` over this process (threads) and `processes` spawned processes."""
    shares = [orders[i::processes + 1] for i in range(processes + 1)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pending = pool.map_async(process_main, [(test_env, strategy, share, threads_per_worker) for share in shares[1:]])
        local_results, local_errors = run_buyers(strategy, shares[0], threads_per_worker)
        remote = pending.get(timeout=240)
    results = list(local_results)
    errors = list(local_errors)
    for remote_results, remote_errors in remote:
        results += remote_results
        errors += remote_errors
    return results, errors


@pytest.mark.slow
def test_hot_product_never_oversells(clean_db, strategy):
    stock = 100
    product = make_product(bootstrap.catalog(), stock=stock)
    buyers = [{"client_order_id": f"hot-{i}", "user_id": i + 1,
               "items": [{"product_id": product["id"], "quantity": 1}]} for i in range(500)]

    results, errors = _run_everywhere(clean_db, strategy, buyers, processes=3, threads_per_worker=125)

    assert errors == []
    created = [r for r in results if r["status"] == "created"]
    failed = [r for r in results if r["status"] == "failed"]
    assert len(created) == stock
    assert {r["error"]["code"] for r in failed} == {"INSUFFICIENT_STOCK"}
    assert _stock(product["id"]) == 0
    assert _sold(product["id"]) == stock


@pytest.mark.slow
def test_many_products_reconcile_without_deadlock(clean_db, strategy):
    catalog = bootstrap.catalog()
    initial = {make_product(catalog, stock=40)["id"]: 40 for _ in range(12)}
    rng = random.Random(7)
    ids = list(initial)
    orders = []
    for i in range(400):
        lines = [{"product_id": pid, "quantity": rng.randint(1, 3)} for pid in rng.sample(ids, rng.randint(1, 5))]
        rng.shuffle(lines)  # any line order in the request; locking must still be in id order
        if rng.random() < 0.2:
            lines.append(dict(lines[0]))  # duplicate line of one product: merged
        orders.append({"client_order_id": f"multi-{i}", "user_id": 1, "items": lines})

    results, errors = _run_everywhere(clean_db, strategy, orders, processes=2, threads_per_worker=16)

    assert errors == []
    assert len(results) == len(orders)
    codes = {r["error"]["code"] for r in results if r["status"] == "failed"}
    assert codes <= {"INSUFFICIENT_STOCK"}
    assert any(r["status"] == "created" for r in results)
    for pid, stocked in initial.items():
        left = _stock(pid)
        assert left >= 0
        assert _sold(pid) + left == stocked, f"product {pid} does not reconcile"
    created_ids = {r["order_id"] for r in results if r["status"] == "created"}
    rows = bootstrap.database().query("SELECT id FROM orders")
    assert {row["id"] for row in rows} == created_ids


def test_an_order_with_one_unsellable_line_takes_nothing(clean_db, strategy):
    catalog = bootstrap.catalog()
    plenty, empty, hidden = (make_product(catalog, stock=s)["id"] for s in (5, 0, 5))
    catalog.update(hidden, {"status": "inactive"})
    service = bootstrap.orders(strategy)
    results = service.place_batch(parse_batch({"orders": [
        {"client_order_id": "no-stock", "user_id": 1,
         "items": [{"product_id": plenty, "quantity": 2}, {"product_id": empty, "quantity": 1}]},
        {"client_order_id": "inactive", "user_id": 1,
         "items": [{"product_id": hidden, "quantity": 1}, {"product_id": plenty, "quantity": 2}]},
        {"client_order_id": "ok", "user_id": 1, "items": [{"product_id": plenty, "quantity": 5}]},
    ]}))["results"]

    assert [r["status"] for r in results] == ["failed", "failed", "created"]
    assert (results[0]["error"]["code"], results[0]["error"]["product_id"]) == ("INSUFFICIENT_STOCK", empty)
    assert (results[1]["error"]["code"], results[1]["error"]["product_id"]) == ("PRODUCT_NOT_FOUND", hidden)
    assert (_stock(plenty), _stock(empty), _stock(hidden)) == (0, 0, 5)


@pytest.mark.slow
def test_orders_racing_restocks_and_status_flips_reconcile(clean_db, strategy):
    """Multi-line orders while other writers restock and hide/show products:
    the paths where a line is short or gone after others were taken."""
    catalog = bootstrap.catalog()
    ids = [make_product(catalog, stock=3)["id"] for _ in range(6)]
    restocked = {pid: 0 for pid in ids}
    done = threading.Event()
    writer_errors = []

    def restocker(seed):
        rng = random.Random(seed)
        while not done.is_set():
            pid = rng.choice(ids)
            try:
                bootstrap.catalog().adjust_stock(pid, {"delta": 1})
                restocked[pid] += 1
            except Exception as exc:
                writer_errors.append(repr(exc))

    def flipper():
        rng = random.Random(99)
        while not done.is_set():
            pid = rng.choice(ids)
            try:
                bootstrap.catalog().update(pid, {"status": "inactive"})
                bootstrap.catalog().update(pid, {"status": "active"})
            except Exception as exc:
                writer_errors.append(repr(exc))

    rng = random.Random(3)
    orders = [{"client_order_id": f"race-{i}", "user_id": 1,
               "items": [{"product_id": pid, "quantity": rng.randint(1, 2)} for pid in rng.sample(ids, rng.randint(2, 4))]}
              for i in range(300)]
    writers = [threading.Thread(target=restocker, args=(1,)), threading.Thread(target=flipper)]
    for w in writers:
        w.start()
    try:
        results, errors = run_buyers(strategy, orders, threads=16)
    finally:
        done.set()
        for w in writers:
            w.join()

    assert errors == [] and writer_errors == []
    codes = {r["error"]["code"] for r in results if r["status"] == "failed"}
    assert codes <= {"INSUFFICIENT_STOCK", "PRODUCT_NOT_FOUND"}
    assert any(r["status"] == "created" for r in results)
    for pid in ids:
        left = _stock(pid)
        assert left >= 0
        assert _sold(pid) + left == 3 + restocked[pid], f"product {pid} does not reconcile"


def test_concurrent_duplicates_create_one_order(clean_db, strategy):
    product = make_product(bootstrap.catalog(), stock=10)
    order = {"client_order_id": "same", "user_id": 42, "items": [{"product_id": product["id"], "quantity": 2}]}
    results, errors = run_buyers(strategy, [order] * 24, threads=24)

    assert errors == []
    assert {r["status"] for r in results} == {"created"}
    assert len({r["order_id"] for r in results}) == 1
    assert sum(1 for r in results if not r["duplicate"]) == 1
    assert _stock(product["id"]) == 8


def test_a_key_used_before_is_answered_as_a_replay_when_its_order_could_not_be_placed_now(clean_db, strategy):
    """The order took the last units (then the product went inactive): its replays, racing
    it or after it, are told duplicate, never INSUFFICIENT_STOCK; another body for the key
    is an idempotency conflict; nothing a replay took stays taken."""
    product = make_product(bootstrap.catalog(), stock=3)
    order = {"client_order_id": "last-units", "user_id": 7, "items": [{"product_id": product["id"], "quantity": 3}]}
    results, errors = run_buyers(strategy, [order] * 16, threads=16)

    assert errors == []
    assert {r["status"] for r in results} == {"created"}, [r.get("error") for r in results]
    assert len({r["order_id"] for r in results}) == 1 and sum(not r["duplicate"] for r in results) == 1
    assert _stock(product["id"]) == 0
    service = bootstrap.orders(strategy)
    bootstrap.catalog().update(product["id"], {"status": "inactive"})
    again = service.place_batch(parse_batch({"orders": [order]}))["results"][0]
    assert again["duplicate"] is True and again["order_id"] == results[0]["order_id"]
    other = dict(order, items=[{"product_id": product["id"], "quantity": 2}])
    conflict = service.place_batch(parse_batch({"orders": [other]}))["results"][0]
    assert conflict["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert _stock(product["id"]) == 0 and _sold(product["id"]) == 3


def test_concurrent_cancels_restock_once(clean_db, strategy):
    product = make_product(bootstrap.catalog(), stock=10)
    service = bootstrap.orders(strategy)
    placed = service.place_batch(parse_batch({"orders": [
        {"client_order_id": "c1", "user_id": 1, "items": [{"product_id": product["id"], "quantity": 3}]}]}))
    order_id = placed["results"][0]["order_id"]
    assert _stock(product["id"]) == 7

    outcomes = []

    assert run_together(lambda _: outcomes.append(service.cancel(order_id)["status"]), range(16), timeout=10) == []
    assert outcomes == ["cancelled"] * 16
    assert _stock(product["id"]) == 10
    assert service.get(order_id)["status"] == "cancelled"


def test_replay_after_cancel_is_a_duplicate_not_a_new_reservation(clean_db, strategy):
    product = make_product(bootstrap.catalog(), stock=5)
    service = bootstrap.orders(strategy)
    order = {"client_order_id": "r1", "user_id": 9, "items": [{"product_id": product["id"], "quantity": 5}]}
    first = service.place_batch(parse_batch({"orders": [order]}))["results"][0]
    service.cancel(first["order_id"])
    again = service.place_batch(parse_batch({"orders": [order]}))["results"][0]
    assert again["duplicate"] is True and again["order_id"] == first["order_id"]
    assert _stock(product["id"]) == 5


GARBAGE_ORDERS = [
    None, [], {}, {"client_order_id": "g", "user_id": 1, "items": []},
    {"client_order_id": "g", "user_id": 1, "items": [{"product_id": "{pid}", "quantity": 1}]},
    {"client_order_id": "g", "user_id": 1, "items": [{"product_id": 1, "quantity": -1}]},
    {"client_order_id": "g", "user_id": True, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "g" * 65, "user_id": 1, "items": [{"product_id": 1, "quantity": 1}]},
    {"client_order_id": "g", "user_id": 1, "items": [{"product_id": 10**30, "quantity": 1}]},
]


def test_garbage_orders_never_raise_and_never_change_stock(clean_db, strategy):
    product = make_product(bootstrap.catalog(), stock=5)
    service = bootstrap.orders(strategy)
    result = service.place_batch(parse_batch({"orders": GARBAGE_ORDERS}))
    assert result["summary"] == {"created": 0, "failed": len(GARBAGE_ORDERS)}
    assert {r["error"]["code"] for r in result["results"]} == {"VALIDATION_ERROR"}
    assert _stock(product["id"]) == 5
    assert bootstrap.database().query("SELECT COUNT(*) AS n FROM orders")[0]["n"] == 0

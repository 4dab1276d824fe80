"""redis_lock with Redis unreachable: orders keep working on MySQL row locks,
the fallback is logged, and stock still reconciles."""
import logging
import socket

from chalicelib import bootstrap
from tests.conftest import make_product
from tests.support.order_load import run_buyers


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_redis_lock_falls_back_to_row_locks(clean_db, caplog):
    product = make_product(bootstrap.catalog(), stock=30)
    bootstrap.reset(REDIS_STATE_URL=f"redis://127.0.0.1:{_closed_port()}/0")   # where the locks live
    orders = [{"client_order_id": f"down-{i}", "user_id": i + 1,
               "items": [{"product_id": product["id"], "quantity": 1}]} for i in range(60)]

    with caplog.at_level(logging.WARNING, logger="chalicelib.adapters.inventory"):
        results, errors = run_buyers("redis_lock", orders, threads=20)

    assert errors == []
    assert sum(1 for r in results if r["status"] == "created") == 30
    assert {r["error"]["code"] for r in results if r["status"] == "failed"} == {"INSUFFICIENT_STOCK"}
    assert "falling back to MySQL row locks" in caplog.text
    assert bootstrap.database().query("SELECT stock FROM products WHERE id = %s", (product["id"],))[0]["stock"] == 0
    bootstrap.reset()

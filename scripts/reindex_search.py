#!/usr/bin/env python3
"""Re-index every product's search terms with the current tokenizer: run once
after deploying a change to what the index stores (migration 0010: pinyin
terms and the typo dictionary for products indexed before it). Rewrites only
the terms that differ; batches of --batch products, each in its own
transaction holding the rows FOR UPDATE (so no concurrent write re-indexes
them meanwhile); then invalidates every cached search once.

  .venv/bin/python scripts/reindex_search.py [--batch 500]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chalicelib import bootstrap  # noqa: E402


def reindex(db, backend, batch=500):
    """Products re-indexed, walking ids in ascending order."""
    from chalicelib.domain.products import PRODUCT_COLUMNS

    last, done = 0, 0
    while True:
        def work(cur):
            cur.execute(f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id > %s ORDER BY id LIMIT %s FOR UPDATE",
                        (last, batch))
            rows = cur.fetchall()
            backend.index(cur, rows)
            return rows

        rows = db.run(work)
        if not rows:
            return done
        done += len(rows)
        last = int(rows[-1]["id"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    from chalicelib.adapters.search_mysql import MySQLSearchBackend

    db = bootstrap.database()
    count = reindex(db, MySQLSearchBackend(db), args.batch)
    bootstrap.search_generation().bump()
    print(f"re-indexed {count} products")
    return 0


if __name__ == "__main__":
    sys.exit(main())

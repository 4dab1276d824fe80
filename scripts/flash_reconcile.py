#!/usr/bin/env python3
"""Reconcile every running flash sale (or the ones named): Redis's gate against
MySQL. A sale Redis lost (restart, failover) is rebuilt from MySQL; a gate that
offers more than MySQL can still sell is lowered; expired leases are swept.
Prints one JSON line per sale (docs/design.md section 10).

  .venv/bin/python scripts/flash_reconcile.py [--product-id 42 ...]
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chalicelib import bootstrap  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--product-id", type=int, action="append", help="only this product (repeatable)")
    args = parser.parse_args(argv)
    ids = args.product_id or [row["product_id"] for row in
                              bootstrap.database().query("SELECT product_id FROM flash_sales ORDER BY product_id")]
    for product_id in ids:
        print(json.dumps(bootstrap.flash_sales().reconcile(product_id)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    sales = bootstrap.flash_admin()
    found = [sales.reconcile(pid) for pid in args.product_id] if args.product_id else sales.reconcile_all()
    for report in found:
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

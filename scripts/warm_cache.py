#!/usr/bin/env python3
"""Preload the caches: the product cache for the top N products (best sellers
among recent orders, topped up with the newest) and the frequent searches
(the most popular recorded first-page searches plus any given here).

The same job runs every 10 minutes in the cloud as the `warm_cache` scheduled
Lambda (chalicelib/entrypoints/routes/search.py).

  .venv/bin/python scripts/warm_cache.py --top 200 --popular 100 \\
      --search 'q=手机' --search 'q=usb c&sort=price_asc' --searches-file frequent.txt
"""
import argparse
import json
import logging
import sys
from pathlib import Path
from urllib.parse import parse_qsl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chalicelib import bootstrap  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=100, help="products to warm (default 100)")
    parser.add_argument("--popular", type=int, default=50, help="recorded popular searches to warm (default 50)")
    parser.add_argument("--search", action="append", default=[],
                        help="a search as a query string, e.g. 'q=phone&sort=price_asc' (repeatable)")
    parser.add_argument("--searches-file", help="a file with one query string per line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    lines = list(args.search)
    if args.searches_file:
        lines += [line.strip() for line in Path(args.searches_file).read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    searches = [dict(parse_qsl(line, keep_blank_values=True)) for line in lines]
    summary = bootstrap.warm_caches(top_products=args.top, searches=searches, popular=args.popular)
    print(json.dumps(summary, ensure_ascii=False))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

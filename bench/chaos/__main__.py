#!/usr/bin/env python3
"""Chaos benchmark (not a test): the whole shop at once while its dependencies
fail. A throwaway mariadbd, a cache and a state redis-server and a local AWS
endpoint of its own (never the shared ones), each behind a TCP proxy; the API,
one SQS poller per queue (two for order ingest and flash orders) and the
lifecycle loop as processes, as `make run` starts them. A mixed workload runs
over HTTP (chaos_load.py) while a seeded nemesis (chaos_nemesis.py) kills,
freezes and cuts; then everything is healed, the clients' owed requests are
answered, the queues drain, and MySQL, Redis and the API are checked against
what every client was told (chaos_checks.py). Prints the seed (rerun with
--seed), the faults by kind, every problem found and the DLQ messages.

    make chaos ARGS=--quick        # ~3 minutes, >= 10 faults
    make chaos                     # 20 minutes, >= 100 faults
    bench/chaos --smoke            # seconds of load and two faults (make test runs it)

Ends with: faults=<n> operations=<n> oversold=<n> lost=<n> duplicated=<n> stuck=<n> stale_cache=<n> events_missing=<n>
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for _common
import _common as common  # noqa: E402

common.use_venv()
common.clean_up_on_sigterm()

import argparse  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from chalicelib import bootstrap  # noqa: E402

from chaos_checks import Checks  # noqa: E402
from chaos_load import Ledger, Workload  # noqa: E402
from chaos_nemesis import Nemesis  # noqa: E402
from chaos_stack import Stack  # noqa: E402

FIELDS = ("oversold", "lost", "duplicated", "stuck", "stale_cache", "events_missing")
VISIBILITY = 8  # seconds: a paused consumer's batch comes back to the other one this soon
STALL_SECONDS = 120  # after the load, what has not shrunk for this long is stuck
WORDS = ("chaos phone", "chaos lamp", "desk lamp", "usb cable", "华为手机", "chaos desk")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 3 minutes, at least 10 faults")
    parser.add_argument("--smoke", action="store_true", help="seconds of load and two faults")
    parser.add_argument("--seconds", type=float, help="load time (default 1200; --quick 150; --smoke 10)")
    parser.add_argument("--seed", type=int, help="the nemesis's and the workload's seed (default: random)")
    args = parser.parse_args()
    args.seconds = args.seconds or (10 if args.smoke else 150 if args.quick else 1200)
    args.interval = (2, 3) if args.smoke else (4, 9)
    args.minimum = 2 if args.smoke else 10 if args.quick else 100
    args.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10 ** 6)
    return args


def seed_catalog(count=24):
    catalog, initial = bootstrap.catalog(), {}
    for n in range(count):
        word = WORDS[n % len(WORDS)]
        product = catalog.create({"sku": f"C-{uuid.uuid4().hex[:10]}", "name": f"{word} {n}", "category": "chaos",
                                  "price_cents": 500 + n, "stock": 1500, "low_stock_threshold": 100})
        initial[product["id"]] = product["stock"]
    return initial


def start_sale(initial):
    """The last product goes on sale; orders of the others stay ordinary."""
    pid = max(initial)
    bootstrap.flash_admin().start(pid, {"sale_stock": 120, "per_customer_limit": 3})
    return pid


def run(args, stack):
    initial = seed_catalog()
    sale = start_sale(initial)
    stack.start_processes()
    ledger = Ledger()
    products = sorted(pid for pid in initial if pid != sale)
    workload = Workload(stack.api_url, ledger, stack.tokens, products, sale, args.seed).start()
    nemesis = Nemesis(stack, args.seed, args.interval, VISIBILITY, pauses=not args.smoke).start(args.seconds)
    time.sleep(args.seconds)
    while args.smoke and nemesis.faults < args.minimum and nemesis.thread.is_alive():
        time.sleep(1)
    nemesis.finish()
    print(f"load stopped after {args.seconds:.0f}s; healing, answering owed requests, settling", flush=True)
    started = time.monotonic()
    workload.finish()
    stack.heal()
    checks = Checks(stack, ledger, initial, sale)
    checks.settle(60, 60)  # a sale Redis lost is rebuilt once its queue is quiet; owed orders need it
    drained = workload.drain(time.monotonic() + 120)
    state = checks.settle(STALL_SECONDS, max(240, args.seconds * 2))  # the email backlog grows with the load
    print(f"settled in {time.monotonic() - started:.0f}s: {state}; owed requests answered: {drained}", flush=True)
    return checks, nemesis, ledger, state


def report(args, checks, nemesis, ledger, state):
    started = time.monotonic()
    problems = checks.run()
    print(f"checked in {time.monotonic() - started:.0f}s", flush=True)
    if any(state.values()):
        problems["stuck"].append(f"did not settle: {state}")
    if ledger.retries:
        problems["lost"].append(f"{len(ledger.retries)} requests never answered")
    print(f"\nseed {args.seed}; faults by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(nemesis.tally.items())))
    kinds = collections_count(ledger)
    print("orders: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    for line in ledger.unexpected[:30]:
        print(f"unexpected answer: {line}")
    print(f"emails sent twice (SES accepted, the record was lost): {checks.emails_sent_twice()}")
    checks.print_dead_letters()
    for field in FIELDS:
        for line in problems.get(field, [])[:40]:
            print(f"{field}: {line}")
    if nemesis.faults < args.minimum:
        print(f"only {nemesis.faults} faults (wanted {args.minimum}): a slow machine; rerun with more --seconds")
    counts = {field: len(problems.get(field, [])) for field in FIELDS}
    common.print_result(faults=nemesis.faults, operations=ledger.operations, **counts)
    return 0 if not any(counts.values()) and not ledger.unexpected else 1


def collections_count(ledger):
    counts = {}
    for intent in ledger.intents:
        key = f"{intent.kind}:{intent.told}" + (f":{intent.error}" if intent.error else "")
        counts[key] = counts.get(key, 0) + 1
    counts.update(paid=len(ledger.paid), cancelled=len(ledger.cancelled), fulfilled=len(ledger.fulfilled))
    return counts


def main():
    args = parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the outages' warnings are the point; the processes log to files
    work = tempfile.mkdtemp(prefix="bench-chaos-")
    print(f"seed {args.seed}; {args.seconds:.0f}s of load; logs in {work} (removed if every check passes)", flush=True)
    stack = Stack(work, {"ORDER_PAYMENT_WINDOW_SECONDS": "6", "CUSTOMER_PAYMENT_WINDOW_SECONDS": "6",
                         "SQS_VISIBILITY_TIMEOUT": str(VISIBILITY), "FLASH_LEASE_MS": "20000",
                         "LAMBDA_TIMEOUT_SECONDS": str(VISIBILITY)})
    code = 1
    try:
        started = time.monotonic()
        stack.start_servers()
        stack.setup()
        print(f"servers up and set up in {time.monotonic() - started:.0f}s", flush=True)
        checks, nemesis, ledger, state = run(args, stack)
        code = report(args, checks, nemesis, ledger, state)
        return code
    finally:
        stack.close()
        if code == 0:  # the processes' logs are kept only when something was found
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

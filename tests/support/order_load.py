"""Order load for the invariant tests: buyers in threads and in separate
processes, each process with its own connections, as Lambda instances would be."""
import os
import random
import time

from chalicelib import bootstrap
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.orders import parse_batch
from tests.support.threads import run_together

RETRYABLE = {"SERVICE_UNAVAILABLE"}


def place_with_retry(service, order, attempts=30):
    """Place one order as a well-behaved client: retry transient failures (a
    retryable per-order result, or a 503 for the whole request). A retry is
    safe whatever happened: the same client_order_id is never placed twice."""
    for _ in range(attempts):
        try:
            result = service.place_batch(parse_batch({"orders": [order]}))["results"][0]
        except ServiceUnavailable:
            time.sleep(random.uniform(0.01, 0.05))
            continue
        if result["status"] == "created" or result["error"]["code"] not in RETRYABLE:
            return result
        time.sleep(random.uniform(0.001, 0.02))
    raise AssertionError(f"order {order['client_order_id']} still failing transiently after {attempts} attempts")


def run_buyers(strategy, orders, threads):
    """Place `orders` from `threads` threads, all released at once; returns results.
    Uses the composition root as the caller set it up (overrides included)."""
    service = bootstrap.orders(strategy)
    results = [None] * len(orders)

    def buyer(indexes):
        for i in indexes:
            results[i] = place_with_retry(service, orders[i])

    return results, run_together(buyer, [list(range(i, len(orders), threads)) for i in range(threads)])


def process_main(args):
    """Entry point of a spawned buyer process."""
    env, strategy, orders, threads = args
    os.environ.update(env)
    return run_buyers(strategy, orders, threads)

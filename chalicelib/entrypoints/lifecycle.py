"""The `lifecycle` function: every minute, it expires due orders and relays
the outbox until its invocation is nearly out of time (chalicelib/service/lifecycle.py)."""
import time

from chalicelib import bootstrap
from chalicelib.service import lifecycle

# Left for the last round to finish before Lambda's timeout.
MARGIN_SECONDS = 10


def handle_lifecycle(event, context=None):
    bootstrap.refuse_if_misconfigured()
    remaining = context.get_remaining_time_in_millis() / 1000 if context else 0
    until = time.monotonic() + max(0.0, remaining - MARGIN_SECONDS)
    expired, published = lifecycle.run(bootstrap.orders(), bootstrap.database(), bootstrap.event_publisher(), until)
    return {"expired": expired, "published": published}

"""The local stack's lifecycle loop (what the packaged `lifecycle` function
does every minute in AWS): prune old dedupe records, then expire due orders
and relay the outbox every half second, in passes of 30 s, until stopped. Started by `make run`."""
import logging
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chalicelib import bootstrap  # noqa: E402
from chalicelib.service import expiry_and_outbox  # noqa: E402

log = logging.getLogger("lifecycle")


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            pruned = expiry_and_outbox.prune_dedupe_records(bootstrap.outbox())
            if pruned:
                log.info("pruned %d dedupe records", pruned)
            expired, published = expiry_and_outbox.run(
                bootstrap.orders(), bootstrap.outbox(), bootstrap.event_publisher(),
                until=time.monotonic() + 30, interval=0.5, timers=bootstrap.expiry_timers())
            if expired or published:
                log.info("expired %d orders, published %d events", expired, published)
        except Exception as exc:  # MySQL or SNS down: wait and go on, as the scheduled function would
            log.warning("lifecycle round failed: %s", exc)
            time.sleep(2)


if __name__ == "__main__":
    main()

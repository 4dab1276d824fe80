"""Cache invalidation after a commit: at once (fence + generation bump), and
through the cache-invalidation queue so a write whose immediate invalidation
failed (Redis unreachable) is still applied once Redis answers again."""
import logging

from chalicelib.domain.errors import CacheUnavailable
from chalicelib.service.ports import ProductReads

log = logging.getLogger(__name__)


class Invalidator:
    def __init__(self, product_cache, publisher, queue_name):
        self.product_cache = product_cache
        self.publisher = publisher
        self.queue_name = queue_name

    def apply(self, versions, search=True):
        """Invalidate now; raises CacheUnavailable if Redis did not take it."""
        self.product_cache.invalidate(versions, bump_search=search)

    def after_commit(self, versions, search=True, enqueue=True):
        """Best effort, never raises: the write already committed.

        With `enqueue=False` the queue is used only when the immediate
        invalidation failed (the order hot path)."""
        applied = True
        try:
            self.apply(versions, search)
        except CacheUnavailable as exc:
            applied = False
            log.warning("cache invalidation deferred to queue: %s", exc)
        if enqueue or not applied:
            self.enqueue(list(versions), search)

    def enqueue(self, product_ids, search=True):
        body = {}
        if product_ids:
            body["product_ids"] = sorted(int(p) for p in product_ids)
        if search:
            body["search"] = True
        try:
            self.publisher.send(self.queue_name, body)
        except Exception:
            log.exception("could not enqueue cache invalidation %s", body)

    def handle_message(self, reads: ProductReads, body):
        """Apply one cache-invalidation message using the versions now in MySQL.
        Raises CacheUnavailable / ServiceUnavailable for SQS to redeliver."""
        versions = reads.versions(body.get("product_ids") or [])
        self.apply(versions, search=bool(body.get("search")) or bool(versions))

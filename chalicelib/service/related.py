""""Bought together" (docs/api.md, "Bought together"; docs/design.md): the
co-purchase counts a consumer of the order events keeps in MySQL, and the
cached ranking `GET /products/{id}/related` answers from.

Counting (`apply_many`): one transaction per SQS batch. It records each event
id in `related_events` (sorted); a redelivered event finds its row and
changes nothing (a concurrent duplicate waits on that key until the first
commits). The batch's pair changes are summed and upserted in one statement
in (product_id, other_id) order, the one order every consumer locks them in.

Reading (`related`): the ranking (partner ids and counts, best first, active
and in stock when ranked) is cached for RELATED_TTL_SECONDS. A TTL, not
invalidation by the consumer: a popular product's partners change with nearly
every order, so invalidating on each event would leave its ranking uncached
when it is read most; a TTL bounds both the staleness and the database reads
(one ranking query per product per TTL). The products themselves come from the
catalog's version-fenced cache, so a partner that sold out or was deactivated
after the ranking was cached is left out at once. The ranking is read from
the MySQL reader when there is one (its lag adds to the TTL's staleness); a
product the reader does not have yet is looked up on the writer."""
import json
from collections import Counter

from chalicelib.domain import related as rules
from chalicelib.domain.errors import CacheUnavailable, ProductNotFound
from chalicelib.service.ports import PairCounts

COUNTED, DUPLICATE, IGNORED = "counted", "duplicate", "ignored"


class RelatedProducts:
    def __init__(self, counts: PairCounts, gateway, catalog, ttl_seconds=30, lagging: PairCounts = None):
        self.counts, self.gateway, self.catalog = counts, gateway, catalog
        self.lagging = lagging   # the counts on the MySQL reader while it is usable; None: no reader
        self.ttl_seconds = max(1, int(ttl_seconds))

    # --- counting (the consumer) ----------------------------------------------

    def apply(self, event: rules.OrderEvent):
        """Apply one decoded order event once; returns COUNTED, DUPLICATE or IGNORED."""
        return self.apply_many([event])[event.event_id]

    def apply_many(self, events):
        """Apply decoded order events (one SQS batch) in one transaction, each
        event id once; returns {event_id: COUNTED | DUPLICATE | IGNORED}.

        Locks are taken in one global order, so concurrent batches cannot
        deadlock: the event ids sorted, then the pair rows sorted. The pair
        changes of the batch are summed first, so a hot pair is written once
        per batch rather than once per order."""
        outcomes = {e.event_id: IGNORED for e in events}
        counted = {}
        for event in events:
            if event.change:
                counted.setdefault(event.event_id, event)  # the same event twice in one batch counts once
        if not counted:
            return outcomes

        def work(tx):
            fresh = []
            for event_id in sorted(counted):
                first = tx.first_time(event_id)
                outcomes[event_id] = COUNTED if first else DUPLICATE
                if first:
                    fresh.append(counted[event_id])
            # A cancel or expiry takes back what the order's creation added: the order's own lines.
            lines = tx.order_lines(sorted({e.order_id for e in fresh if e.change < 0}))
            changes = Counter()
            for event in fresh:
                quantities = event.quantities if event.change > 0 else lines.get(event.order_id, {})
                for pair in rules.pair_rows(quantities):
                    changes[pair] += event.change
            tx.add(sorted((pair, n) for pair, n in changes.items() if n))

        self.counts.counting(work)
        return outcomes

    # --- reading (the route) ----------------------------------------------------

    def _key(self, product_id):
        return self.gateway.key(f"related:{product_id}")

    def _rank(self, product_id):
        """[(partner id, orders)] best first, active and in stock now; ProductNotFound if no such product."""
        ranking = self._rank_on(self.lagging, product_id) if self.lagging is not None else None
        if ranking is None:   # no reader, or maybe created since the reader's position: the writer knows
            ranking = self._rank_on(self.counts, product_id)
        if ranking is None:
            raise ProductNotFound(f"Product {product_id} does not exist.", product_id=product_id)
        return ranking

    @staticmethod
    def _rank_on(counts, product_id):
        """The ranking as `counts` has it, or None when it has no such product."""
        if not counts.product_exists(product_id):
            return None
        return counts.ranking(product_id, rules.CANDIDATES)

    def _ranking(self, product_id):
        """(ranking, X-Cache value)."""
        try:
            cached = self.gateway.call(lambda r: r.get(self._key(product_id)), key=self._key(product_id))
        except CacheUnavailable:
            return self._rank(product_id), "BYPASS"
        if cached is not None:
            return [tuple(pair) for pair in json.loads(cached)], "HIT"
        ranking = self._rank(product_id)
        try:
            self.gateway.call(lambda r: r.set(self._key(product_id), json.dumps(ranking), ex=self.ttl_seconds),
                              key=self._key(product_id))
        except CacheUnavailable:
            return ranking, "BYPASS"
        return ranking, "MISS"

    def related(self, product_id, limit=rules.DEFAULT_LIMIT):
        """({"product_id", "items": [{"product", "bought_together"}]}, X-Cache value)."""
        ranking, cache_state = self._ranking(product_id)
        items, start = [], 0
        # Partners are read a few more than asked at a time: most are still for sale.
        while len(items) < limit and start < len(ranking):
            chunk, start = ranking[start:start + 2 * limit], start + 2 * limit
            products = self.catalog.get_many([pid for pid, _ in chunk])
            for pid, orders in chunk:
                product = products.get(pid)
                if product is not None and product["status"] == "active" and product["stock"] > 0:
                    items.append({"product": product, "bought_together": orders})
                    if len(items) == limit:
                        break
        return {"product_id": product_id, "items": items}, cache_state

"""Search as a service: the SearchBackend seam, the read-through cache around
it (keys `product_search:{generation}:{sha256}`, one loader per hot key,
X-Cache HIT / MISS / BYPASS / STALE) and cache warming."""
import json
import logging
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol

from chalicelib.adapters.cache import CacheUnavailable
from chalicelib.domain.errors import ServiceUnavailable, ValidationError
from chalicelib.domain.search_query import SearchPage, SearchQuery, parse_query

log = logging.getLogger(__name__)


class SearchBackend(Protocol):
    def search(self, query: SearchQuery) -> SearchPage:
        """One page of active products matching `query`; raises ServiceUnavailable."""

    def index(self, cur, rows) -> None:
        """(Re)index full product rows inside the product write transaction `cur`."""


def _jitter_ms(seconds):
    return max(1, int(seconds * 1000 * random.uniform(0.9, 1.1)))


class SearchService:
    """Read-through cache around a SearchBackend.

    Freshness: the generation is read *before* the backend is queried, and
    every product write bumps it after commit. A reader that raced a write
    stores its (possibly old) page under the old generation, which no request
    reads once the write has returned."""

    LEASE_MS = 3000
    WAIT_SECONDS = 0.3
    POPULAR_DAYS = 2

    def __init__(self, backend, gateway, generation, ttl_seconds=60, stale_seconds=86400, clock=time.time):
        self.backend = backend
        self.gateway = gateway
        self.generation = generation
        self.ttl_seconds = ttl_seconds
        self.stale_seconds = stale_seconds
        self.clock = clock

    def key(self, generation, query):
        return self.gateway.key(f"product_search:{generation}:{query.cache_hash}")

    def stale_key(self, query):
        return self.gateway.key(f"product_search:stale:{query.cache_hash}")

    def popular_key(self, day=None):
        day = day or datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y%m%d")
        return self.gateway.key(f"product_search:popular:{day}")

    def search_params(self, params):
        return self.search(parse_query(params))

    def search(self, query):
        """(page dict, X-Cache state)."""
        try:
            generation = self.generation.current()
        except CacheUnavailable:
            return self.backend.search(query).to_api(), "BYPASS"
        key = self.key(generation, query)
        try:
            cached = self._get(key, query)
        except CacheUnavailable:
            return self.backend.search(query).to_api(), "BYPASS"
        if cached is not None:
            return cached, "HIT"
        return self._load(key, query)

    def _get(self, key, query):
        record = query.after is None and bool(query.terms or query.category)

        def fn(r):
            if not record:
                return r.get(key)
            pipe = r.pipeline(transaction=False)
            pipe.get(key)
            popular = self.popular_key()
            pipe.zincrby(popular, 1, query.popularity_member())
            pipe.expire(popular, 86400 * (self.POPULAR_DAYS + 1))
            return pipe.execute()[0]

        raw = self.gateway.call(fn)
        return json.loads(raw) if raw is not None else None

    def _load(self, key, query):
        lease = key + ":loading"
        try:
            leader = bool(self.gateway.call(lambda r: r.set(lease, "1", nx=True, px=self.LEASE_MS)))
        except CacheUnavailable:
            return self._from_backend(query, None)
        if not leader:
            deadline = time.monotonic() + self.WAIT_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.01)
                try:
                    raw = self.gateway.call(lambda r: r.get(key))
                except CacheUnavailable:
                    break
                if raw is not None:
                    return json.loads(raw), "HIT"
        try:
            return self._from_backend(query, key)
        finally:
            if leader:
                try:
                    self.gateway.call(lambda r: r.delete(lease))
                except CacheUnavailable:
                    pass

    def _from_backend(self, query, key):
        try:
            page = self.backend.search(query).to_api()
        except ServiceUnavailable:
            try:
                raw = self.gateway.call(lambda r: r.get(self.stale_key(query)))
            except CacheUnavailable:
                raw = None
            if raw is None:
                raise
            return json.loads(raw), "STALE"
        if key is None:
            return page, "BYPASS"
        payload = json.dumps(page, separators=(",", ":"), ensure_ascii=False)

        def store(r):
            pipe = r.pipeline(transaction=False)
            pipe.set(key, payload, px=_jitter_ms(self.ttl_seconds))
            pipe.set(self.stale_key(query), payload, px=_jitter_ms(self.stale_seconds))
            pipe.execute()

        try:
            self.gateway.call(store)
        except CacheUnavailable:
            return page, "BYPASS"
        return page, "MISS"

    # --- warming ----------------------------------------------------------

    def popular_searches(self, n=50):
        """The most frequent first-page searches of the last POPULAR_DAYS days."""
        now = self.clock()
        days = [datetime.fromtimestamp(now, timezone.utc) - timedelta(days=d) for d in range(self.POPULAR_DAYS)]
        keys = [self.popular_key(d.strftime("%Y%m%d")) for d in days]
        scores = {}
        for k in keys:
            for member, score in self.gateway.call(lambda r: r.zrevrange(k, 0, 999, withscores=True)):
                scores[member] = scores.get(member, 0) + score
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:n]
        # Keep the sets small: only the top 1000 of each day survive.
        for k in keys:
            self.gateway.call(lambda r: r.zremrangebyrank(k, 0, -1001))
        return [json.loads(member) for member, _ in ranked]


def top_product_ids(db, n=100, recent_orders=100000):
    """Best sellers among recent orders, topped up with the newest active products."""
    ids = []
    try:
        rows = db.query(
            "SELECT oi.product_id AS id FROM order_items oi JOIN products p ON p.id = oi.product_id "
            "WHERE p.status = 'active' AND oi.order_id > (SELECT COALESCE(MAX(id), 0) - %s FROM orders) "
            "GROUP BY oi.product_id ORDER BY SUM(oi.quantity) DESC LIMIT %s", (recent_orders, n))
        ids = [int(r["id"]) for r in rows]
    except ServiceUnavailable:
        raise
    except Exception as exc:  # the orders tables may not exist yet in some deployments
        log.warning("best sellers unavailable: %s", exc)
    if len(ids) < n:
        rows = db.query("SELECT id FROM products WHERE status = 'active' ORDER BY created_at DESC LIMIT %s", (n,))
        ids += [int(r["id"]) for r in rows if int(r["id"]) not in ids]
    return ids[:n]


def warm_caches(catalog, db, svc: SearchService, top_products=100, searches=(), popular=50):
    """Preload the product cache for the top products and the frequent searches
    (given ones plus the most popular recorded ones). Returns a summary dict."""
    summary = {"products": {}, "searches": {}, "errors": 0}
    for pid in top_product_ids(db, top_products):
        try:
            _, state = catalog.get(pid)
        except Exception as exc:
            summary["errors"] += 1
            log.warning("warming product %s failed: %s", pid, exc)
            continue
        summary["products"][state] = summary["products"].get(state, 0) + 1
    wanted = [dict(p) for p in searches]
    try:
        wanted += svc.popular_searches(popular)
    except CacheUnavailable as exc:
        log.warning("popular searches unavailable: %s", exc)
    seen = set()
    for params in wanted:
        try:
            query = parse_query(params)
        except ValidationError as exc:
            summary["errors"] += 1
            log.warning("skipping search %s: %s", params, exc.message)
            continue
        if query.cache_hash in seen:
            continue
        seen.add(query.cache_hash)
        try:
            _, state = svc.search(query)
        except Exception as exc:
            summary["errors"] += 1
            log.warning("warming search %s failed: %s", params, exc)
            continue
        summary["searches"][state] = summary["searches"].get(state, 0) + 1
    return summary

"""Search as a service: the read-through cache around the SearchBackend port
it (keys `product_search:{generation}:{sha256}`, one loader per hot key,
X-Cache HIT / MISS / BYPASS / STALE) and cache warming."""
import copy
import json
import logging
import random
import time
from datetime import datetime, timedelta, timezone

from chalicelib.domain.errors import CacheUnavailable, RateLimited, ServiceUnavailable, StoreFull, ValidationError
from chalicelib.domain.search_query import cut_page, generation_born_ms, parse_query
from chalicelib.service.ports import ProductReads, SearchBackend

log = logging.getLogger(__name__)


def _jitter_ms(seconds):
    return max(1, int(seconds * 1000 * random.uniform(0.9, 1.1)))


# KEYS[1]: the day's popular set, KEYS[2]: this key's counts of the day.
# ARGV: member, per-member cap, distinct-members cap, ttl seconds. A key adds
# at most the per-member cap to one search and counts at most the distinct cap
# of searches a day, so no caller can steer what the warmer replays.
_COUNT_POPULAR = """
local mine = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if mine >= tonumber(ARGV[2]) then return 0 end
if mine == 0 and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZINCRBY', KEYS[1], 1, ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class SearchService:
    """Read-through cache around a SearchBackend.

    Freshness: the generation is read *before* the backend is queried, and
    every product write bumps it after commit. A reader that raced a write
    stores its (possibly old) page under the old generation, which no request
    reads once the write has returned.

    With a MySQL reader (adapters/readers.py) uncached searches run there while
    it is usable. A reader's page is cached only when the snapshot it was read
    from provably had every write committed before the generation was made
    (the heartbeat stamp the search's transaction read first is later than
    the generation's birth); otherwise it is answered (MISS) but not cached,
    so a lagging reader never puts an old page under a new generation.

    Cost: the backend answers and the cache stores pages of a few fixed sizes
    (SearchQuery.backend_query) cut to the requested limit; a caller's
    uncached searches draw on a budget of backend milliseconds per minute
    (429 when it is spent; cached answers are still served)."""

    LEASE_MS = 3000
    WAIT_SECONDS = 0.3
    POPULAR_DAYS = 2
    POPULAR_PER_KEY_SEARCH = 100     # a key adds at most this to one search's daily count
    POPULAR_SEARCHES_PER_KEY = 500   # and counts at most this many distinct searches a day
    # The most a cached page (fresh or stale) may take. The seeded demo catalog's 100-item pages
    # are 36-41 KB; a page of products with the longest descriptions validation allows would be
    # ~4 MB, twice over (fresh and stale copy). Larger pages are answered, not cached (BYPASS).
    MAX_PAGE_BYTES = 256 * 1024

    def __init__(self, backend: SearchBackend, gateway, generation, state, cursors, ttl_seconds=60,
                 stale_seconds=86400, clock=time.time, budget_ms=30000, readers=None, reader_backend=None):
        self.backend = backend
        self.readers = readers
        self.reader_backend = reader_backend   # the same backend over the reader (None: no reader)
        self.cursors = cursors        # signs the next_cursor handed out, verifies the one sent back
        self.gateway = gateway        # the cache Redis: pages, their stale copies, loader leases, popular counts
        self.generation = generation
        self.state = state            # the state Redis: the search budgets
        self.ttl_seconds = ttl_seconds
        self.stale_seconds = stale_seconds
        self.clock = clock
        self.budget_ms = budget_ms

    # A query's page, its stale copy and its loader lease share the query's hash as hash tag
    # (stored in one pipeline to one master on a cluster).
    def key(self, generation, query):
        return self.gateway.key(f"product_search:{generation}:{query.cache_hash}", tag=query.cache_hash)

    def stale_key(self, query):
        return self.gateway.key(f"product_search:stale:{query.cache_hash}", tag=query.cache_hash)

    def popular_key(self, day=None):
        # A day's counts share the day as hash tag: _COUNT_POPULAR touches two of them.
        day = day or datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y%m%d")
        return self.gateway.key(f"product_search:popular:{day}", tag=day)

    def budget_key(self, caller, minute):
        return self.state.key(f"search_budget:{caller}:{minute}")

    def on_writer(self):
        """This service with every uncached search on the writer: for a caller who writes the
        catalog and must find what they just changed (read-your-writes)."""
        view = copy.copy(self)
        view.reader_backend = None
        return view

    def search_params(self, params, caller=None, budget_holder=None):
        """A caller's search: its cursor is verified before anything is read or cached."""
        params = dict(params or {})
        if params.get("cursor"):
            params["cursor"] = self.cursors.verify(params["cursor"])
        return self.search(parse_query(params), caller, budget_holder)

    def search(self, query, caller=None, budget_holder=None):
        """(page dict, X-Cache state). `caller` (an API key id) is counted in the popular
        searches and charged for uncached work, unless a `budget_holder` (a person on a key
        every app install shares) is charged instead; None (the warmer, tools): neither."""
        cached, state = self._search(query.backend_query(), budget_holder or caller)
        if caller is not None and query.after is None and (query.terms or query.category) and cached["total"] > 0:
            self._count_popular(query, caller)
        page = cut_page(cached, query)
        if page["next_cursor"]:
            page["next_cursor"] = self.cursors.sign(page["next_cursor"])
        return page, state

    def _search(self, query, caller):
        try:
            generation = self.generation.current()
        except CacheUnavailable:
            return self._from_backend(query, None, caller)
        key = self.key(generation, query)
        try:
            raw = self.gateway.call(lambda r: r.get(key), key=key)
        except CacheUnavailable:
            return self._from_backend(query, None, caller)
        if raw is not None:
            return json.loads(raw), "HIT"
        return self._load(key, query, caller, generation_born_ms(generation))

    def _count_popular(self, query, caller):
        day = datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y%m%d")
        script = self.gateway.script(_COUNT_POPULAR)
        try:
            self.gateway.call(lambda r: script(
                keys=[self.popular_key(day), self.gateway.key(f"product_search:popular:{day}:by:{caller}", tag=day)],
                args=[query.popularity_member(), self.POPULAR_PER_KEY_SEARCH, self.POPULAR_SEARCHES_PER_KEY,
                      86400 * (self.POPULAR_DAYS + 1)],
                client=r), key=self.popular_key(day))
        except CacheUnavailable:
            pass   # only warming loses

    def _load(self, key, query, caller, born_ms=None):
        lease = key + ":loading"
        try:
            leader = bool(self.gateway.call(lambda r: r.set(lease, "1", nx=True, px=self.LEASE_MS), key=lease))
        except CacheUnavailable:
            return self._from_backend(query, None, caller)
        if not leader:
            deadline = time.monotonic() + self.WAIT_SECONDS
            while time.monotonic() < deadline:
                time.sleep(0.01)
                try:
                    raw = self.gateway.call(lambda r: r.get(key), key=key)
                except CacheUnavailable:
                    break
                if raw is not None:
                    return json.loads(raw), "HIT"
        try:
            return self._from_backend(query, key, caller, born_ms)
        finally:
            if leader:
                try:
                    self.gateway.call(lambda r: r.delete(lease), key=lease)
                except CacheUnavailable:
                    pass

    def _check_budget(self, caller):
        """Raise RateLimited when `caller` spent its backend milliseconds of
        this minute; returns the budget key to charge (None: not metered)."""
        if caller is None or not self.budget_ms:
            return None
        now = self.clock()
        key = self.budget_key(caller, int(now // 60))

        def read(r):
            # The minute's counter is made here, not only by the charge: a state store too full to
            # take the charge refuses this write, so the search is refused before it runs.
            pipe = r.pipeline(transaction=False)
            pipe.set(key, 0, nx=True, ex=120)
            pipe.get(key)
            return pipe.execute()[1]

        try:
            spent = int(self.state.call(read, key=key) or 0)
        except StoreFull as exc:
            raise ServiceUnavailable("The search budget store is full, so uncached searches cannot be metered; "
                                     "cached searches still answer. Retry shortly.",
                                     details={"reason": "state_store_full"}) from exc
        except CacheUnavailable:
            return None   # fails open, like the rate limit
        if spent >= self.budget_ms:
            raise RateLimited(f"This API key (or, on an app's key, this caller) used its search budget "
                              f"({self.budget_ms} ms of database time a minute); cached searches still answer.",
                              retry_after=max(1, 60 - int(now % 60)),
                              details={"reason": "search_budget", "budget_ms": self.budget_ms})
        return key

    def _charge(self, key, started):
        spent_ms = max(1, int((time.monotonic() - started) * 1000))

        def fn(r):
            pipe = r.pipeline(transaction=False)
            pipe.incrby(key, spent_ms)
            pipe.expire(key, 120)
            pipe.execute()

        try:
            self.state.call(fn, key=key)
        except CacheUnavailable:
            pass   # down (fails open), or full since the check (the next check refuses)

    def _run(self, query, born_ms):
        """(page, whether it may be cached under the generation born at `born_ms`)."""
        if self.reader_backend is None:
            return self.backend.search(query), True

        def on(db):
            if db is not self.readers.reader:
                return self.backend.search(query), True
            page = self.reader_backend.search(query)   # on readers.stamped: its snapshot's stamp is kept
            return page, self.readers.covers(born_ms)

        return self.readers.read(on)[0]

    def _from_backend(self, query, key, caller, born_ms=None):
        budget = self._check_budget(caller)
        started = time.monotonic()
        try:
            page, cacheable = self._run(query, born_ms)
            page = page.to_cache()
        except ServiceUnavailable:
            try:
                raw = self.gateway.call(lambda r: r.get(self.stale_key(query)), key=self.stale_key(query))
            except CacheUnavailable:
                raw = None
            if raw is None:
                raise
            return json.loads(raw), "STALE"
        finally:
            if budget is not None:
                self._charge(budget, started)
        if key is None:
            return page, "BYPASS"
        if not cacheable:
            return page, "MISS"   # from a reader that may not have the write that made this generation
        payload = json.dumps(page, separators=(",", ":"), ensure_ascii=False).encode()
        if len(payload) > self.MAX_PAGE_BYTES:
            return page, "BYPASS"   # answered from MySQL every time, and metered as such

        def store(r):
            pipe = r.pipeline(transaction=False)
            pipe.set(key, payload, px=_jitter_ms(self.ttl_seconds))
            pipe.set(self.stale_key(query), payload, px=_jitter_ms(self.stale_seconds))
            pipe.execute()

        try:
            self.gateway.call(store, key=key)
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


def top_product_ids(reads: ProductReads, n=100, recent_orders=100000):
    """Best sellers among recent orders, topped up with the newest active products."""
    ids = []
    try:
        ids = reads.best_sellers(n, recent_orders)
    except ServiceUnavailable:
        raise
    except Exception as exc:  # the orders tables may not exist yet in some deployments
        log.warning("best sellers unavailable: %s", exc)
    if len(ids) < n:
        ids += [pid for pid in reads.newest_active(n) if pid not in ids]
    return ids[:n]


def warm_caches(catalog, reads: ProductReads, svc: SearchService, top_products=100, searches=(), popular=50):
    """Preload the product cache for the top products and the frequent searches
    (given ones plus the most popular recorded ones). Returns a summary dict."""
    summary = {"products": {}, "searches": {}, "errors": 0}
    for pid in top_product_ids(reads, top_products):
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

"""Redis: product cache, search cache generation, short timeouts and a breaker.

Freshness (docs/design.md invariant 5): every cached product carries its version, and
each product has a version *fence* that writers raise after commit. A reader
that loaded an old row before a write can never put it back: the Lua script
refuses any copy older than the fence or than the copy already cached.

Redis Cluster (`redis+cluster://` or `rediss+cluster://`): every key that a script,
pipeline or MULTI shares with others carries a hash tag (`RedisGateway.key(name, tag)`),
so each one touches one slot; a single node keeps the names it always had.
"""
import json
import logging
import queue
import random
import secrets
import ssl
import threading
import time

from chalicelib.adapters.breaker import CircuitBreaker, CircuitOpen
from chalicelib.domain.errors import CacheUnavailable, StoreFull
from chalicelib.adapters.redis_cluster import ClusterRouting, Script, any_node_cluster, is_cluster_url

log = logging.getLogger(__name__)


# KEYS: data key, fence key. ARGV: version, soft expiry (ms epoch), json, data ttl ms
_PUT_IF_NEWER = """
local v = tonumber(ARGV[1])
local fence = tonumber(redis.call('GET', KEYS[2]) or '-1')
if v < fence then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur then
  local cv = tonumber(string.match(cur, '^(%d+)|'))
  if cv and cv >= v then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3], 'PX', ARGV[4])
return 1
"""

# A write's products: KEYS are (data key, fence key) pairs, ARGV their versions.
# Fences carry no TTL: the cache Redis evicts only keys that have one (volatile-lfu).
_INVALIDATE = """
for i = 1, #KEYS, 2 do
  local v = tonumber(ARGV[(i + 1) / 2])
  local fence = tonumber(redis.call('GET', KEYS[i + 1]) or '-1')
  if v > fence then redis.call('SET', KEYS[i + 1], v) end
  local cur = redis.call('GET', KEYS[i])
  if cur then
    local cv = tonumber(string.match(cur, '^(%d+)|'))
    if (not cv) or cv < v then redis.call('DEL', KEYS[i]) end
  end
end
return 1
"""

# KEYS[1]: the search generation. ARGV[1]: a new one, taken if there is none.
_CURRENT_GENERATION = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

SEARCH_GENERATION_KEY = "product_search:generation"


def new_generation():
    """A random search generation: one that was lost (or flushed) is never taken again, so pages
    cached under an old one cannot come back, as they could if a counter restarted at 0. It ends
    in its birth (epoch ms), after the commit of the write that made it: a MySQL reader whose
    heartbeat is later had that write, so its pages may be cached under it (service/search.py)."""
    return f"{secrets.token_hex(8)}-{int(time.time() * 1000)}"


class RedisGateway(ClusterRouting):
    """Every Redis call goes through `call`: short socket timeouts plus a
    breaker, so a dead Redis costs a request microseconds, not a timeout.
    On a cluster each master has its breaker: a dead shard fails only the keys it held."""

    def __init__(self, url, timeout=0.25, prefix="", max_connections=64, ca_file=None):
        import redis  # lazy: a third of app.py's import time; only paid once Redis is used
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if "{" in prefix or "}" in prefix:
            raise ValueError("REDIS_KEY_PREFIX must not hold { or }: the hash tag after it picks the slot")
        self.url = url
        self.cluster = is_cluster_url(url)
        url = url.replace("+cluster://", "://", 1)
        # Every key starts with `prefix`, so test runs share a Redis without touching each other.
        self.prefix = prefix
        self.breaker = CircuitBreaker("redis", failure_threshold=2, reset_after=1.0)
        self._breakers = {}
        # rediss:// (ElastiCache in transit encryption): the server's certificate
        # must chain to our CA file, not to whatever the OS happens to trust.
        tls = {"ssl_ca_certs": ca_file, "ssl_cert_reqs": "required", "ssl_check_hostname": True,
               "ssl_min_version": ssl.TLSVersion.TLSv1_2} if url.startswith("rediss://") and ca_file else {}
        # A bounded pool that waits for a free connection: many threads share
        # it (local server, benchmarks) without opening a connection each.
        options = dict(max_connections=max_connections, timeout=1.0, socket_timeout=timeout,
                       socket_connect_timeout=timeout, health_check_interval=30, decode_responses=True, **tls)
        # No client-side retries (redis-py retries 3 times with backoff by
        # default): the breaker decides, and a dead Redis must cost one timeout.
        self._client, self._connecting = None, threading.Lock()
        if self.cluster:
            # One such pool per master. Made on the first call, not here: RedisCluster reads the
            # slot map when made, and a cluster down at cold start must cost a call, not the process.
            self._connect = lambda: any_node_cluster().from_url(
                url, connection_pool_class=redis.BlockingConnectionPool, retry=Retry(NoBackoff(), 0), **options)
        else:
            pool = redis.BlockingConnectionPool.from_url(url, **options)
            self._client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        # SlotNotCoveredError: the slot map lost a master; not a RedisError in redis-py. (Its parent,
        # RedisClusterException, also says "keys of several slots": a bug, left to fail loudly.)
        self._errors = (redis.exceptions.RedisError, OSError, redis.exceptions.SlotNotCoveredError)
        self._unreachable = redis.exceptions.RedisClusterException   # no node gave the slot map
        self._out_of_memory = redis.exceptions.OutOfMemoryError
        self._scripts = {}

    @property
    def client(self):
        if self._client is None:
            with self._connecting:
                if self._client is None:
                    self._client = self._connect()
        return self._client

    def key(self, name, tag=None):
        """`name` under the prefix. With `tag` (never empty), on a cluster the key starts with
        `{tag}`: keys of one tag share a slot, so one script or MULTI may touch them all."""
        if tag is not None and self.cluster:
            return f"{self.prefix}{{{tag}}}{name}"
        return self.prefix + name

    def close(self):
        """Close the idle pooled connections; the pool stays usable and reconnects on demand.

        Not redis-py's `disconnect(inuse_connections=False)`: it lists the idle
        connections under its lock but closes them after releasing it, so one
        handed to another thread in between is closed under that thread's
        command (AttributeError: 'NoneType' object has no attribute 'readline').
        Taking them out of the pool's queue first means nobody else holds them."""
        if self._client is None:
            return
        if self.cluster:
            pools = [node.redis_connection.connection_pool for node in self._client.get_nodes()
                     if node.redis_connection is not None]
        else:
            pools = [self.client.connection_pool]
        for pool in pools:
            self._close_idle(pool)

    @staticmethod
    def _close_idle(pool):
        idle = pool.pool
        taken = []
        while True:
            try:
                taken.append(idle.get_nowait())
            except queue.Empty:
                break
        for connection in taken:
            if connection is not None:
                connection.disconnect()
        for connection in taken:
            idle.put_nowait(connection)

    def script(self, source):
        if source not in self._scripts:
            self._scripts[source] = Script(source, None if self.cluster else self.client.register_script(source))
        return self._scripts[source]

    def call(self, fn, key=None):
        """fn(client)'s result; `key` (any key the call touches) picks a cluster master's breaker."""
        if self._client is None:
            self._reach_cluster()
        breaker = self._breaker(key)
        try:
            if breaker is not None:
                breaker.before_call()
        except CircuitOpen as exc:
            raise CacheUnavailable(str(exc)) from None
        try:
            result = fn(self.client)
        except self._out_of_memory as exc:
            if breaker is not None:
                breaker.record_success()
            log.warning("redis is full: %s", exc)
            raise StoreFull(str(exc)) from exc
        except self._errors as exc:
            # Any Redis failure (unreachable, READONLY replica mid-failover, pool
            # exhausted) degrades to "no cache"; the breaker always learns the outcome.
            if breaker is not None:
                breaker.record_failure()
            log.warning("redis unavailable: %s", exc)
            raise CacheUnavailable(str(exc)) from exc
        if breaker is not None:
            breaker.record_success()
        return result

    def ping(self):
        try:
            return bool(self.call(lambda r: r.ping()))
        except CacheUnavailable:
            return False


def _jitter(seconds):
    return int(seconds * 1000 * random.uniform(0.9, 1.1))


class ProductCache:
    """`product:{id}` -> "version|soft_expiry_ms|json". Past the soft expiry the
    copy is reloaded from MySQL; it is kept (hard TTL) only to answer STALE
    while MySQL is down. A product's copy, fence and loader lease share its id as
    hash tag; an invalidation runs its script once per slot on a cluster."""

    def __init__(self, gateway, ttl_seconds=300, stale_seconds=86400):
        self.gateway = gateway
        self.ttl_seconds = ttl_seconds
        self.stale_seconds = stale_seconds

    def key(self, product_id):
        return self.gateway.key(f"product:{product_id}", tag=product_id)

    def fence_key(self, product_id):
        return self.gateway.key(f"product:{product_id}:fence", tag=product_id)

    def get(self, product_id):
        """(product dict or None, fresh: bool). Raises CacheUnavailable."""
        key = self.key(product_id)
        raw = self.gateway.call(lambda r: r.get(key), key=key)
        if raw is None:
            return None, False
        _, soft_expiry, payload = raw.split("|", 2)
        return json.loads(payload), int(soft_expiry) > time.time() * 1000

    def get_many(self, product_ids):
        """{id: product} of the fresh copies among `product_ids`, in one round trip. Raises CacheUnavailable."""
        if not product_ids:
            return {}
        keys = [self.key(pid) for pid in product_ids]
        if self.gateway.cluster:
            # One GET per key, per master: a dead master's products are misses, the others answer.
            raws = self.gateway.per_master([(key, lambda pipe, key=key: pipe.get(key)) for key in keys])
            failed = [raw for raw in raws if isinstance(raw, CacheUnavailable)]
            if failed and len(failed) == len(raws):
                raise failed[0]
            raws = [None if isinstance(raw, CacheUnavailable) else raw for raw in raws]
        else:
            raws = self.gateway.call(lambda r: r.mget(keys))
        now_ms = time.time() * 1000
        fresh = {}
        for pid, raw in zip(product_ids, raws):
            if raw is not None:
                _, soft_expiry, payload = raw.split("|", 2)
                if int(soft_expiry) > now_ms:
                    fresh[pid] = json.loads(payload)
        return fresh

    def put(self, product):
        """Cache `product` unless a newer version is cached or fenced; True if stored."""
        soft_expiry = int(time.time() * 1000) + _jitter(self.ttl_seconds)
        script = self.gateway.script(_PUT_IF_NEWER)
        pid = product["id"]
        key = self.key(pid)
        stored = self.gateway.call(
            lambda r: script(
                keys=[key, self.fence_key(pid)],
                args=[product["version"], soft_expiry, json.dumps(product, separators=(",", ":")),
                      _jitter(self.stale_seconds)],
                client=r,
            ),
            key=key,
        )
        return bool(stored)

    def invalidate(self, versions, bump_search=False):
        """Raise each product's fence to its committed version, drop older
        copies and, with `bump_search`, invalidate every cached search.
        `versions` maps product id -> version now in MySQL."""
        if not versions and not bump_search:
            return
        script = self.gateway.script(_INVALIDATE)
        # One script call per slot (a single node: one for all) and the new search generation, one
        # pipeline per master. Their order does not matter: all follow the commit. A master that did
        # not take its part raises, once the others took theirs (the queue applies it again).
        by_slot = {}
        for pid, version in sorted(versions.items()):
            keys, args = by_slot.setdefault(self.gateway.slot(self.key(pid)), ([], []))
            keys += [self.key(pid), self.fence_key(pid)]
            args.append(int(version))
        commands = [(keys[0], lambda pipe, keys=keys, args=args: script.once_in(pipe, keys, args))
                    for keys, args in by_slot.values()]
        if bump_search:
            generation = self.gateway.key(SEARCH_GENERATION_KEY)
            commands.append((generation, lambda pipe: pipe.set(generation, new_generation())))
        failed = [r for r in self.gateway.per_master(commands) if isinstance(r, CacheUnavailable)]
        if failed:
            raise failed[0]

    def acquire_loader(self, product_id, lease_ms=2000):
        """One loader per hot key on a miss: True for the caller that should load."""
        key = f"{self.key(product_id)}:loading"
        return bool(self.gateway.call(lambda r: r.set(key, "1", nx=True, px=lease_ms), key=key))

    def release_loader(self, product_id):
        key = f"{self.key(product_id)}:loading"
        self.gateway.call(lambda r: r.delete(key), key=key)


class SearchGeneration:
    """One SET of a new generation invalidates every cached search: keys embed the generation."""

    def __init__(self, gateway):
        self.gateway = gateway

    def current(self):
        script = self.gateway.script(_CURRENT_GENERATION)
        key = self.gateway.key(SEARCH_GENERATION_KEY)
        return self.gateway.call(lambda r: script(keys=[key], args=[new_generation()], client=r), key=key)

    def bump(self):
        generation, key = new_generation(), self.gateway.key(SEARCH_GENERATION_KEY)
        self.gateway.call(lambda r: r.set(key, generation), key=key)
        return generation

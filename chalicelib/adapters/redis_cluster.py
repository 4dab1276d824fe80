"""What the Redis gateway (adapters/cache.py) needs to speak Redis Cluster besides redis-py's
RedisCluster: which URLs mean a cluster, routing by slot and master (a breaker per master),
and scripts a cluster can run."""
import functools
import hashlib
import logging

from chalicelib.adapters.breaker import CircuitBreaker, CircuitOpen
from chalicelib.domain.errors import CacheUnavailable

log = logging.getLogger("chalicelib.adapters.cache")

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def is_cluster_url(url):
    return url.startswith(CLUSTER_SCHEMES)


class Script:
    """A Lua script; on a single node redis-py's registered one. On a cluster it is never loaded
    with SCRIPT LOAD, which redis-py sends to every master (one dead master would fail every
    call of a script some live master had not run yet): EVALSHA, and EVAL where the master
    lacks it, which caches it there. In a cluster pipeline, which refuses EVALSHA, always EVAL, sent
    to the master of its keys.
    `script` (the source) and `sha` as on redis-py's (bench/flash pipelines them itself)."""

    def __init__(self, source, registered=None):
        from redis.client import Pipeline
        from redis.cluster import ClusterPipeline
        from redis.exceptions import NoScriptError

        self.script, self.registered = source, registered
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._pipeline, self._cluster_pipeline, self._no_script = Pipeline, ClusterPipeline, NoScriptError

    def __call__(self, keys=(), args=(), client=None):
        if self.registered is not None:
            return self.registered(keys=keys, args=args, client=client)
        if isinstance(client, self._cluster_pipeline):
            # (ClusterPipeline.eval is a stub that takes no script.) The master is named: unnamed,
            # the pipeline asks its client's default node for an EVAL's keys (COMMAND GETKEYS), so
            # with that one master dead the scripts of every live master would fail too.
            master = {"target_nodes": client.nodes_manager.get_node_from_slot(client.keyslot(keys[0]))} if keys else {}
            return client.execute_command("EVAL", self.script, len(keys), *keys, *args, **master)
        try:
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except self._no_script:
            return client.execute_command("EVAL", self.script, len(keys), *keys, *args)

    def once_in(self, pipe, keys=(), args=()):
        """The script's one call in a pipeline: EVAL with its source. redis-py asks Redis whether
        a registered script is loaded (SCRIPT EXISTS) before a pipeline that carries it, a round
        trip more; a pipeline of many calls of one script (a flash batch's admissions) is cheaper
        that way, through __call__, than with the source in every call."""
        if isinstance(pipe, self._pipeline):
            return pipe.execute_command("EVAL", self.script, len(keys), *keys, *args)
        return self(keys=keys, args=args, client=pipe)


class ClusterRouting:
    """RedisGateway's slot and master routing; on a single node one slot, one master, one breaker."""

    def slot(self, key):
        """The cluster slot of `key` (0 on a single node: every key is together)."""
        from redis.crc import key_slot

        return key_slot(key.encode()) if self.cluster else 0

    def _breaker(self, key):
        """The breaker of the master that serves `key` (cluster), else the one breaker.
        A cluster call without a key (a pipeline over several slots) has none: it costs
        at most one socket timeout per call while a master is dead."""
        if not self.cluster:
            return self.breaker
        node = None if key is None else self._node(key)
        if node is None:
            return None
        breaker = self._breakers.get(node)
        if breaker is None:
            breaker = self._breakers.setdefault(node, CircuitBreaker(f"redis {node}", failure_threshold=2,
                                                                     reset_after=1.0))
        return breaker

    def per_master(self, commands):
        """[(key, add(pipe))]: one pipeline per master (one in all on a single node), each behind its
        master's breaker, as a cluster pipeline that meets a dead master sends nothing to the live
        ones. Results in order, a CacheUnavailable in place of those a master did not run (raised
        when no node answers for the slot map)."""
        groups = {}
        for i, (key, _) in enumerate(commands):
            groups.setdefault(self._master(key), []).append(i)
        results = [None] * len(commands)
        for indexes in groups.values():
            def run(r, indexes=indexes):
                pipe = r.pipeline(transaction=False)
                for i in indexes:
                    commands[i][1](pipe)
                return pipe.execute()

            try:
                replies = self.call(run, key=commands[indexes[0]][0])
            except CacheUnavailable as exc:
                replies = [exc] * len(indexes)
            for i, reply in zip(indexes, replies):
                results[i] = reply
        return results

    def _master(self, key):
        if not self.cluster:
            return None
        if self._client is None:
            self._reach_cluster()
        return self._node(key) or self.slot(key)

    def _node(self, key):
        """The name of the master that serves `key`, None while the slot map is being rebuilt."""
        try:
            return self.client.nodes_manager.get_node_from_slot(self.slot(key)).name
        except Exception:
            return None

    def _reach_cluster(self):
        """Make the cluster client (reads the slot map), behind the gateway's own breaker."""
        try:
            self.breaker.before_call()
        except CircuitOpen as exc:
            raise CacheUnavailable(str(exc)) from None
        try:
            self.client
        except (*self._errors, self._unreachable) as exc:
            self.breaker.record_failure()
            log.warning("redis cluster unreachable: %s", exc)
            raise CacheUnavailable(str(exc)) from exc
        self.breaker.record_success()


@functools.cache
def any_node_cluster():
    """redis.RedisCluster, except that it takes its command table from any master that answers.
    redis-py asks only the master of slot 0 when a client is made, so with that one master down
    no client could be made and every key would bypass the cache, not just that master's.
    Made on first use: redis is imported lazily."""
    import redis

    class AnyNodeCluster(redis.RedisCluster):
        def command(self, **kwargs):
            nodes = {node.name: node for node in [self.get_default_node(), *self.get_primaries()]}
            error = None
            for node in nodes.values():
                try:
                    return self.execute_command("COMMAND", target_nodes=node, **kwargs)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    error = exc
            raise error

    return AnyNodeCluster

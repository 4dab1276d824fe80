"""Token buckets in the state Redis, one atomic Lua call per request: the API key's bucket
(its plan's rate and burst; in the cloud API Gateway's usage plans do this, and
APP_RATE_LIMIT switches it off) and, on a key whose plan limits each person
(chalicelib/domain/clients.py), that person's bucket, which API Gateway cannot
keep. A request takes a token from every bucket or from none: a person refused
spends nothing of the key's bucket that everyone with the app shares. On a Redis
Cluster both buckets carry the key id as hash tag (one script touches one slot), so
there a person has a bucket per API key they use."""
import logging
import time
from typing import NamedTuple

import redis

from chalicelib.domain.errors import CacheUnavailable, StoreFull
from chalicelib.domain.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# KEYS: the buckets. ARGV: now (ms, fractional), then rate/s and burst of each bucket.
# Returns {allowed, retry_after_ms, the refusing bucket's 1-based index or 0}.
_TAKE = """
local now = tonumber(ARGV[1])
local tokens, stamps = {}, {}
local wait, refused = 0, 0
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local t = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  if now > ts then t = math.min(burst, t + (now - ts) * rate / 1000) end
  tokens[i], stamps[i] = t, math.max(now, ts)
  if t < 1 then
    local w = math.ceil((1 - t) * 1000 / rate)
    if w > wait then wait, refused = w, i end
  end
end
for i = 1, #KEYS do
  local rate, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  if refused == 0 then tokens[i] = tokens[i] - 1 end
  redis.call('HSET', KEYS[i], 'tokens', tokens[i], 'ts', stamps[i])
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst * 1000 / rate) + 1000)
end
return {refused == 0 and 1 or 0, wait, refused}
"""


class Decision(NamedTuple):
    allowed: bool
    retry_after: int  # whole seconds (>= 1) when refused, else 0
    refused_by: str = ""  # "key" or "person" when refused


class RateLimiter:
    def __init__(self, gateway, plans, clock=time.time):
        self.gateway = gateway
        self.plans = plans
        self.clock = clock

    def check(self, api_key, plan_name, person=None, per_key=True):
        """A Decision for one request of `api_key` on its plan: from the key's bucket (unless
        `per_key` is False) and, with `person` (a plan with per-person limits), that person's.
        Fails open when Redis is unavailable; raises ServiceUnavailable when the state store
        is full: it answers, but cannot count the request, and letting every request through
        would hand an abuser an unlimited key."""
        plan = self.plans[plan_name]
        buckets = []  # (kind, key, rate, burst)
        if per_key:
            buckets.append(("key", f"ratelimit:{api_key}", plan["rate_per_second"], plan["burst"]))
        if person is not None:
            buckets.append(("person", f"ratelimit:person:{person}", plan["person_rate_per_second"],
                            plan["person_burst"]))
        if not buckets:
            return Decision(True, 0)
        script = self.gateway.script(_TAKE)
        # Fractional milliseconds: truncating to whole ms would under-credit
        # fast plans (1/50 s = 19.99.. ms -> 19 ms -> 0.95 of a token).
        args = [round(self.clock() * 1000, 3)]
        for _, _, rate, burst in buckets:
            args += [rate, burst]
        keys = [self.gateway.key(key, tag=api_key) for _, key, _, _ in buckets]
        try:
            allowed, wait_ms, refused = self.gateway.call(lambda r: script(keys=keys, args=args, client=r),
                                                          key=keys[0])
        except StoreFull as exc:
            raise ServiceUnavailable("The rate-limit store is full and cannot count this request; retry shortly.",
                                     details={"reason": "state_store_full"}) from exc
        except CacheUnavailable as exc:
            log.warning("rate limiting failed open (redis unavailable): %s", exc)
            return Decision(True, 0)
        except redis.exceptions.RedisError as exc:
            # e.g. READONLY from a replica mid-failover: limit nothing rather than fail every request.
            log.warning("rate limiting failed open (redis error): %s", exc)
            return Decision(True, 0)
        if allowed:
            return Decision(True, 0)
        return Decision(False, max(1, -(-int(wait_ms) // 1000)), buckets[int(refused) - 1][0])

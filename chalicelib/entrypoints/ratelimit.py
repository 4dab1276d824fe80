"""Per-API-key token bucket in the state Redis, one atomic Lua call per request.
In the cloud API Gateway usage plans do this; APP_RATE_LIMIT switches it off."""
import logging
import time

import redis

from chalicelib.adapters.cache import CacheUnavailable, StoreFull
from chalicelib.domain.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# KEYS[1]: bucket. ARGV: rate/s, burst, now (ms, fractional). Returns {allowed, retry_after_ms}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', math.max(now, ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""


class RateLimiter:
    def __init__(self, gateway, plans, clock=time.time):
        self.gateway = gateway
        self.plans = plans
        self.clock = clock

    def check(self, api_key, plan_name):
        """(allowed, retry_after_seconds). Fails open when Redis is unavailable; raises
        ServiceUnavailable when the state store is full: it answers, but cannot count the
        request, and letting every request through would hand an abuser an unlimited key."""
        plan = self.plans[plan_name]
        script = self.gateway.script(_TAKE)
        try:
            allowed, wait_ms = self.gateway.call(lambda r: script(
                keys=[self.gateway.key(f"ratelimit:{api_key}")],
                # Fractional milliseconds: truncating to whole ms would under-credit
                # fast plans (1/50 s = 19.99.. ms -> 19 ms -> 0.95 of a token).
                args=[plan["rate_per_second"], plan["burst"], round(self.clock() * 1000, 3)],
                client=r,
            ))
        except StoreFull as exc:
            raise ServiceUnavailable("The rate-limit store is full and cannot count this request; retry shortly.",
                                     details={"reason": "state_store_full"}) from exc
        except CacheUnavailable as exc:
            log.warning("rate limiting failed open (redis unavailable): %s", exc)
            return True, 0
        except redis.exceptions.RedisError as exc:
            # e.g. READONLY from a replica mid-failover: limit nothing rather than fail every request.
            log.warning("rate limiting failed open (redis error): %s", exc)
            return True, 0
        return bool(allowed), max(1, -(-int(wait_ms) // 1000)) if not allowed else 0

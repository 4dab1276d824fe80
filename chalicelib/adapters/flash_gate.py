"""The flash-sale gate in Redis (docs/design.md section 10): one Lua call per
order decides, so a sold-out product answers without touching MySQL.

Keys (all under the gateway's prefix):
  flash:sale:{pid}   HASH sale_id, remaining, limit (0: none), sale_stock, watermark, seq, returns, epoch
  flash:held:{pid}   HASH customer -> units this customer holds in the sale (the per-customer limit;
                     customer:{customers.id} for a token's customer, client|0|user_id for a trusted server's user)
  flash:active       SET of product ids on sale (one SMISMEMBER per sync batch)
  flash:res:{owner}  HASH the reservation of one idempotency key
                     (owner = client|customer_id|user_id|client_order_id): rid, hash,
                     state (leased | queued | created | failed), lines "pid:qty:sale_id,...",
                     customer, admitted_ms (the admission's clock, which its lease counts from),
                     order_id, total_cents, code, message, product_id
  flash:ref:{rid}    STRING -> the reservation's key (how GET /reservations/{rid} finds it)
  flash:leases       ZSET reservation key -> lease deadline (ms): accepted but not yet on SQS
  flash:returned:{pid} SET order ids whose units a cancel or expiry gave back to the sale
  flash:lost:{pid}   STRING ms when reconcile first found the sale missing (Redis lost it); gone once rebuilt

Every change to a sale's units bumps its `seq`, so reconcile can set a sale to
MySQL's numbers only if nothing moved it between its MySQL snapshot and the write;
`returns` counts cancels' give-backs and `epoch` changes with every start and
rebuild, so reconcile lowers a sale only if no give-back came after its snapshot.

States: `leased` from admission until the SQS send succeeds (`confirm` -> `queued`);
a failed send `release`s it (units back, record gone); a lease that expires
(the process died between Redis and SQS) is swept: units back, record gone.
The consumer `settle`s each reservation after its MySQL commit: `created` or
`failed`, re-taking the units of a reservation whose lease was swept although
its message did reach SQS, so Redis never counts units MySQL has sold.

Non-cluster Redis only (ElastiCache replication group): the scripts touch
keys they derive (the sweep, the settle), as Redis Cluster would not allow.
"""
import time
import uuid
from dataclasses import dataclass
from typing import Optional

FINAL_TTL_SECONDS = 7 * 24 * 3600  # how long a settled reservation answers replays and polls

# The state Redis never evicts: at maxmemory it refuses writes (OOM). The scripts that add
# to it (admission, a sale's start or rebuild) are refused whole before they run (a Redis 7
# script flagged without allow-oom; unflagged, Redis would refuse only a first write, and one
# that follows a DEL or ZREM of nothing would slip through). The scripts that give units
# back, move a record on or lower a gate run all the same: a full store must not strand
# reservations already admitted, and they add little or free memory.
_REFUSED_WHEN_FULL = "#!lua\n"
_EVEN_WHEN_FULL = "#!lua flags=allow-oom\n"

# Returns the units of one reservation record (if it still holds them) and deletes it.
# Shared by the sweep (expired leases) and the release (SQS send failed).
_GIVE_BACK = """
local function give_back(prefix, rec_key)
  local rec = redis.call('HMGET', rec_key, 'rid', 'state', 'lines', 'customer')
  if not rec[1] then return 0 end
  if rec[2] ~= 'leased' and rec[2] ~= 'queued' then return 0 end
  for pid, qty, sale_id in string.gmatch(rec[3], '(%d+):(%d+):(%w+)') do
    local sale = prefix .. 'flash:sale:' .. pid
    if redis.call('HGET', sale, 'sale_id') == sale_id then
      redis.call('HINCRBY', sale, 'remaining', qty)
      redis.call('HINCRBY', sale, 'seq', 1)
      local held = prefix .. 'flash:held:' .. pid
      if redis.call('HINCRBY', held, rec[4], -qty) <= 0 then redis.call('HDEL', held, rec[4]) end
    end
  end
  redis.call('DEL', rec_key, prefix .. 'flash:ref:' .. rec[1])
  redis.call('ZREM', prefix .. 'flash:leases', rec_key)
  return 1
end

local function sweep(prefix, now, max)
  local expired = redis.call('ZRANGEBYSCORE', prefix .. 'flash:leases', '-inf', now, 'LIMIT', 0, max)
  for _, rec_key in ipairs(expired) do
    if redis.call('HGET', rec_key, 'state') == 'leased' then give_back(prefix, rec_key) end
    redis.call('ZREM', prefix .. 'flash:leases', rec_key)
  end
  return #expired
end
"""

# KEYS[1] reservation key; then (sale key, held key) per product.
# ARGV: prefix, rid, request hash, customer, now ms, lease ms, then one quantity per product.
# -> {'ACCEPTED', rid, lines, swept} | {'REPLAY', rid} | {'CONFLICT', rid} | {'NOT_ON_SALE', pid index, swept}
#    | {'SOLD_OUT', index, remaining, swept} | {'LIMIT', index, held, limit, swept}
#    (swept: expired leases this call gave back)
_ADMIT = _REFUSED_WHEN_FULL + _GIVE_BACK + """
local prefix, rid, hash, customer = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, lease = tonumber(ARGV[5]), tonumber(ARGV[6])
local rec = redis.call('HMGET', KEYS[1], 'rid', 'hash')
if rec[1] then
  if rec[2] ~= hash then return {'CONFLICT', rec[1]} end
  return {'REPLAY', rec[1]}
end
local swept = sweep(prefix, now, 20)
local n = (#KEYS - 1) / 2
local sales = {}
for i = 1, n do
  local qty = tonumber(ARGV[6 + i])
  local s = redis.call('HMGET', KEYS[2 * i], 'sale_id', 'remaining', 'limit')
  if not s[1] then return {'NOT_ON_SALE', i, swept} end
  if tonumber(s[2]) < qty then return {'SOLD_OUT', i, s[2], swept} end
  local limit = tonumber(s[3])
  if limit > 0 then
    local held = tonumber(redis.call('HGET', KEYS[2 * i + 1], customer) or '0')
    if held + qty > limit then return {'LIMIT', i, held, limit, swept} end
  end
  sales[i] = s[1]
end
local lines = {}
for i = 1, n do
  local qty = tonumber(ARGV[6 + i])
  redis.call('HINCRBY', KEYS[2 * i], 'remaining', -qty)
  redis.call('HINCRBY', KEYS[2 * i], 'seq', 1)
  redis.call('HINCRBY', KEYS[2 * i + 1], customer, qty)
  lines[i] = string.match(KEYS[2 * i], 'flash:sale:(%d+)$') .. ':' .. qty .. ':' .. sales[i]
end
redis.call('HSET', KEYS[1], 'rid', rid, 'hash', hash, 'state', 'leased', 'lines', table.concat(lines, ','),
           'customer', customer, 'admitted_ms', now)
redis.call('ZADD', prefix .. 'flash:leases', now + lease, KEYS[1])
redis.call('SET', prefix .. 'flash:ref:' .. rid, KEYS[1])
return {'ACCEPTED', rid, table.concat(lines, ','), swept}
"""

# KEYS: reservation keys. ARGV[1]: prefix, then their rids. Marks leased ones queued.
_CONFIRM = _EVEN_WHEN_FULL + """
local queued = 0
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'rid') == ARGV[i + 1] and redis.call('HGET', key, 'state') == 'leased' then
    redis.call('HSET', key, 'state', 'queued')
    redis.call('ZREM', ARGV[1] .. 'flash:leases', key)
    queued = queued + 1
  end
end
return queued
"""

# KEYS: reservation keys. ARGV[1]: prefix, then their rids. Gives back what they hold.
_RELEASE = _EVEN_WHEN_FULL + _GIVE_BACK + """
local released = 0
for i, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'rid') == ARGV[i + 1] then released = released + give_back(ARGV[1], key) end
end
return released
"""

_SWEEP = _EVEN_WHEN_FULL + _GIVE_BACK + """
return sweep(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
"""

# The consumer's outcomes, after its MySQL commit. KEYS: reservation keys.
# ARGV: prefix, final ttl s, then per reservation one value of 10 fields joined
#   by byte 31: rid, lines, customer, outcome (created | failed), took (1: MySQL
#   took the units for this very reservation), give_back (1: return the units to
#   the sale; 0 when MySQL had fewer than Redis admitted, so Redis comes down to
#   MySQL), order_id, total_cents, code, detail.
# A reservation already settled is left alone (a duplicate delivery).
_SETTLE = _EVEN_WHEN_FULL + """
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
-- Per sale, read once per call: whether it still runs and its watermark; its seq moves once per call.
local sales = {}
local function sale_of(pid, sale_id)
  local sale = prefix .. 'flash:sale:' .. pid
  local known = sales[sale]
  if known == nil then
    local cur = redis.call('HMGET', sale, 'sale_id', 'watermark')
    known = {sale_id = cur[1], watermark = tonumber(cur[2] or '0'), moved = false}
    sales[sale] = known
  end
  if known.sale_id ~= sale_id then return nil end
  if not known.moved then
    -- Also when nothing below changes: reconcile must learn that an order was written after its snapshot.
    redis.call('HINCRBY', sale, 'seq', 1)
    known.moved = true
  end
  return sale, known.watermark
end
-- One argument per settlement, its fields joined by the unit separator (byte 31); the detail, last, may hold anything.
local function fields(packed)
  local out, start = {}, 1
  for n = 1, 9 do
    local stop = string.find(packed, '\\31', start, true)
    out[n] = string.sub(packed, start, stop - 1)
    start = stop + 1
  end
  out[10] = string.sub(packed, start)
  return out
end
for i, key in ipairs(KEYS) do
  local f = fields(ARGV[2 + i])
  local rid, lines, customer, outcome = f[1], f[2], f[3], f[4]
  local took, give = f[5] == '1', f[6] == '1'
  local rec = redis.call('HMGET', key, 'rid', 'state')
  local mine = rec[1] == rid
  local holds = mine and (rec[2] == 'leased' or rec[2] == 'queued')
  if not (mine and (rec[2] == 'created' or rec[2] == 'failed')) then
    for pid, qty, sale_id in string.gmatch(lines, '(%d+):(%d+):(%w+)') do
      local sale, watermark = sale_of(pid, sale_id)
      if sale then
        local held = prefix .. 'flash:held:' .. pid
        if took and not holds and tonumber(f[7]) > watermark then
          -- Swept (or lost) while its message was on SQS: MySQL sold these units, Redis must not offer them.
          -- (Orders up to the watermark were counted by the rebuild that restored this sale.)
          redis.call('HINCRBY', sale, 'remaining', -qty)
          redis.call('HINCRBY', held, customer, qty)
        elseif holds and not took then
          if give then redis.call('HINCRBY', sale, 'remaining', qty) end
          if redis.call('HINCRBY', held, customer, -qty) <= 0 then redis.call('HDEL', held, customer) end
        end
      end
    end
    if mine or not rec[1] then
      redis.call('HSET', key, 'rid', rid, 'state', outcome, 'order_id', f[7], 'total_cents', f[8],
                 'code', f[9], 'detail', f[10], 'lines', lines, 'customer', customer)
      redis.call('EXPIRE', key, ttl)
      redis.call('SET', prefix .. 'flash:ref:' .. rid, key, 'EX', ttl)
    end
    redis.call('ZREM', prefix .. 'flash:leases', key)
  end
end
return #KEYS
"""

# KEYS: sale key, held key, active set, returned set, lost marker. ARGV: pid, sale_id, sale stock, limit, epoch.
_START = _REFUSED_WHEN_FULL + """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'sale_id', ARGV[2], 'remaining', ARGV[3], 'sale_stock', ARGV[3], 'limit', ARGV[4],
           'epoch', ARGV[5])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# A rebuild after Redis lost the sale: the sale as MySQL says it stands.
# KEYS: sale key, held key, active set, returned set, lost marker. ARGV: pid, sale_id, sale stock,
# limit, remaining, watermark, epoch, n, then n order ids whose units MySQL already gave back,
# then customer, units pairs.
_RESTORE = _REFUSED_WHEN_FULL + """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'sale_id', ARGV[2], 'remaining', ARGV[5], 'sale_stock', ARGV[3], 'limit', ARGV[4],
           'watermark', ARGV[6], 'seq', seq, 'epoch', ARGV[7])
local n = tonumber(ARGV[8])
for i = 9, 8 + n do redis.call('SADD', KEYS[4], ARGV[i]) end
for i = 9 + n, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""

# Reconcile with nothing on its way: the sale's remaining units set to exactly what
# MySQL can still sell, and the give-backs of cancelled orders that never reached
# Redis applied (held units), only if nothing moved the sale since the caller read
# its `seq` (before its MySQL snapshot). O(cancelled orders), not O(customers).
# KEYS: sale key, held key, returned set. ARGV: sale_id, expected seq, remaining,
# watermark, then (order id, customer, units) per cancelled order line of the sale.
# -> the remaining units before (negative when it had re-taken more than it had), or 'moved'.
_RESYNC = _REFUSED_WHEN_FULL + """
local s = redis.call('HMGET', KEYS[1], 'sale_id', 'seq', 'remaining')
if s[1] ~= ARGV[1] or (s[2] or '0') ~= ARGV[2] then return 'moved' end
redis.call('HSET', KEYS[1], 'remaining', ARGV[3], 'watermark', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'seq', 1)
for i = 5, #ARGV, 3 do
  if redis.call('SADD', KEYS[3], ARGV[i]) == 1 then
    if redis.call('HINCRBY', KEYS[2], ARGV[i + 1], -tonumber(ARGV[i + 2])) <= 0 then
      redis.call('HDEL', KEYS[2], ARGV[i + 1])
    end
  end
end
return tonumber(s[3])
"""

# KEYS: sale key. ARGV: sale_id, the most the sale may still offer, and the epoch and
# returns the caller read before its MySQL snapshot. Lowers `remaining` to `most` if
# above; the units removed (0: none), 'other' for another sale, 'moved' when a
# cancel gave units back since (or the sale was rebuilt): `most` may not count them.
# (Admissions, settles and sweeps since the snapshot are safe: they move units MySQL
# had not counted either way.)
_CAP = _EVEN_WHEN_FULL + """
local s = redis.call('HMGET', KEYS[1], 'sale_id', 'epoch', 'returns')
if s[1] ~= ARGV[1] then return 'other' end
if (s[2] or '') ~= ARGV[3] or (s[3] or '0') ~= ARGV[4] then return 'moved' end
local remaining, most = tonumber(redis.call('HGET', KEYS[1], 'remaining')), tonumber(ARGV[2])
if remaining > most then
  redis.call('HSET', KEYS[1], 'remaining', most)
  redis.call('HINCRBY', KEYS[1], 'seq', 1)
  return remaining - most
end
return 0
"""

# A cancelled or expired sale order's units back to the sale it was sold in, once:
# the returned set remembers the order (reconcile and rebuild add the orders MySQL
# already counts as returned, so a late call changes nothing).
# KEYS: (sale key, held key, returned set) per line. ARGV: order id, customer, then qty, sale_id per line.
_RETURN = _EVEN_WHEN_FULL + """
local order_id, customer, units = ARGV[1], ARGV[2], 0
for i = 1, #KEYS / 3 do
  local sale, held, done = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local qty = tonumber(ARGV[1 + 2 * i])
  if redis.call('HGET', sale, 'sale_id') == ARGV[2 + 2 * i] and redis.call('SADD', done, order_id) == 1 then
    redis.call('HINCRBY', sale, 'remaining', qty)
    redis.call('HINCRBY', sale, 'seq', 1)
    redis.call('HINCRBY', sale, 'returns', 1)
    if redis.call('HINCRBY', held, customer, -qty) <= 0 then redis.call('HDEL', held, customer) end
    units = units + qty
  end
end
return units
"""

_STOP = """
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5])
return 1
"""


@dataclass(frozen=True)
class Admission:
    outcome: str            # ACCEPTED | REPLAY | CONFLICT | NOT_ON_SALE | SOLD_OUT | LIMIT
    rid: Optional[str] = None
    lines: tuple = ()       # ACCEPTED: ((product_id, quantity, sale_id), ...)
    product_id: Optional[int] = None
    remaining: Optional[int] = None
    held: Optional[int] = None
    limit: Optional[int] = None
    swept: int = 0          # expired leases the call gave back on its way
    admitted_at: float = 0  # ACCEPTED: the clock (s) its lease counts from


@dataclass(frozen=True)
class Settlement:
    key: str
    rid: str
    lines: str
    customer: str
    outcome: str            # created | failed
    took: bool              # MySQL took the units for this reservation
    give_back: bool = True  # (not took) return the units to the sale
    order_id: int = 0
    total_cents: int = 0
    code: str = ""
    detail: str = ""


def owner_key(client, customer_id, user_id, client_order_id):
    return f"{client}|{customer_id}|{user_id}|{client_order_id}"


def customer_key(client, customer_id, user_id):
    """Whose units a sale's per-customer limit counts. A customer with a token is one
    person whichever client's app they use (customers.id); a trusted server's user is
    that client's (client, user_id). (`:` never occurs in a client name.)"""
    if customer_id:
        return f"customer:{customer_id}"
    return f"{client}|0|{user_id}"


class FlashGate:
    """The gate's calls to the state Redis; every one raises CacheUnavailable when Redis is,
    StoreFull when it is full and the call would have added to it."""

    def __init__(self, gateway, lease_ms=30_000):
        self.gateway = gateway
        self.lease_ms = lease_ms

    def _k(self, name):
        return self.gateway.key(name)

    def reservation_key(self, owner):
        return self._k(f"flash:res:{owner}")

    def _run(self, source, keys, args):
        script = self.gateway.script(source)
        return self.gateway.call(lambda r: script(keys=keys, args=args, client=r))

    # --- sale mode ----------------------------------------------------------

    def _sale_keys(self, product_id):
        return [self._k(f"flash:sale:{product_id}"), self._k(f"flash:held:{product_id}"), self._k("flash:active"),
                self._k(f"flash:returned:{product_id}"), self._k(f"flash:lost:{product_id}")]

    def start(self, product_id, sale_id, sale_stock, limit):
        self._run(_START, self._sale_keys(product_id), [product_id, sale_id, sale_stock, limit or 0, uuid.uuid4().hex])

    def stop(self, product_id):
        self._run(_STOP, self._sale_keys(product_id), [product_id])

    def restore(self, product_id, sale_id, sale_stock, limit, remaining, watermark, held, returned=()):
        """Rebuild a sale Redis lost from what MySQL says: `held` {customer: units},
        `returned` the ids of its orders whose units MySQL gave back."""
        pairs = [x for customer, units in held.items() for x in (customer, units)]
        returned = list(returned)
        self._run(_RESTORE, self._sale_keys(product_id),
                  [product_id, sale_id, sale_stock, limit or 0, remaining, watermark, uuid.uuid4().hex,
                   len(returned), *returned, *pairs])

    def lost_since(self, product_id, now_ms=None):
        """When a sale missing from Redis was first found missing (ms; this call's time
        if it is the first), until it is rebuilt."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        key = self._k(f"flash:lost:{product_id}")

        def mark(r):
            r.set(key, now_ms, nx=True)
            return int(r.get(key))

        return self.gateway.call(mark)

    def resync(self, product_id, sale_id, seq, remaining, watermark, returned=()):
        """Set a quiet sale to `remaining` and apply the give-backs of `returned`
        [(order id, customer, units)] Redis has not had, if the sale's seq is still
        `seq`: the remaining units before, None if it moved."""
        keys = self._sale_keys(product_id)
        args = [sale_id, seq, remaining, watermark, *[x for line in returned for x in line]]
        before = self._run(_RESYNC, [keys[0], keys[1], keys[3]], args)
        return None if before == "moved" else int(before)

    def cap(self, product_id, sale_id, most, seen):
        """Lower the sale's remaining units to `most` if above; `seen` is the sale as read
        before the MySQL snapshot `most` comes from. The units removed; None for another
        sale, or when a cancel's units came back since (the next reconcile tries again)."""
        removed = self._run(_CAP, [self._k(f"flash:sale:{product_id}")],
                            [sale_id, most, seen.get("epoch", ""), seen.get("returns", 0)])
        return None if removed in ("other", "moved") else int(removed)

    def return_units(self, order_id, customer, lines):
        """A cancelled or expired order's lines [(product_id, quantity, sale_id)] back to
        their sale if it still runs, once per order; the units returned."""
        keys, args = [], [order_id, customer]
        for pid, qty, sale_id in lines:
            keys += [self._k(f"flash:sale:{pid}"), self._k(f"flash:held:{pid}"), self._k(f"flash:returned:{pid}")]
            args += [qty, sale_id]
        return int(self._run(_RETURN, keys, args)) if keys else 0

    def leases(self):
        """Accepted reservations not yet on SQS."""
        return self.gateway.call(lambda r: r.zcard(self._k("flash:leases")))

    def on_sale(self, product_ids):
        """The subset of `product_ids` on sale (one round trip)."""
        ids = sorted(set(product_ids))
        if not ids:
            return set()
        flags = self.gateway.call(lambda r: r.smismember(self._k("flash:active"), ids))
        return {pid for pid, flag in zip(ids, flags) if flag}

    def sale(self, product_id):
        """{sale_id, remaining, sale_stock, limit, epoch, watermark?, seq?, returns?} or None."""
        row = self.gateway.call(lambda r: r.hgetall(self._k(f"flash:sale:{product_id}")))
        return {k: (v if k in ("sale_id", "epoch") else int(v)) for k, v in row.items()} if row else None

    # --- orders -------------------------------------------------------------

    def admit(self, owner, customer, request_hash, quantities, now_ms=None) -> Admission:
        return self.admit_many([(owner, customer, request_hash, quantities)], now_ms)[0]

    def admit_many(self, orders, now_ms=None):
        """[(owner, customer, request_hash, quantities)] -> their Admissions, decided in
        order (a customer's second order sees the units of the first) in one round trip:
        a batch's first reservation does not wait for the others' calls before its hand-off.
        CacheUnavailable means none is known to be decided (Redis may have run some:
        those leases expire, or a replay hands them off); StoreFull (the state store is
        full) means none was admitted."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        calls = [self.admit_call(*order, now_ms=now_ms) for order in orders]
        script, release = self.gateway.script(_ADMIT), self.gateway.script(_RELEASE)

        def run(r):
            pipe = r.pipeline(transaction=False)
            for keys, args in calls:
                script(keys=keys, args=args, client=pipe)
            replies = pipe.execute(raise_on_error=False)
            refused = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if refused is not None:
                # Redis refused a call (the store filled up after the first ones): the calls it ran
                # give their units back, so the batch is admitted whole or not at all.
                taken = [(keys[0], reply[1]) for (keys, _), reply in zip(calls, replies)
                         if not isinstance(reply, Exception) and reply[0] == "ACCEPTED"]
                if taken:
                    release(keys=[key for key, _ in taken], args=[self.gateway.prefix, *[rid for _, rid in taken]],
                            client=r)
                raise refused
            return replies

        replies = self.gateway.call(run)
        return [self.admission(reply, list(order[3]), now_ms / 1000) for reply, order in zip(replies, orders)]

    def admit_call(self, owner, customer, request_hash, quantities, now_ms=None):
        """(keys, args) of one admission: the very call `admit` makes (bench/flash pipelines them)."""
        keys = [self.reservation_key(owner)]
        for pid in quantities:
            keys += [self._k(f"flash:sale:{pid}"), self._k(f"flash:held:{pid}")]
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return keys, [self.gateway.prefix, uuid.uuid4().hex, request_hash, customer, now_ms, self.lease_ms,
                      *quantities.values()]

    @staticmethod
    def lines(packed):
        """((product_id, quantity, sale_id), ...) of a record's "pid:qty:sale_id,..." lines."""
        return tuple((int(pid), int(qty), sale) for pid, qty, sale in (line.split(":") for line in packed.split(",")))

    @classmethod
    def admission(cls, reply, pids, admitted_at=0) -> Admission:
        """The Admission an _ADMIT reply stands for (`pids` in the call's order; `admitted_at`: the call's now)."""
        outcome = reply[0]
        if outcome in ("REPLAY", "CONFLICT"):
            return Admission(outcome, rid=reply[1])
        swept = int(reply[-1])
        if outcome == "ACCEPTED":
            return Admission(outcome, rid=reply[1], lines=cls.lines(reply[2]), swept=swept, admitted_at=admitted_at)
        pid = pids[int(reply[1]) - 1]
        if outcome == "SOLD_OUT":
            return Admission(outcome, product_id=pid, remaining=int(reply[2]), swept=swept)
        if outcome == "LIMIT":
            return Admission(outcome, product_id=pid, held=int(reply[2]), limit=int(reply[3]), swept=swept)
        return Admission(outcome, product_id=pid, swept=swept)

    def admit_script(self):
        """The registered _ADMIT script (bench/flash runs it through pipelines)."""
        return self.gateway.script(_ADMIT)

    def record(self, key):
        return self.gateway.call(lambda r: r.hgetall(key))

    def records(self, keys):
        """The reservation records at `keys`, in one round trip ({} where none)."""
        keys = list(keys)
        if not keys:
            return []

        def read(r):
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return pipe.execute()

        return self.gateway.call(read)

    def lookup(self, rid):
        """The reservation record of `rid` (with its key), or None."""
        key = self.gateway.call(lambda r: r.get(self._k(f"flash:ref:{rid}")))
        if not key:
            return None
        record = self.record(key)
        return {**record, "key": key} if record.get("rid") == rid else None

    def lookup_many(self, rids):
        """{rid: record} of those `rids` whose record Redis still has (two pipelined round trips)."""
        rids = list(rids)
        if not rids:
            return {}

        def read(r):
            pipe = r.pipeline(transaction=False)
            for rid in rids:
                pipe.get(self._k(f"flash:ref:{rid}"))
            keys = pipe.execute()
            found = [(rid, key) for rid, key in zip(rids, keys) if key]
            for _, key in found:
                pipe.hgetall(key)
            return {rid: record for (rid, _), record in zip(found, pipe.execute()) if record.get("rid") == rid}

        return self.gateway.call(read)

    def confirm(self, reservations):
        """[(key, rid)] now on SQS: their leases end."""
        if reservations:
            self._run(_CONFIRM, [k for k, _ in reservations], [self.gateway.prefix, *[r for _, r in reservations]])

    def release(self, reservations):
        """[(key, rid)] whose message never reached SQS: units back, records gone."""
        if not reservations:
            return 0
        return self._run(_RELEASE, [k for k, _ in reservations], [self.gateway.prefix, *[r for _, r in reservations]])

    def sweep(self, now_ms=None, max_records=1000):
        """Give back the units of leases that expired; how many were swept."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return self._run(_SWEEP, [], [self.gateway.prefix, now_ms, max_records])

    def settle(self, settlements):
        if not settlements:
            return
        # One argument per settlement: encoding ten per order cost more than the script's own work.
        packed = ["\x1f".join((s.rid, s.lines, s.customer, s.outcome, "1" if s.took else "0",
                                "1" if s.give_back else "0", str(s.order_id), str(s.total_cents), s.code, s.detail))
                  for s in settlements]
        self._run(_SETTLE, [s.key for s in settlements], [self.gateway.prefix, FINAL_TTL_SECONDS, *packed])

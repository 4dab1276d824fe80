#!lua flags=allow-oom
-- The consumer's outcomes, after its MySQL commit. KEYS: reservation keys.
-- ARGV: prefix, final ttl s, then per reservation one value of 11 fields joined
--   by byte 31: rid, lines, customer, outcome (created | failed), took (1: MySQL
--   took the units for this very reservation), give_back (1: return the units to
--   the sale; 0 when MySQL had fewer than Redis admitted, so Redis comes down to
--   MySQL), order_id, total_cents, code, request hash (kept where the record was
--   lost: the key's replays answer from it), detail.
-- A reservation already settled is left alone (a duplicate delivery).
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
  for n = 1, 10 do
    local stop = string.find(packed, '\31', start, true)
    out[n] = string.sub(packed, start, stop - 1)
    start = stop + 1
  end
  out[11] = string.sub(packed, start)
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
                 'code', f[9], 'detail', f[11], 'lines', lines, 'customer', customer)
      if f[10] ~= '' then redis.call('HSET', key, 'hash', f[10]) end
      redis.call('EXPIRE', key, ttl)
      redis.call('SET', prefix .. 'flash:ref:' .. rid, key, 'EX', ttl)
    end
    redis.call('ZREM', prefix .. 'flash:leases', key)
  end
end
return #KEYS

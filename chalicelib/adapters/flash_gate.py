"""The flash-sale gate in Redis (docs/design.md section 10): one Lua call per
order decides, so a sold-out product answers without touching MySQL.

Keys (all under the gateway's prefix; on a cluster after it the hash tag `{flash}`):
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

On a Redis Cluster every key above starts with the hash tag `{flash}`: one order's
admission spans its products' sales and the leases, and the scripts touch keys they
derive (the sweep, the settle), which a cluster allows only within the slot of the
keys declared. So the gate lives on one shard, which answers far more calls a second
than the consumer can write orders to MySQL.
"""
import time
import uuid
from pathlib import Path

from chalicelib.domain.reservations import Admission

FINAL_TTL_SECONDS = 7 * 24 * 3600  # how long a settled reservation answers replays and polls

# The state Redis never evicts: at maxmemory it refuses writes (OOM). The scripts that add
# to it (admission, a sale's start or rebuild) are refused whole before they run: their first
# line is a Redis 7 shebang without allow-oom (`#!lua`; unflagged, Redis would refuse only a
# first write, and one that follows a DEL or ZREM of nothing would slip through). The scripts
# that give units back, move a record on or lower a gate carry `#!lua flags=allow-oom` and run
# all the same: a full store must not strand reservations already admitted, and they add little
# or free memory.
_LUA = Path(__file__).with_name("lua")


def _script(name, *libraries):
    """The source of lua/`name`, with the `libraries` (files of shared local functions)
    after its shebang line, which must stay the first for its flags to count."""
    text = (_LUA / name).read_text()
    shared = "".join((_LUA / library).read_text() for library in libraries)
    if not text.startswith("#!"):
        return shared + text
    shebang, _, body = text.partition("\n")
    return f"{shebang}\n{shared}{body}"


# Read once, when the module is imported; the gateway registers each with Redis on first use.
_ADMIT = _script("flash_admit.lua", "flash_give_back.lua")
_CONFIRM = _script("flash_confirm.lua")
_RELEASE = _script("flash_release.lua", "flash_give_back.lua")
_SWEEP = _script("flash_sweep.lua", "flash_give_back.lua")
_SETTLE = _script("flash_settle.lua")
_START = _script("flash_start.lua")
_RESTORE = _script("flash_restore.lua")
_RESYNC = _script("flash_resync.lua")
_CAP = _script("flash_cap.lua")
_RETURN = _script("flash_return.lua")
_STOP = _script("flash_stop.lua")


class FlashGate:
    """The gate's calls to the state Redis; every one raises CacheUnavailable when Redis is,
    StoreFull when it is full and the call would have added to it."""

    def __init__(self, gateway, lease_ms=30_000):
        self.gateway = gateway
        self.lease_ms = lease_ms

    def _k(self, name):
        return self.gateway.key(name, tag="flash")

    @property
    def prefix(self):
        """What the scripts put before the names of the keys they derive (`flash:leases`, ...)."""
        return self._k("")

    def reservation_key(self, owner):
        return self._k(f"flash:res:{owner}")

    def _call(self, fn):
        # Every key of the gate is in one slot: any of them picks the master's breaker.
        return self.gateway.call(fn, key=self.prefix)

    def _run(self, source, keys, args):
        script = self.gateway.script(source)
        return self._call(lambda r: script(keys=keys, args=args, client=r))

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

        return self._call(mark)

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
        return self._call(lambda r: r.zcard(self._k("flash:leases")))

    def on_sale(self, product_ids):
        """The subset of `product_ids` on sale (one round trip)."""
        ids = sorted(set(product_ids))
        if not ids:
            return set()
        flags = self._call(lambda r: r.smismember(self._k("flash:active"), ids))
        return {pid for pid, flag in zip(ids, flags) if flag}

    def sale(self, product_id):
        """{sale_id, remaining, sale_stock, limit, epoch, watermark?, seq?, returns?} or None."""
        row = self._call(lambda r: r.hgetall(self._k(f"flash:sale:{product_id}")))
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
                    release(keys=[key for key, _ in taken], args=[self.prefix, *[rid for _, rid in taken]],
                            client=r)
                raise refused
            return replies

        replies = self._call(run)
        return [self.admission(reply, list(order[3]), now_ms / 1000) for reply, order in zip(replies, orders)]

    def admit_call(self, owner, customer, request_hash, quantities, now_ms=None):
        """(keys, args) of one admission: the very call `admit` makes (bench/flash pipelines them)."""
        keys = [self.reservation_key(owner)]
        for pid in quantities:
            keys += [self._k(f"flash:sale:{pid}"), self._k(f"flash:held:{pid}")]
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        return keys, [self.prefix, uuid.uuid4().hex, request_hash, customer, now_ms, self.lease_ms,
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
        return self._call(lambda r: r.hgetall(key))

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

        return self._call(read)

    def lookup(self, rid):
        """The reservation record of `rid` (with its key), or None."""
        key = self._call(lambda r: r.get(self._k(f"flash:ref:{rid}")))
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

        return self._call(read)

    def confirm(self, reservations):
        """[(key, rid)] now on SQS: their leases end."""
        if reservations:
            self._run(_CONFIRM, [k for k, _ in reservations], [self.prefix, *[r for _, r in reservations]])

    def release(self, reservations):
        """[(key, rid)] whose message never reached SQS: units back, records gone."""
        if not reservations:
            return 0
        return self._run(_RELEASE, [k for k, _ in reservations], [self.prefix, *[r for _, r in reservations]])

    def sweep(self, now_ms=None, max_records=1000):
        """Give back the units of leases that expired; how many were swept."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        # The leases key is declared, though the script derives it: a cluster runs a call on the master of its keys.
        return self._run(_SWEEP, [self._k("flash:leases")], [self.prefix, now_ms, max_records])

    def settle(self, settlements):
        if not settlements:
            return
        # One argument per settlement: encoding ten per order cost more than the script's own work.
        packed = ["\x1f".join((s.rid, s.lines, s.customer, s.outcome, "1" if s.took else "0",
                                "1" if s.give_back else "0", str(s.order_id), str(s.total_cents), s.code,
                                s.request_hash, s.detail))
                  for s in settlements]
        self._run(_SETTLE, [s.key for s in settlements], [self.prefix, FINAL_TTL_SECONDS, *packed])

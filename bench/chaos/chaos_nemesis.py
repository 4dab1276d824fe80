"""The nemesis: at seeded random moments one fault, then recovery. The seed
is printed; the same seed makes the same choices (the moments drift with the
machine's speed). Faults by kind:

  kill_mysql        SIGKILL mariadbd, restart after a few seconds (InnoDB recovery)
  kill_redis_cache  SIGKILL the cache redis-server; it comes back empty
  kill_redis_state  SIGKILL the state redis-server (gates, buckets, locks); it comes back empty
  freeze_aws        SIGSTOP the local AWS endpoint (SQS, SNS, SES, Cognito hang), then SIGCONT
  down_aws          the endpoint refuses connections for a few seconds (its proxy down)
  cut_<proxy>       every open connection to MySQL, a Redis or the endpoint closed at once
  kill_<process>    SIGKILL the API, a consumer or the lifecycle loop (relay, expiry sweep);
                    the stack starts a new one, as Lambda starts a new environment
  pause_<process>   SIGSTOP a consumer past its queue's visibility timeout, then SIGCONT:
                    its batch is redelivered to the other consumer while it sleeps
"""
import collections
import random
import signal
import threading
import time


class Nemesis:
    def __init__(self, stack, seed, interval, visibility, log=print, pauses=True):
        self.stack, self.seed, self.interval, self.visibility = stack, seed, interval, visibility
        self.rng = random.Random(seed)
        self.pauses = pauses  # False: no fault that outlasts a visibility timeout (a smoke run)
        self.tally = collections.Counter()
        self.log = log
        self.stop = threading.Event()
        self.thread = None
        self.t0 = time.monotonic()

    def kinds(self):
        """Families of faults, each as likely as the others whatever its number of targets."""
        procs = sorted(self.stack.procs)
        families = [["kill_mysql"], ["kill_redis_cache", "kill_redis_state"], ["freeze_aws", "down_aws"],
                    [f"cut_{name}" for name in sorted(self.stack.proxies)], [f"kill_{name}" for name in procs]]
        pauses = [f"pause_{name}" for name in procs if name.startswith("poller:") and self._has_twin(name)]
        return families + [pauses] if self.pauses else families

    def _has_twin(self, name):
        base = name.rsplit(":", 1)[0]
        return f"{base}:0" in self.stack.procs and f"{base}:1" in self.stack.procs

    def inject(self, kind):
        """One fault and its recovery; returns once the stack is whole again."""
        stack, down = self.stack, self.rng.uniform(1.0, 4.0)
        if kind.startswith("pause_"):
            down = self.visibility + 2
        timed = not kind.startswith(("cut_", "kill_")) or kind in ("kill_mysql", "kill_redis_cache", "kill_redis_state")
        self.log(f"[nemesis +{time.monotonic() - self.t0:6.1f}s] {kind}" + (f" ({down:.1f}s)" if timed else ""))
        if kind in ("kill_mysql", "kill_redis_cache", "kill_redis_state"):
            server = {"kill_mysql": stack.mariadb, "kill_redis_cache": stack.cache,
                      "kill_redis_state": stack.state}[kind]
            server.kill()
            time.sleep(down)
            server.start()
        elif kind == "freeze_aws":
            stack.endpoint.signal(signal.SIGSTOP)
            time.sleep(down)
            stack.endpoint.signal(signal.SIGCONT)
        elif kind == "down_aws":
            stack.proxies["aws"].down()
            time.sleep(down)
            stack.proxies["aws"].restore()
        elif kind.startswith("cut_"):
            stack.proxies[kind[4:]].cut()
        elif kind.startswith("kill_"):
            stack.procs[kind[5:]].kill()  # the stack's supervisor starts a new one
        elif kind.startswith("pause_"):
            proc = stack.procs[kind[6:]]
            proc.signal(signal.SIGSTOP)
            time.sleep(down)
            proc.signal(signal.SIGCONT)
        self.tally[kind] += 1

    def run(self, until):
        kinds = self.kinds()
        while not self.stop.is_set():
            wait = self.rng.uniform(*self.interval)
            if time.monotonic() + wait >= until or self.stop.wait(wait):
                return
            self.inject(self.rng.choice(self.rng.choice(kinds)))

    def start(self, seconds):
        until = time.monotonic() + seconds
        self.thread = threading.Thread(target=self.run, args=(until,), daemon=True)
        self.thread.start()
        return self

    def finish(self):
        self.stop.set()
        if self.thread is not None:
            self.thread.join(120)

    @property
    def faults(self):
        return sum(self.tally.values())

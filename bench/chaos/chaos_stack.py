"""The stack a chaos run drives: throwaway servers of its own (mariadbd, a cache
and a state redis-server, the local AWS endpoint), each behind a TcpProxy the
nemesis can cut, and the processes `make run` starts (the API, one SQS poller
per queue, two for the order-ingest and flash-order queues, the lifecycle
loop), each a process of its own the nemesis can SIGKILL or SIGSTOP. Nothing
here touches the shared MariaDB, Redis or AWS endpoint of the machine."""
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests

from chalicelib import bootstrap
from chalicelib.adapters.migrate import migrate
from chalicelib.settings import QUEUES, queue_names
from scripts import localstack
from scripts.servers import ThrowawayMariaDB, ThrowawayRedis, free_port
from tests.support.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DATABASE = "shop_chaos"
# Queues whose consumers run twice: a paused consumer's batch is then redelivered to the other
# (and the emails, several per order, keep up).
DOUBLED = ("ORDER_QUEUE_NAME", "FLASH_QUEUE_NAME", "NOTIFY_QUEUE_NAME")
CUSTOMER_PASSWORD = "Chaos-Passw0rd!"


class Proc:
    """One process of the stack (its output in a log file of the run), restartable."""

    def __init__(self, name, argv, env, log_dir):
        self.name, self.argv, self.env = name, argv, env
        self.log_path = Path(log_dir) / (name.replace(":", "-") + ".log")
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=localstack.set_parent_death_signal)
        return self

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self):
        if self.alive:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.alive:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Endpoint:
    """The local AWS endpoint (moto) as a server the nemesis can freeze."""

    def __init__(self, port, log_path):
        self.port, self.log_path, self.proc = port, log_path, None

    def start(self, advertised_port):
        # Queue URLs name the proxy, the address clients reach the endpoint at (start_moto copies os.environ).
        os.environ["MOTO_PORT"] = str(advertised_port)
        try:
            self.proc = localstack.start_moto("127.0.0.1", self.port, Path(self.log_path))
        finally:
            del os.environ["MOTO_PORT"]

    def signal(self, sig):
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()


class Stack:
    def __init__(self, work_dir, settings):
        self.work = Path(work_dir)
        self.options = settings  # the run's payment windows, visibility timeout, lease
        self.mariadb = ThrowawayMariaDB(self.work / "mariadb")
        self.cache = ThrowawayRedis(maxmemory="64mb", policy="volatile-lfu")
        self.state = ThrowawayRedis(maxmemory="64mb", policy="noeviction")
        self.endpoint = Endpoint(free_port(), self.work / "moto.log")
        self.proxies = {}
        self.procs = {}
        self.env = None
        self.api_url = None
        self.tokens = {}  # customer email -> ID token
        self._supervising = threading.Event()

    # --- servers ------------------------------------------------------------

    def start_servers(self):
        self.mariadb.start()
        self.mariadb.execute(f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4")
        self.cache.start()
        self.state.start()
        self.proxies = {"mysql": TcpProxy(self.mariadb.port), "redis_cache": TcpProxy(self.cache.port),
                        "redis_state": TcpProxy(self.state.port), "aws": TcpProxy(self.endpoint.port)}
        self.endpoint.start(self.proxies["aws"].port)
        run_id = uuid.uuid4().hex[:8]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "PYTEST"))},
            "STAGE": "local",
            "DATABASE_URL": f"mysql://root:@127.0.0.1:{self.proxies['mysql'].port}/{DATABASE}",
            "REDIS_URL": f"redis://127.0.0.1:{self.proxies['redis_cache'].port}/0",
            "REDIS_STATE_URL": f"redis://127.0.0.1:{self.proxies['redis_state'].port}/0",
            "REDIS_KEY_PREFIX": "",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.proxies['aws'].port}",
            **localstack.aws_env(f"http://127.0.0.1:{self.proxies['aws'].port}"),
            **queue_names(f"chaos-{run_id}"),
            "NOTIFY_FROM_EMAIL": f"shop-{run_id}@example.com", "OPERATOR_EMAIL": f"ops-{run_id}@example.com",
            "APP_RATE_LIMIT": "false", "POWERTOOLS_METRICS_DISABLED": "true", "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1", **self.options,
        }
        os.environ.update(self.env)
        bootstrap.reset()

    def setup(self):
        """Queues, topic and subscriptions, mail sender, customers, schema."""
        endpoint = self.env["AWS_ENDPOINT_URL"]
        settings = bootstrap.settings()
        self.sqs = localstack.sqs_client(endpoint)
        visibility = int(self.env["SQS_VISIBILITY_TIMEOUT"])
        self.queue_urls = localstack.ensure_queues(self.sqs, localstack.queue_specs(settings, visibility))
        extra = {"ORDER_EVENTS_TOPIC_ARN": localstack.ensure_topic(endpoint, f"chaos-{self.env['ORDER_QUEUE_NAME']}")}
        cognito = localstack.cognito_client(endpoint)
        pool_id, app_client = localstack.ensure_customer_pool(cognito, f"chaos-{uuid.uuid4().hex[:6]}")
        extra.update(COGNITO_USER_POOL_ID=pool_id, COGNITO_APP_CLIENT_IDS=app_client)
        self.env.update(extra)
        os.environ.update(extra)
        localstack.subscribe_queues(endpoint, self.env)
        localstack.verify_sender(endpoint, self.env["NOTIFY_FROM_EMAIL"])
        for n in range(4):
            email = f"customer{n}@example.com"
            localstack.ensure_customer(cognito, pool_id, email, CUSTOMER_PASSWORD)
            self.tokens[email] = localstack.sign_in(cognito, app_client, email, CUSTOMER_PASSWORD)
        bootstrap.reset()
        migrate(bootstrap.database())

    # --- processes ----------------------------------------------------------

    def start_processes(self):
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        specs = {"api": [PYTHON, str(ROOT / "scripts" / "serve.py"), "--stage", "local", "--port", str(port)],
                 "lifecycle": [PYTHON, str(ROOT / "scripts" / "lifecycle.py")]}
        for q in QUEUES:
            argv = [PYTHON, str(ROOT / "scripts" / "poller.py"), "--queue", self.env[q.setting], "--handler",
                    q.handler, "--wait", "1"]
            for copy in range(2 if q.setting in DOUBLED else 1):
                specs[f"poller:{q.default_name.removeprefix('shop-')}:{copy}"] = argv
        for name, argv in specs.items():
            self.procs[name] = Proc(name, argv, self.env, self.work).start()
        self.wait_for_api()
        threading.Thread(target=self._supervise, daemon=True).start()
        threading.Thread(target=self._reconcile, daemon=True).start()

    def wait_for_api(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.api_url + "/health", timeout=2).status_code in (200, 503):
                    return
            time.sleep(0.25)
        raise RuntimeError(f"the API did not answer within {timeout}s; see {self.work}/api.log")

    def _supervise(self):
        """As Lambda does: a function whose environment died gets a new one."""
        while not self._supervising.is_set():
            for proc in list(self.procs.values()):
                if not proc.alive and not self._supervising.is_set():
                    proc.start()
            time.sleep(0.5)

    def _reconcile(self, every=10):
        """The scheduled flash reconcile (every minute in AWS; sooner here, as the run is short)."""
        while not self._supervising.wait(every):
            with contextlib.suppress(Exception):  # a dependency down: the next call tries again
                bootstrap.flash_admin().reconcile_all()

    # --- healing and teardown -----------------------------------------------

    def heal(self):
        """Every server up and reachable, every process running and not paused."""
        for server in (self.mariadb, self.cache, self.state):
            if not server.running:
                server.start()
        self.endpoint.signal(signal.SIGCONT)
        for proxy in self.proxies.values():
            proxy.restore()
        for proc in self.procs.values():
            proc.signal(signal.SIGCONT)
        self.wait_for_api()

    def close(self):
        self._supervising.set()
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.stop()
        bootstrap.reset()
        for thing in (*self.proxies.values(), self.endpoint, self.cache, self.state, self.mariadb):
            with contextlib.suppress(Exception):
                thing.close()

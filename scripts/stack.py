"""The local stack behind `make run`, `make test`, `make queues`, `make redrive`
and `make seed` (docs/design.md section 5).

    stack.py run        endpoint + queues + migrations + demo catalog + API + one SQS poller per queue
    stack.py test ...   MySQL, Redis and endpoint up, then pytest (extra args go to pytest)
    stack.py setup      endpoint must answer; queues, migrations, demo catalog (idempotent)
    stack.py queues     depth of each queue and its DLQ, and the DLQ bodies
    stack.py redrive    move DLQ messages back to their source queue
    stack.py seed       add missing demo products (migrates first)

`run` and `test` first make sure MySQL and Redis answer (DATABASE_URL and
REDIS_URL; for `test`, TEST_DATABASE_URL and TEST_REDIS_URL when set), starting
servers of their own where nothing does (scripts/local_services.py).

Everything it starts (MySQL, Redis, moto, API server, pollers) is stopped on
exit, Ctrl-C or SIGTERM; a server only if this command started it and nobody
else still uses it.
"""
import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import localstack  # noqa: E402
from scripts.local_services import local_services  # noqa: E402
from scripts.poller import NO_HANDLER_EXIT, QUEUE_HANDLERS  # noqa: E402

log = logging.getLogger("stack")
PYTHON = sys.executable


class Stop(Exception):
    pass


def _raise_stop(signum, frame):
    name = signal.Signals(signum).name
    log.info("%s: stopping everything this command started", name)
    raise Stop(name)


def base_environment():
    """os.environ plus what every process of the local stack needs."""
    os.environ.setdefault("STAGE", "local")
    from chalicelib.settings import get_settings, reset_settings

    reset_settings()
    endpoint = get_settings().aws_endpoint_url or "http://127.0.0.1:4566"
    for key, value in localstack.aws_env(endpoint).items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    reset_settings()
    return get_settings()


def sqs(settings):
    return localstack.sqs_client(settings.aws_endpoint_url, settings.region)


def setup_queues(settings):
    specs = localstack.queue_specs(settings)
    client = sqs(settings)
    localstack.ensure_queues(client, specs)
    for spec in specs:
        log.info("queue %s (DLQ %s after %d receives, visibility %ss) ready",
                 spec.name, spec.dlq_name, spec.max_receive_count, spec.visibility_timeout)
    return specs


def setup_database(seed=True, count=None):
    from chalicelib import bootstrap
    from chalicelib.adapters.migrate import migrate
    from scripts import seed as seeding

    applied = migrate(bootstrap.database())
    log.info("migrations: %s", ", ".join(applied) if applied else "up to date")
    if seed:
        seeding.seed_catalog(bootstrap.catalog(), bootstrap.database(), count or seeding.DEFAULT_COUNT)


def setup_customers(settings):
    """The customers' user pool on the local endpoint, a demo customer, and the
    pool's ids in the environment the API server gets."""
    cognito = localstack.cognito_client(settings.aws_endpoint_url, settings.region)
    pool_id, client_id = localstack.ensure_customer_pool(cognito)
    localstack.ensure_customer(cognito, pool_id, *localstack.DEMO_CUSTOMER)
    os.environ["COGNITO_USER_POOL_ID"], os.environ["COGNITO_APP_CLIENT_IDS"] = pool_id, client_id
    log.info("customer pool %s, app client %s, demo customer %s", pool_id, client_id, localstack.DEMO_CUSTOMER[0])
    return pool_id, client_id


def setup_order_events(settings):
    """The order-events topic on the local endpoint; its ARN for the processes we start."""
    os.environ["ORDER_EVENTS_TOPIC_ARN"] = localstack.ensure_topic(settings.aws_endpoint_url)
    log.info("order events topic %s", os.environ["ORDER_EVENTS_TOPIC_ARN"])
    for arn in localstack.subscribe_queues(settings.aws_endpoint_url, {**settings.values, **os.environ}):
        log.info("subscribed %s", arn)


def setup_notifications(settings):
    """The SES sender verified (setup_order_events subscribed the notification queue)."""
    localstack.verify_sender(settings.aws_endpoint_url, settings.get("NOTIFY_FROM_EMAIL"), settings.region)
    log.info("notifications from %s; stock.low to %s", settings.get("NOTIFY_FROM_EMAIL"),
             settings.get("OPERATOR_EMAIL") or "nobody (OPERATOR_EMAIL unset)")


def setup(settings, seed=True):
    setup_queues(settings)
    setup_customers(settings)
    setup_order_events(settings)
    setup_notifications(settings)
    setup_database(seed=seed, count=int(os.environ.get("SEED_COUNT") or 0) or None)


# --- child processes --------------------------------------------------------


class Child:
    """A process of the stack, with its output prefixed and copied to our stdout."""

    def __init__(self, name, argv, env=None):
        self.name = name
        self.argv = argv
        self.env = env
        self.proc = None
        self.started_at = None

    def start(self):
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env or os.environ.copy(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # we stop it ourselves, in order
            preexec_fn=localstack.set_parent_death_signal if sys.platform == "linux" else None,
        )
        self.started_at = time.monotonic()
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            sys.stdout.write(f"[{self.name}] {raw.decode('utf-8', 'replace')}")
            sys.stdout.flush()

    def poll(self):
        return self.proc.poll() if self.proc else None

    def stop(self, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGTERM: pollers finish their batch and exit; chalice local just exits.
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            if sig == signal.SIGTERM and not timeout:
                continue
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def stop_all(children, timeout=10):
    """SIGTERM to every child at once, then wait; SIGKILL whatever is left."""
    live = [c for c in children if c.proc is not None and c.proc.poll() is None]
    for child in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in live:
        try:
            child.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %ss; killing it", child.name, timeout)
            child.stop(timeout=0)


def port_free(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_for_health(url, child, timeout=60):
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the API server exited with {child.poll()}")
        try:
            response = requests.get(url + "/health", timeout=2)
            if response.status_code in (200, 503):
                return response.json()
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the API server did not answer {url}/health within {timeout}s")


def banner(url, settings, pollers):
    keys = settings.clients.local_keys()
    lines = ["", "=" * 72, f"  shop API (stage local): {url}", f"  AWS endpoint: {settings.aws_endpoint_url}",
             "  API keys (one per client; scripts/clients.py adds, rotates, revokes):"]
    lines += [f"    {key}  (client {c.client}, plan {c.plan})" for key, c in keys.items()]
    lines.append("  SQS pollers: " + (", ".join(pollers) if pollers else "none (no handlers in app.py yet)"))
    admin = next((k for k, c in keys.items() if c.admin), None)
    pool, app_client = os.environ.get("COGNITO_USER_POOL_ID"), os.environ.get("COGNITO_APP_CLIENT_IDS")
    lines += [f"  customers: user pool {pool}, app client {app_client}; demo customer "
              f"{localstack.DEMO_CUSTOMER[0]} / {localstack.DEMO_CUSTOMER[1]} (README: a customer token)"]
    lines += [f"  try: curl {url}/health",
              f"       curl -H 'x-api-key: {admin}' '{url}/products/search?q=phone'",
              "  Ctrl-C stops everything this command started.", "=" * 72, ""]
    print("\n".join(lines), flush=True)


def run(args):
    settings = base_environment()
    port = int(os.environ.get("PORT") or settings.get("PORT") or 8000)
    if not port_free(port):
        log.error("port %s is already in use (another `make run`?); set PORT=... to use another", port)
        return 2
    children = []
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGHUP, _raise_stop)
    try:
        with local_services(settings.get("DATABASE_URL"), settings.redis_url), \
                localstack.aws_endpoint(settings.aws_endpoint_url):
            try:
                setup(settings, seed=not args.no_seed)
                server, pollers = start_processes(settings, port, children)
                return supervise(server, pollers, children)
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                stop_all(children)
                if children:
                    log.info("stopped the API server and pollers")
    except Stop:
        log.info("stopped")
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1


def start_processes(settings, port, children):
    """The API server, one SQS poller per queue and the lifecycle loop, each added
    to `children` as it starts; returns (API server, {poller: restarts})."""
    env = {**os.environ, "PORT": str(port)}
    server = Child("api", [PYTHON, str(ROOT / "scripts" / "serve.py"), "--stage", "local", "--port", str(port)],
                   env).start()
    children.append(server)
    url = f"http://127.0.0.1:{port}"
    health = wait_for_health(url, server)
    log.info("health: %s", json.dumps(health))
    pollers = {}
    for setting, handler in QUEUE_HANDLERS.items():
        queue = settings.get(setting)
        child = Child(f"poller:{queue}", [PYTHON, str(ROOT / "scripts" / "poller.py"), "--queue", queue,
                                          "--handler", handler], env).start()
        children.append(child)
        pollers[child] = 0
    children.append(Child("lifecycle", [PYTHON, str(ROOT / "scripts" / "lifecycle.py")], env).start())
    time.sleep(1.5)  # a poller without a handler exits at once; say so in the banner
    banner(url, settings, [c.name.split(":", 1)[1] for c in pollers if c.poll() is None])
    return server, pollers


def supervise(server, pollers, children):
    """Wait; a poller that dies is restarted (with backoff), a dead API ends the run."""
    while True:
        time.sleep(0.5)
        if server.poll() is not None:
            log.error("the API server exited with %s; stopping", server.poll())
            return 1
        for child in list(pollers):
            code = child.poll()
            if code is None:
                continue
            if code == NO_HANDLER_EXIT:
                pollers.pop(child)
                continue
            restarts = pollers.pop(child) + 1
            delay = min(30, 2 ** restarts)
            log.warning("%s exited with %s; restarting in %ss", child.name, code, delay)
            time.sleep(delay)
            replacement = Child(child.name, child.argv, child.env).start()
            children.append(replacement)
            pollers[replacement] = restarts if time.monotonic() - child.started_at < 60 else 0


def test(args):
    settings = base_environment()
    pytest_args = list(args.pytest_args)
    if pytest_args and pytest_args[0] == "--":
        pytest_args = pytest_args[1:]
    workers = os.environ.get("TEST_WORKERS", "").strip()
    if workers and workers not in ("0", "1") and not any(a == "-n" or a.startswith("-n") for a in pytest_args):
        pytest_args = ["-n", workers] + pytest_args
    report = ROOT / ".run" / "failed-tests.txt"
    report.parent.mkdir(exist_ok=True)
    report.unlink(missing_ok=True)
    cmd = [PYTHON, "-m", "pytest"] + pytest_args
    signal.signal(signal.SIGTERM, _raise_stop)
    proc = None
    try:
        with local_services(*servers_for_tests(settings)), localstack.aws_endpoint(settings.aws_endpoint_url):
            log.info("running: %s", " ".join(cmd))
            # Same process group as us: a Ctrl-C reaches pytest directly.
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "SHOP_FAILED_TESTS_FILE": str(report)},
                                    stdin=subprocess.DEVNULL)
            while True:
                try:
                    code = proc.wait()
                    break
                except KeyboardInterrupt:
                    continue  # pytest got it too; wait for it to finish its teardown
    except Stop:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        return 143
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    # Stopping the endpoint logs after pytest's own summary: repeat what failed
    # so that the last lines of a red run name every failed test.
    if code != 0:
        print(failure_summary(report, code), flush=True)
    return code


def servers_for_tests(settings):
    """The MySQL server and Redis the tests use (TEST_DATABASE_URL, TEST_REDIS_URL;
    by default the configured ones), exported for tests/conftest.py."""
    server = urlsplit(settings.get("DATABASE_URL"))._replace(path="/")  # each session makes its own database
    mysql = os.environ.setdefault("TEST_DATABASE_URL", urlunsplit(server))
    return mysql, os.environ.setdefault("TEST_REDIS_URL", settings.redis_url)


def failure_summary(report, code):
    """Closing lines naming each failed test, from the list tests/conftest.py writes."""
    try:
        failed = report.read_text().splitlines()
    except OSError:
        return f"pytest exited with {code} and left no list of failed tests; see its output above"
    return "\n".join([f"pytest exited with {code}; {len(failed)} failed:"] + [f"FAILED {line}" for line in failed])


def _require_endpoint(settings):
    if not localstack.endpoint_answers(settings.aws_endpoint_url):
        log.error("no AWS endpoint answers at %s; start the stack with `make run` first", settings.aws_endpoint_url)
        return False
    return True


def queues(args):
    settings = base_environment()
    if not _require_endpoint(settings):
        return 1
    report = localstack.inspect_queues(sqs(settings), localstack.queue_specs(settings), limit=args.limit)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else localstack.format_report(report))
    return 0


def redrive(args):
    settings = base_environment()
    if not _require_endpoint(settings):
        return 1
    client = sqs(settings)
    for spec in localstack.queue_specs(settings):
        if args.queue and args.queue != spec.name:
            continue
        try:
            moved = localstack.redrive(client, spec)
        except RuntimeError as exc:
            log.warning("%s", exc)
            continue
        print(f"{spec.dlq_name} -> {spec.name}: {moved} message(s) moved")
    return 0


def do_setup(args):
    settings = base_environment()
    if not _require_endpoint(settings):
        return 1
    setup(settings, seed=not args.no_seed)
    return 0


def seed(args):
    base_environment()
    from chalicelib import bootstrap
    from chalicelib.adapters.migrate import migrate
    from scripts import seed as seeding

    migrate(bootstrap.database())
    created = seeding.seed_catalog(bootstrap.catalog(), bootstrap.database(), args.count, top_up=True)
    print(f"{created} demo product(s) added")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description="shop local stack")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--no-seed", action="store_true")
    p.set_defaults(func=run)
    p = sub.add_parser("test")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=test)
    p = sub.add_parser("setup")
    p.add_argument("--no-seed", action="store_true")
    p.set_defaults(func=do_setup)
    p = sub.add_parser("queues")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=100, help="DLQ bodies to show per queue")
    p.set_defaults(func=queues)
    p = sub.add_parser("redrive")
    p.add_argument("--queue", help="only this source queue")
    p.set_defaults(func=redrive)
    p = sub.add_parser("seed")
    p.add_argument("--count", type=int, default=10_000)
    p.set_defaults(func=seed)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

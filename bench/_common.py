"""What every bench shares (the benches are scripts: `python bench/orders`, `make bench-orders`).

    import _common as common     # bench/ is the script's folder, so first on sys.path
    common.use_venv()            # before anything outside the standard library
    private = common.Private("orders")   # before chalicelib: its settings read the environment
    ...
    with private.resources(queues=True):  # database migrated, queues on the local endpoint
        ...
    common.print_result(orders_per_s=f"{rate:.0f}", ...)   # the last line, machine-readable

A bench runs in a database, Redis key prefix and queues of its own (names
with a run id; children the bench starts inherit it through BENCH_RUN_ID),
on the MySQL server BENCH_MYSQL_URL and the Redis BENCH_REDIS_URL name (by
default this machine's, 127.0.0.1:3306 and :6379). Everything it created is
removed at the end, whether it ends well or not. Its last line is `key=value`
pairs, which `parse_result` reads (tests/tooling/test_bench_smoke.py does).
Only the standard library is imported here at module level: `use_venv` runs
before the .venv's packages are on the path.
"""
import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
MYSQL_URL = os.environ.get("BENCH_MYSQL_URL", "mysql://root:@127.0.0.1:3306/")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SMOKE_HELP = "tiny data, a few seconds: checks that the bench runs, measures nothing (make test runs it)"


def use_venv():
    """Run this bench on the repository's .venv (re-executing it there if another
    Python started it), with the repository on the import path."""
    python = VENV / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(python), [str(python), *sys.argv])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def clean_up_on_sigterm():
    """A bench stopped with SIGTERM (a timeout, `kill`) still runs its `finally`
    blocks, which remove what it created and stop the servers it started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def percentile(values, p):
    """The p-th percentile by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc: a cost that other load on
    a shared machine changes far less than it changes wall time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mysqld_pid():
    """The pid of the MySQL server the bench uses (not any mariadbd of this machine's: tests start their
    own), from its pid file; None when it is not on this machine (its CPU cannot be read)."""
    from chalicelib import bootstrap

    pid_file = bootstrap.database().query("SELECT @@pid_file AS f")[0]["f"]
    try:
        pid = int(Path(pid_file).read_text())
        cpu_seconds(pid)
        return pid
    except (OSError, ValueError):
        return None


def print_result(**fields):
    """The bench's last line: key=value pairs, values already formatted."""
    print(" ".join(f"{key}={value}" for key, value in fields.items()), flush=True)


def parse_result(line):
    """{key: value} of a last line print_result wrote."""
    return dict(pair.split("=", 1) for pair in line.split())


class Private:
    """The environment of a bench run: its own database, Redis key prefix and
    queue names, on the bench's MySQL server and Redis (or the ones given).
    `database` names a database to keep between runs (bench/search --reuse); by
    default it is the run's own. `environment`: more settings for the run."""

    def __init__(self, bench, database=None, mysql_url=MYSQL_URL, redis_url=REDIS_URL, **environment):
        from chalicelib.settings import queue_names

        self.run_id = os.environ.setdefault("BENCH_RUN_ID", uuid.uuid4().hex[:8])
        self.database = database or f"shop_bench_{bench}_{self.run_id}"
        self.keep_database = database is not None
        if not self.database.replace("_", "").isalnum() or self.database == "shop":
            sys.exit(f"refusing to use database {self.database!r}")
        self.prefix = f"bench-{bench}:{self.run_id}:"
        self.redis_url = redis_url
        os.environ.update({
            "STAGE": "local",
            "DATABASE_URL": mysql_url.rstrip("/") + "/" + self.database,
            "REDIS_URL": redis_url,
            "REDIS_STATE_URL": "",  # the state beside the cache, in whichever Redis a stage points REDIS_URL at
            "REDIS_KEY_PREFIX": self.prefix,
            **queue_names(f"bench-{self.run_id}"),  # all of them: resources() creates and deletes each
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "APP_RATE_LIMIT": "false",
            **environment,
        })
        for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(key, value)
        clean_up_on_sigterm()

    @contextlib.contextmanager
    def resources(self, queues=False, visibility_timeout=None, migrate=True, keep=False):
        """The database (migrated), and with `queues` the local AWS endpoint and the
        run's queues (yielded: (endpoint, sqs client, {name: (url, dlq url)})), for
        the duration of the block; all removed afterwards unless `keep`."""
        from chalicelib import bootstrap
        from chalicelib.adapters.migrate import migrate as apply_migrations
        from scripts import localstack

        settings = bootstrap.settings()
        with (localstack.aws_endpoint(settings.aws_endpoint_url) if queues else contextlib.nullcontext()) as endpoint:
            sqs = urls = None
            if queues:
                sqs = localstack.sqs_client(endpoint.url)
                specs = localstack.queue_specs(settings, visibility_timeout=visibility_timeout)
                urls = localstack.ensure_queues(sqs, specs)
            try:
                if migrate:
                    apply_migrations(bootstrap.database())
                yield endpoint, sqs, urls
            finally:
                if not keep:
                    self.remove(sqs, urls)

    def remove(self, sqs=None, queue_urls=None):
        """Drop the run's database (unless kept), its Redis keys and its queues."""
        import pymysql
        import redis

        from chalicelib import bootstrap
        from chalicelib.settings import parse_database_url

        bootstrap.reset()
        if not self.keep_database:
            target = parse_database_url(os.environ["DATABASE_URL"])
            conn = pymysql.connect(host=target.host, port=target.port, user=target.user, password=target.password)
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
            conn.close()
        client = redis.Redis.from_url(self.redis_url)
        keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        client.close()
        for url, dlq_url in (queue_urls or {}).values():
            for queue in (url, dlq_url):
                with contextlib.suppress(Exception):  # already gone
                    sqs.delete_queue(QueueUrl=queue)

"""MySQL and Redis for `make run` and `make test` on any machine (README, the
two commands).

Where a server answers on the configured address (a machine with MariaDB and
Redis running, CI), it is used and nothing else happens. Where nothing
answers on a local address, the command starts a `mariadbd` or `redis-server`
of its own on that port, with its data under .run/ (MariaDB's kept from one
run to the next, Redis empty each time), says so in one line, and stops it
on exit once no other shop command uses it (scripts/shared_server.py). A
missing program is installed from Debian's packages with apt-get, as the
Makefile does for Chromium. What cannot be had ends the command with one
sentence (`Unavailable`), never a traceback.
"""
import contextlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import servers  # noqa: E402
from scripts.shared_server import port_open, shared_server  # noqa: E402

log = logging.getLogger("local_services")

LOCAL_HOSTS = ("127.0.0.1", "localhost")
RUN_DIR = ROOT / ".run"
# Like Debian's packaged server (utf8mb4, 128M buffer pool, 50 s lock waits), so the
# tests and the demo catalog see what they see on a machine that has one.
MARIADB_ARGS = ("--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=96M", "--innodb-lock-wait-timeout=50",
                "--max-connections=300")


class Unavailable(RuntimeError):
    """A dependency that is neither running nor startable here; the message is the sentence to print."""


@dataclass(frozen=True)
class Service:
    name: str                 # lock files, data folder
    kind: str                 # in sentences
    variable: str             # the setting that names its address
    default_port: int
    program: str
    package: str              # Debian's
    answers: Callable         # (host, port) -> bool
    make: Callable            # (data_dir, port) -> a servers.ThrowawayMariaDB/ThrowawayRedis

    def data_dir(self, port):
        return RUN_DIR / f"{self.name}-{port}"

    def ours(self, pid):
        """Started by a shop command: the server runs in a .run/ folder of this kind
        (mariadbd and redis-server both change to their data folder)."""
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, TypeError):
            return False
        return f"/.run/{self.name}-" in cwd


MYSQL = Service("mariadb", "MySQL", "DATABASE_URL", 3306, "mariadbd", "mariadb-server", servers.mysql_answers,
                lambda data_dir, port: servers.ThrowawayMariaDB(data_dir, port, MARIADB_ARGS, own_session=True))
REDIS = Service("redis", "Redis", "REDIS_URL", 6379, "redis-server", "redis-server", servers.redis_answers,
                lambda data_dir, port: servers.ThrowawayRedis(port, maxmemory=None, base_dir=data_dir,
                                                              own_session=True))


def ensure_program(service):
    """The service's program on PATH, installed with apt-get when it is missing."""
    if shutil.which(service.program):
        return
    advice = f"install {service.package}, or set {service.variable} to a {service.kind} server that runs"
    if not shutil.which("apt-get"):
        raise Unavailable(f"{service.program} is not installed and there is no apt-get to install Debian's "
                          f"{service.package}: {advice}")
    log.info("%s is not installed; installing Debian's %s with apt-get", service.program, service.package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", service.package]):
        if subprocess.run(step, env=env, stdin=subprocess.DEVNULL).returncode != 0:
            break
    if not shutil.which(service.program):
        raise Unavailable(f"{service.program} is not installed and `apt-get install {service.package}` did not "
                          f"install it: {advice}")


def _start(service, host, port):
    """Our own server on the port (its program installed first if need be); its pid once it answers."""
    ensure_program(service)
    data_dir = service.data_dir(port)
    server = service.make(data_dir, port)
    try:
        server.start()
    except BaseException as exc:  # a Ctrl-C while it starts included: never leave it behind
        server.kill()
        if isinstance(exc, (OSError, subprocess.CalledProcessError, RuntimeError)):
            raise Unavailable(f"{service.program} could not start on port {port} ({exc}); "
                              f"its files are in {data_dir}") from None
        raise
    log.info("nothing answered at %s:%s (%s): started %s there, data in %s; stopped on exit",
             host, port, service.variable, service.program, data_dir.relative_to(ROOT))
    return server.proc.pid


@contextlib.contextmanager
def serve(service, url):
    """The service at `url`'s address for the duration of the block: the server
    answering there, or, on a local address where nothing does, one of our own."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or service.default_port
    if host not in LOCAL_HOSTS:
        if not port_open(host, port):
            raise Unavailable(f"no {service.kind} answers at {host}:{port} ({service.variable}): start it, "
                              f"or set {service.variable} to a server that runs")
        yield
        return
    # Through the shared lock even when a server answers: it may be another shop
    # command's, which must not stop it while we use it.
    with shared_server(service.name, service.program, host, port, start=lambda: _start(service, host, port),
                       answers=lambda: service.answers(host, port), ours=service.ours, stop_timeout=60,
                       refusal=f"something listens on {host}:{port} ({service.variable}) but is not "
                               f"{service.kind}: free the port or set {service.variable}"):
        yield


@contextlib.contextmanager
def local_services(database_url, redis_url):
    """MySQL and Redis answering at these addresses for the duration of the block."""
    with serve(MYSQL, database_url), serve(REDIS, redis_url):
        yield

"""The two commands on a machine where nothing answers on the configured MySQL,
Redis and AWS endpoint addresses (scripts/local_services.py): the stack is
pointed at free ports, so it starts servers of its own there and stops them
on exit. The shared MariaDB (3306) and Redis (6379) are never involved."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from scripts import local_services
from scripts.servers import ThrowawayRedis, free_port, redis_answers
from scripts.shared_server import port_open, state_paths

ROOT = Path(__file__).resolve().parents[2]
STACK = [sys.executable, str(ROOT / "scripts" / "stack.py")]


class BareMachine:
    """Free ports for MySQL, Redis, the AWS endpoint and the API; the environment pointing at them."""

    def __init__(self):
        self.mysql, self.redis, self.endpoint, self.api = (free_port() for _ in range(4))
        self.env = {**os.environ, "DATABASE_URL": f"mysql://root:@127.0.0.1:{self.mysql}/shop",
                    "REDIS_URL": f"redis://127.0.0.1:{self.redis}/0",
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.endpoint}", "PORT": str(self.api),
                    "SEED_COUNT": "20", "PYTHONUNBUFFERED": "1"}
        for name in ("TEST_DATABASE_URL", "TEST_REDIS_URL"):
            self.env.pop(name, None)

    def ports(self):
        return [self.mysql, self.redis, self.endpoint, self.api]

    def processes(self):
        """Pids of the processes that were given this machine's MySQL address (the stack's, inherited)."""
        marker = f"DATABASE_URL={self.env['DATABASE_URL']}".encode()
        pids = []
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker in environ.read_bytes().split(b"\0"):
                    pids.append(int(environ.parent.name))
            except OSError:
                continue  # gone, or not ours to read
        return pids

    def clean_up(self):
        shutil.rmtree(local_services.MYSQL.data_dir(self.mysql), ignore_errors=True)
        shutil.rmtree(local_services.REDIS.data_dir(self.redis), ignore_errors=True)
        for name, port in (("mariadb", self.mysql), ("redis", self.redis), ("aws-endpoint", self.endpoint)):
            for path in state_paths(name, port):
                path.unlink(missing_ok=True)


@pytest.fixture
def bare():
    machine = BareMachine()
    yield machine
    machine.clean_up()


def read_until(proc, needle, timeout):
    """Lines of proc's output up to the first holding `needle` (all of them if it exits first)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            break
    return lines


def assert_nothing_left(bare):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (bare.processes() or any(port_open("127.0.0.1", p, 0.2)
                                                                  for p in bare.ports())):
        time.sleep(0.2)
    assert bare.processes() == [], "processes of the stack still running"
    assert [p for p in bare.ports() if port_open("127.0.0.1", p, 0.2)] == []


@pytest.mark.timeout(240)
def test_make_run_starts_its_own_mysql_and_redis_and_stops_them_on_sigterm(bare):
    proc = subprocess.Popen([*STACK, "run"], cwd=ROOT, env=bare.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = read_until(proc, "Ctrl-C stops everything", timeout=180)
        output = "".join(lines)
        assert "Ctrl-C stops everything" in output, output
        started = [line for line in lines if "nothing answered at" in line]
        assert len(started) == 2, output  # one line per server it started
        assert f"127.0.0.1:{bare.mysql} (DATABASE_URL): started mariadbd" in started[0]
        assert f"127.0.0.1:{bare.redis} (REDIS_URL): started redis-server" in started[1]
        health = requests.get(f"http://127.0.0.1:{bare.api}/health", timeout=10).json()
        assert health["checks"] == {"mysql": "up", "redis": "up"}
        product = requests.get(f"http://127.0.0.1:{bare.api}/products/1", timeout=10,
                               headers={"x-api-key": "shop-local-dev-key-0001"})
        assert product.status_code == 200, product.text  # the demo catalog, seeded into our own MySQL
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, rest
    assert "Traceback" not in output + rest
    assert_nothing_left(bare)


@pytest.mark.timeout(240)
def test_make_test_starts_its_own_mysql_and_redis_runs_the_tests_on_them_and_stops_them(bare):
    run = subprocess.run([*STACK, "test", "--", "-q", "-p", "no:cacheprovider",
                          "tests/integration/test_catalog_cache.py::test_miss_then_hit_then_fresh_after_write"],
                         cwd=ROOT, env=bare.env, capture_output=True, text=True, timeout=200)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "1 passed" in output
    assert f"127.0.0.1:{bare.mysql} (DATABASE_URL): started mariadbd" in output
    assert f"127.0.0.1:{bare.redis} (REDIS_URL): started redis-server" in output
    assert_nothing_left(bare)


def test_a_server_program_that_cannot_be_had_is_one_sentence_and_a_failed_exit(bare, tmp_path):
    run = subprocess.run([*STACK, "run"], cwd=ROOT, env={**bare.env, "PATH": str(tmp_path)},  # no mariadbd, no apt-get
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert lines[0].endswith("mariadbd is not installed and there is no apt-get to install Debian's "
                             "mariadb-server: install mariadb-server, or set DATABASE_URL to a MySQL server that runs")
    assert_nothing_left(bare)


def test_a_server_of_our_own_is_shared_and_stopped_by_its_last_user(bare):
    url = bare.env["REDIS_URL"]
    with local_services.serve(local_services.REDIS, url):
        assert redis_answers("127.0.0.1", bare.redis)
        with local_services.serve(local_services.REDIS, url):  # a second command on the same machine
            pass
        assert redis_answers("127.0.0.1", bare.redis), "stopped while another command still used it"
    assert_nothing_left(bare)


def test_a_server_that_already_answers_is_used_and_left_running():
    server = ThrowawayRedis().start()  # stands for the machine's own Redis
    try:
        with local_services.serve(local_services.REDIS, server.url):
            assert not local_services.REDIS.data_dir(server.port).exists()  # none of our own started
        assert server.running and redis_answers("127.0.0.1", server.port)
    finally:
        server.close()
        for path in state_paths("redis", server.port):
            path.unlink(missing_ok=True)


def test_something_else_on_the_port_is_refused_with_a_sentence():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"something listens on 127.0.0.1:{port} \\(REDIS_URL\\) but is "
                                               "not Redis: free the port or set REDIS_URL"):
            with local_services.serve(local_services.REDIS, f"redis://127.0.0.1:{port}/0"):
                pass
    for path in state_paths("redis", port):
        path.unlink(missing_ok=True)

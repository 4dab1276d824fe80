"""One local server on one port, shared by every shop command that uses it
(docs/design.md section 5): the AWS endpoint, and MariaDB or Redis on a
machine that runs none.

`make run`, two `make test` runs from two checkouts and a bench may all need
the server on the same port. `shared_server` uses whatever already answers
there, and otherwise starts one. Each command holds a shared flock on a lock
file for the port while it uses the server, and a server that a shop command
started is stopped only by whoever finds itself the last holder: without that,
the first command to finish would pull the server away from the others
mid-run. A server the shop did not start (the machine's own MariaDB, a real
LocalStack) is never stopped.
"""
import contextlib
import fcntl
import logging
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger("shared_server")


def port_open(host, port, timeout=1.0):
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def state_paths(name, port):
    """Lock files and pid file of `name` on `port`, machine-wide (ports are)."""
    base = Path(tempfile.gettempdir())
    stem = f"shop-{name}-{port}"
    return base / f"{stem}.lock", base / f"{stem}.users", base / f"{stem}.pid"


def command_line(pid):
    """The process's arguments (bytes), or [] when there is no such process."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def stop_pid(pid, name, timeout=10):
    """SIGTERM, then SIGKILL after `timeout` seconds; reaps it when it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    log.warning("%s (pid %s) did not stop; killing it", name, pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _read_pid(pid_path):
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def shared_server(name, label, host, port, *, answers, start, ours, refusal, stop_timeout=10):
    """Use the server listening on host:port, or start one, for the duration of the block.

    name: the server's kind in the lock files' names; label: the server in log lines.
    answers(): True when what listens there is the wanted server (else RuntimeError(refusal)).
    start(): starts it and returns its pid once it answers.
    ours(pid): True when the process is a server a shop command starts, so that
    a pid file left behind (its pid since reused) never makes us stop someone else's.
    Yields the pid this command started, or None when it found one running."""
    lock_path, users_path, pid_path = state_paths(name, port)
    decide = open(lock_path, "a+")
    users = open(users_path, "a+")
    try:
        # `decide` (exclusive, held briefly) serialises starting and stopping;
        # `users` is held shared for as long as the server is in use.
        fcntl.flock(decide, fcntl.LOCK_EX)
        try:
            started = None
            if port_open(host, port):
                if not answers():
                    raise RuntimeError(refusal)
                if not ours(_read_pid(pid_path)):
                    pid_path.unlink(missing_ok=True)
            else:
                started = start()
                pid_path.write_text(str(started))
            fcntl.flock(users, fcntl.LOCK_SH)
        finally:
            fcntl.flock(decide, fcntl.LOCK_UN)
        try:
            yield started
        finally:
            _release(label, decide, users, pid_path, ours, stop_timeout)
    finally:
        users.close()
        decide.close()


def _release(label, decide, users, pid_path, ours, stop_timeout):
    """Leave the server; the last user stops one that a shop command started."""
    fcntl.flock(decide, fcntl.LOCK_EX)
    try:
        fcntl.flock(users, fcntl.LOCK_UN)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s still in use by another shop command; leaving it running", label)
            return
        pid = _read_pid(pid_path)
        if pid is not None and ours(pid):
            log.info("stopping %s (pid %s)", label, pid)
            stop_pid(pid, label, stop_timeout)
        pid_path.unlink(missing_ok=True)
        fcntl.flock(users, fcntl.LOCK_UN)
    finally:
        fcntl.flock(decide, fcntl.LOCK_UN)

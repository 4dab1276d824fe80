"""Runs Lambda handlers the way the Lambda Python runtime does, for the artifact
test (tests/tooling/test_artifact.py) and bench/lambda_sizes. Start it with
`python -I -B` (no PYTHONPATH, no user site, no script directory on the path,
no bytecode written: /var/task is read-only in Lambda) from an interpreter that
has nothing but the runtime's packages (requirements-runtime.txt):

    python -I -B lambda_driver.py PACKAGE_DIR RESULT_FD [--snapstart]

The unzipped deployment package is the only code it can import (the runtime's
/var/task). One process is one warm execution environment: it imports the
handler's module ($_HANDLER) as the runtime's init phase does, then reads one
invocation per line on stdin ({"handler": "module.function", "event": ...,
"remaining_ms": [...]}: the context's remaining time, one value per call, the
last repeating) and writes one JSON line per invocation to RESULT_FD: the
handler's return value or the exception it raised, and where the third-party
modules were loaded from. Stdout is left to the handlers (JSON logs, EMF).

--snapstart: Lambda SnapStart, emulated. After init the runtime hooks
registered with snapshot_restore_py run as the runtime runs them (before
snapshot: last registered first), and the process is the snapshot. Each
{"restore": true} line forks it: the child is an environment restored from
that snapshot; it runs the after-restore hooks (in registration order), says
so, and serves invocations until an {"end": true} line; the snapshot says
{"ended": true} once it is gone, then waits for the next restore. A fork shares the snapshot's memory as a restored
environment does; what it does not cost is Lambda's loading of the snapshot."""
import hashlib
import importlib
import json
import os
import random
import sys
import time
import traceback
import uuid

THIRD_PARTY = ("pymysql", "redis", "aws_lambda_powertools", "aws_xray_sdk", "chalice", "boto3", "botocore")


class LambdaContext:
    """The attributes and method of the runtime's context object."""

    def __init__(self, function_name, remaining_ms):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.invoked_function_arn = f"arn:aws:lambda:{os.environ['AWS_REGION']}:000000000000:function:{function_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2026/11/26/[$LATEST]artifact"
        self._remaining = list(remaining_ms)

    def get_remaining_time_in_millis(self):
        return self._remaining.pop(0) if len(self._remaining) > 1 else self._remaining[0]


def init_handler_module():
    """The init phase: the runtime imports the handler's module before the first
    invocation. An import error is reported by the first invocation instead."""
    try:
        importlib.import_module(os.environ["_HANDLER"].rpartition(".")[0])
        return None
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"


def invoke(invocation):
    module_name, _, function_name = invocation["handler"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        context = LambdaContext(os.environ["AWS_LAMBDA_FUNCTION_NAME"], invocation.get("remaining_ms", [30_000]))
        outcome = {"result": handler(invocation["event"], context)}
    except BaseException as exc:  # an import error is exactly what this driver is for
        outcome = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    outcome["origins"] = {name: getattr(sys.modules.get(name), "__file__", None) for name in THIRD_PARTY}
    return outcome


def _run_hooks(hooks):
    for func, args, kwargs in hooks:
        func(*args, **kwargs)
    return len(hooks)


def take_snapshot():
    from snapshot_restore_py import get_before_snapshot

    hooks = get_before_snapshot()
    return _run_hooks(list(reversed(hooks)))


def restore():
    from snapshot_restore_py import get_after_restore

    return _run_hooks(get_after_restore())


def random_state():
    """A digest of the `random` module's state: environments restored from one
    snapshot must not share it (jitter, anything drawn from `random`)."""
    return hashlib.sha256(repr(random.getstate()).encode()).hexdigest()[:16]


def write(results, message):
    results.write(json.dumps(message, default=str) + "\n")
    results.flush()


def serve(results):
    """Invocations from stdin until EOF or an {"end": true} line."""
    for line in sys.stdin:
        invocation = json.loads(line)
        if invocation.get("end"):
            return
        write(results, invoke(invocation))


def serve_snapshots(results):
    for line in sys.stdin:
        if not json.loads(line).get("restore"):
            raise SystemExit(f"a snapshot takes restore commands only, not {line!r}")
        started = time.perf_counter()
        snapshot_random = random.getstate()
        child = os.fork()
        if child == 0:
            try:
                # `random` reseeds itself in a forked child; a restored snapshot does not.
                random.setstate(snapshot_random)
                hooks = restore()
                write(results, {"restored": {"hooks": hooks, "random": random_state(), "pid": os.getpid(),
                                             "ms": (time.perf_counter() - started) * 1000}})
                serve(results)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        # Only now may the next command come: a line sent while the child still read would be the child's.
        write(results, {"ended": True})


def main(package_dir, result_fd, *options):
    sys.path.insert(0, package_dir)
    os.chdir(package_dir)
    with os.fdopen(int(result_fd), "w") as results:
        write(results, {"python": list(sys.version_info[:2]), "sys_path": sys.path})
        started = time.perf_counter()
        init_error = init_handler_module()
        init_ms = (time.perf_counter() - started) * 1000
        if "--snapstart" not in options:
            serve(results)
            return
        if init_error:
            write(results, {"error": init_error})
            return
        started = time.perf_counter()
        hooks = take_snapshot()
        write(results, {"snapshot": {"hooks": hooks, "init_ms": init_ms, "random": random_state(),
                                     "ms": (time.perf_counter() - started) * 1000}})
        serve_snapshots(results)


if __name__ == "__main__":
    main(*sys.argv[1:])

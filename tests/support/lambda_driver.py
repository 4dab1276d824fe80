"""Runs Lambda handlers the way the Lambda Python runtime does, for the artifact
test (tests/tooling/test_artifact.py). Start it with `python -I` (no
PYTHONPATH, no user site, no script directory on the path) from an interpreter
that has nothing but boto3/botocore installed, as the runtime has:

    python -I lambda_driver.py PACKAGE_DIR RESULT_FD

The unzipped deployment package is the only code it can import (the runtime's
/var/task). One process is one warm execution environment: it reads one
invocation per line on stdin ({"handler": "module.function", "event": ...,
"remaining_ms": [...]}: the context's remaining time, one value per call, the
last repeating) and writes one JSON line per invocation to RESULT_FD: the
handler's return value or the exception it raised, and where the third-party
modules were loaded from. Stdout is left to the handlers (JSON logs, EMF)."""
import importlib
import json
import os
import sys
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


def main(package_dir, result_fd):
    sys.path.insert(0, package_dir)
    os.chdir(package_dir)
    with os.fdopen(int(result_fd), "w") as results:
        results.write(json.dumps({"python": list(sys.version_info[:2]), "sys_path": sys.path}) + "\n")
        results.flush()
        for line in sys.stdin:
            results.write(json.dumps(invoke(json.loads(line)), default=str) + "\n")
            results.flush()


if __name__ == "__main__":
    main(*sys.argv[1:3])

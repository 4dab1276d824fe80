"""Structured JSON logs (Powertools Logger, request id and cold_start per
request) and X-Ray tracing where it is on."""
import os
import threading

from aws_lambda_powertools import Logger


def _truthy(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class _ColdStart:
    """True for the first request this process serves, False afterwards."""

    def __init__(self):
        self._lock = threading.Lock()
        self._seen = False

    def take(self):
        with self._lock:
            first, self._seen = not self._seen, True
            return first

    def restart(self):
        """An environment restored from a SnapStart snapshot starts here (chalicelib/snapstart.py)."""
        with self._lock:
            self._seen = False


class ShopLogger(Logger):
    """Powertools Logger (JSON). Request-scoped keys (`request_id`, appended by
    chalicelib/entrypoints/http.py for each request) are kept per thread, so concurrent
    requests of the local threaded server never swap ids, and each request's
    lines carry `cold_start` (Powertools' `inject_lambda_context` does this
    for plain Lambda handlers, not for Chalice views)."""

    REQUEST_KEYS = ("request_id",)

    def append_keys(self, **additional_keys):
        scoped = {k: additional_keys.pop(k) for k in self.REQUEST_KEYS if k in additional_keys}
        if scoped:
            if "request_id" in scoped:
                scoped["cold_start"] = COLD_START.take()
            self.thread_safe_append_keys(**scoped)
        if additional_keys:
            super().append_keys(**additional_keys)

    def remove_keys(self, keys):
        keys = list(keys)
        scoped = [k for k in keys if k in self.REQUEST_KEYS]
        if scoped:
            self.thread_safe_remove_keys(scoped + (["cold_start"] if "request_id" in scoped else []))
        rest = [k for k in keys if k not in self.REQUEST_KEYS]
        if rest:
            super().remove_keys(rest)


COLD_START = _ColdStart()
logger = ShopLogger(service="shop")


class _NoTracer:
    """Stand-in with the Tracer methods we use, where tracing is off."""

    enabled = False

    def capture_method(self, method=None, **kwargs):
        return method if method is not None else (lambda fn: fn)

    capture_lambda_handler = capture_method

    def put_annotation(self, key, value):
        pass

    def put_metadata(self, key, value, namespace=None):
        pass


def _tracing_enabled():
    # Powertools' own rule (Tracer._is_tracer_disabled) without importing
    # aws_xray_sdk: building a Tracer imports it even when disabled, which
    # costs hundreds of milliseconds of cold start.
    if _truthy(os.environ.get("POWERTOOLS_TRACE_DISABLED", "false")):
        return False
    if os.environ.get("AWS_SAM_LOCAL") or os.environ.get("AWS_CHALICE_CLI_MODE"):
        return False
    return bool(os.environ.get("LAMBDA_TASK_ROOT"))


def _make_tracer():
    if not _tracing_enabled():
        return _NoTracer()
    from aws_lambda_powertools import Tracer

    # X-Ray subsegments for SQS/Secrets Manager calls and MySQL queries.
    return Tracer(service="shop", patch_modules=("botocore", "pymysql"))


tracer = _make_tracer()

"""The packaged functions run here as Lambda runs them, for the artifact test
(tests/tooling/test_artifact.py) and bench/lambda_sizes: an interpreter of
the runtime's version with only the runtime's packages, the environment the
template gives a function, one process per execution environment
(tests/support/lambda_driver.py), and the events API Gateway and SQS hand over."""
import contextlib
import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import boto3

from chalicelib.settings import QUEUES

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
DRIVER = ROOT / "tests" / "support" / "lambda_driver.py"
RUNTIME_REQUIREMENTS = ROOT / "requirements-runtime.txt"
ADMIN_KEY_ID, STANDARD_KEY_ID, APP_KEY_ID = "artifact-admin-key-id", "artifact-standard-key-id", "artifact-app-key-id"
# What the template's Fn::Join gives API_KEY_CLIENTS once API Gateway has made the keys.
KEY_CLIENTS = f"{ADMIN_KEY_ID}=admin,{STANDARD_KEY_ID}=dev,{APP_KEY_ID}=mobile-app"
POOL_ID = "us-east-1_Artifact1"
ISSUER = f"https://cognito-idp.us-east-1.amazonaws.com/{POOL_ID}"
# Template variables that name cloud resources; everything else is used as packaged.
CLOUD_ENDPOINTS = {*(q.setting for q in QUEUES), "DATABASE_SECRET_ARN", "APP_DATABASE_SECRET_ARN", "DATABASE_HOST",
                   "DATABASE_PORT", "DATABASE_NAME", "DATABASE_TLS", "DATABASE_READER_URL", "REDIS_URL",
                   "REDIS_STATE_URL",
                   "CURSOR_SECRET_ARN", "AWS_ENDPOINT_URL",
                   "API_KEY_CLIENTS", "COGNITO_USER_POOL_ID", "COGNITO_APP_CLIENT_IDS", "ORDER_EVENTS_TOPIC_ARN",
                   "ORDER_PAYMENT_WINDOW_SECONDS", "NOTIFY_FROM_EMAIL", "OPERATOR_EMAIL"}


def _python(version):
    """An interpreter of `version` that runs (a pyenv shim of a version not enabled does not)."""
    candidates = [shutil.which(f"python{version}"), *sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python"))]
    if "%d.%d" % sys.version_info[:2] == version:
        candidates.insert(0, getattr(sys, "_base_executable", sys.executable))
    for candidate in filter(None, candidates):
        if subprocess.run([str(candidate), "-c", ""], capture_output=True).returncode == 0:
            return str(candidate)
    raise AssertionError(f"no python{version} on this machine: the template's runtime cannot be tested")


def packaged_functions(out):
    """The stack packaged for prod into `out` and its zip unpacked as Lambda's task root:
    (the template, the task root)."""
    from scripts import package
    template = json.loads(package.package(stage="prod", out=out, quiet=True).read_text())
    task_root = out / "task"
    with zipfile.ZipFile(out / "deployment.zip") as archive:
        archive.extractall(task_root)
    return template, task_root


def runtime_python(version):
    """A virtualenv of Python `version` with only the runtime's packages, built
    once under build/ and rebuilt when requirements-runtime.txt changes."""
    stamp_value = hashlib.sha256(RUNTIME_REQUIREMENTS.read_bytes()).hexdigest()
    venv = ROOT / "build" / f"lambda-runtime-{version}"
    stamp = venv / ".requirements.sha256"
    if not stamp.exists() or stamp.read_text() != stamp_value:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([_python(version), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(RUNTIME_REQUIREMENTS)], check=True)
        stamp.write_text(stamp_value)
    return venv / "bin" / "python"


@contextlib.contextmanager
def cloud_endpoints(test_env):
    """Values for the template's cloud endpoints, on this machine's services
    (a test session's `test_env`); the database secret is made for the block."""
    secrets = boto3.client("secretsmanager", endpoint_url=test_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    secret = secrets.create_secret(Name=f"artifact-db-{uuid.uuid4().hex[:8]}",
                                   SecretString=json.dumps({"username": "root", "password": ""}))
    # What the template's generated CursorSecret holds: a plain string, read once per process.
    cursor_secret = secrets.create_secret(Name=f"artifact-cursor-{uuid.uuid4().hex[:8]}",
                                          SecretString=uuid.uuid4().hex + uuid.uuid4().hex)
    try:
        yield {
            **{q.setting: test_env[q.setting] for q in QUEUES},
            "DATABASE_SECRET_ARN": secret["ARN"],
            # The app user is made on a throwaway server (test_tls_and_db_users), never on the shared one.
            "APP_DATABASE_SECRET_ARN": "",
            "DATABASE_HOST": "127.0.0.1",
            "DATABASE_PORT": "3306",
            "DATABASE_NAME": test_env["DATABASE_URL"].rsplit("/", 1)[1],
            "DATABASE_TLS": "false",
            "DATABASE_READER_URL": "",   # the template's default: no reader, the writer serves every read
            "REDIS_URL": test_env["REDIS_URL"],
            "REDIS_STATE_URL": test_env["REDIS_STATE_URL"],
            "CURSOR_SECRET_ARN": cursor_secret["ARN"],
            # a prefix of its own under the session's: what the packaged functions write is told apart
            "REDIS_KEY_PREFIX": test_env["REDIS_KEY_PREFIX"] + "artifact:",
            "AWS_ENDPOINT_URL": test_env["AWS_ENDPOINT_URL"],
            "API_KEY_CLIENTS": KEY_CLIENTS,
            "COGNITO_USER_POOL_ID": POOL_ID,
            "COGNITO_APP_CLIENT_IDS": "artifact-app-client",
            "ORDER_EVENTS_TOPIC_ARN": test_env["ORDER_EVENTS_TOPIC_ARN"],
            "ORDER_PAYMENT_WINDOW_SECONDS": "0",  # the template's default
            "NOTIFY_FROM_EMAIL": test_env["NOTIFY_FROM_EMAIL"],  # verified on the local SES by the session
            "OPERATOR_EMAIL": test_env["OPERATOR_EMAIL"],
            # The package's cloud stage refuses loopback endpoints; this run means them.
            "ALLOW_LOOPBACK_ENDPOINTS": "true",
        }
    finally:
        for made in (secret, cursor_secret):
            secrets.delete_secret(SecretId=made["ARN"], ForceDeleteWithoutRecovery=True)


def function_environment(properties, endpoints, task_root, name):
    """What Lambda gives the function: the template's variables (cloud endpoints
    replaced) plus the runtime's own. Nothing of this process leaks in."""
    variables = properties.get("Environment", {}).get("Variables", {})
    assert "ALLOW_LOOPBACK_ENDPOINTS" not in variables, "the package must never let a cloud function use loopback"
    unresolved = sorted(k for k, v in variables.items() if not isinstance(v, str) and k not in CLOUD_ENDPOINTS)
    assert not unresolved, f"template variables with no local value: {unresolved}"
    env = {k: v for k, v in variables.items() if isinstance(v, str)}
    env.update(endpoints)
    env.update({
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "TZ": ":UTC",
        "AWS_LAMBDA_FUNCTION_NAME": f"shop-prod-{name}", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(properties["MemorySize"]),
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "LAMBDA_TASK_ROOT": str(task_root),
        "_HANDLER": properties["Handler"], "AWS_EXECUTION_ENV": "AWS_Lambda_" + properties["Runtime"],
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_SESSION_TOKEN": "test",
        "_X_AMZN_TRACE_ID": "Root=1-67a1b2c3-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1",
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:2000",
    })
    return env


class ExecutionEnvironment:
    """One execution environment of a packaged function (its own process).
    `snapstart`: the process is a snapshot (lambda_driver.py --snapstart) that
    serves only once `restore()` made an environment from it."""

    def __init__(self, runtime, task_root, env, log_path, snapstart=False, python_options=()):
        read_fd, write_fd = os.pipe()
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([str(runtime), "-I", "-B", *python_options, str(DRIVER), str(task_root),
                                      str(write_fd), *(["--snapstart"] if snapstart else [])],
                                     cwd=task_root, env=env, stdin=subprocess.PIPE, stdout=self.log,
                                     stderr=subprocess.STDOUT, pass_fds=(write_fd,), text=True)
        os.close(write_fd)
        self.results = os.fdopen(read_fd)
        self.started = self._read()
        self.handler = env["_HANDLER"]
        self.snapshot = self._read()["snapshot"] if snapstart else None

    def _read(self):
        line = self.results.readline()
        assert line, f"the function's process died; see {self.log.name}"
        return json.loads(line)

    def _send(self, message):
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def invoke(self, event, remaining_ms=(30_000,)):
        self._send({"handler": self.handler, "event": event, "remaining_ms": list(remaining_ms)})
        outcome = self._read()
        self.origins = outcome["origins"]
        assert "error" not in outcome, outcome.get("traceback")
        return outcome["result"]

    def restore(self):
        """A new environment restored from the snapshot (after the previous one ended)."""
        self._send({"restore": True})
        return self._read()["restored"]

    def end_restored(self):
        self._send({"end": True})
        assert self._read() == {"ended": True}

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)
        self.results.close()
        self.log.close()


def open_connections(pid, port):
    """Established TCP connections process `pid` holds to 127.0.0.1:`port` (MySQL, Redis)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(f"pid={pid}," in line for line in out.splitlines())


def proxy_event(method, path, body=None, query=None, admin=False, key="shop-prod-standard-key", claims=None,
                key_id=None, source_ip=None):
    """An API Gateway REST proxy event for `path`, shaped like the samples in events/;
    `claims`: what API Gateway's Cognito authorizer hands over for a valid customer token;
    `key_id`: the key's id (default the admin or the standard key's); `source_ip`: the caller's."""
    base = "apigw_create_product.json" if body is not None else "apigw_get_product.json"
    event = copy.deepcopy(json.loads((EVENTS / base).read_text()))
    resource = resource_for(path)
    event.update({"resource": resource, "path": path, "httpMethod": method,
                  "body": None if body is None else json.dumps(body),
                  "queryStringParameters": query or None,
                  "multiValueQueryStringParameters": {k: [v] for k, v in (query or {}).items()} or None,
                  "pathParameters": _path_parameters(resource, path)})
    event["headers"]["x-api-key"] = key
    event["multiValueHeaders"]["x-api-key"] = [key]
    context = event["requestContext"]
    context.update({"resourcePath": resource, "httpMethod": method, "path": "/prod" + path, "stage": "prod",
                    "requestId": str(uuid.uuid4())})
    context["identity"].update({"apiKey": key, "apiKeyId": key_id or (ADMIN_KEY_ID if admin else STANDARD_KEY_ID)})
    if source_ip:
        context["identity"]["sourceIp"] = source_ip
    if claims is not None:
        context["authorizer"] = {"claims": claims}
    return event


def resource_for(path):
    """The route API Gateway would pick: literal segments win over {parameters}."""
    import app as shop_app

    parts = path.split("/")
    matches = [r for r in shop_app.app.routes if len(r.split("/")) == len(parts)
               and all(t.startswith("{") or t == p for t, p in zip(r.split("/"), parts))]
    assert matches, f"no route for {path}"
    return max(matches, key=lambda r: sum(not t.startswith("{") for t in r.split("/")))


def _path_parameters(resource, path):
    params = {t[1:-1]: p for t, p in zip(resource.split("/"), path.split("/")) if t.startswith("{")}
    return params or None


def body(response):
    return json.loads(response["body"])


def sqs_event(sample, queue_name, bodies):
    """An SQS event like events/`sample`, one record per body."""
    event = json.loads((EVENTS / sample).read_text())
    template = event["Records"][0]
    records = []
    for message in bodies:
        record = copy.deepcopy(template)
        record.update({"messageId": str(uuid.uuid4()), "body": json.dumps(message),
                       "eventSourceARN": f"arn:aws:sqs:us-east-1:000000000000:{queue_name}"})
        records.append(record)
    return {"Records": records}

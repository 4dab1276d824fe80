"""The deployment package a cold start loads (scripts/package.py,
scripts/slim_package.py; docs/cold-starts.md): nothing the Lambda runtime
carries, bytecode for every module, one runtime for every function, and
SnapStart on the API and the SQS consumers behind the alias that API Gateway
and the event source mappings call."""
import hashlib
import json
import re
import shutil
import zipfile
from importlib.util import cache_from_source
from pathlib import Path

import pytest

from scripts import package, slim_package

ROOT = Path(__file__).resolve().parents[2]
ZIP_LIMIT_MB = 10
SNAPSTARTED = {"APIHandler", "HandleOrderIngest", "HandleCacheInvalidation", "HandleFlashOrders", "HandleOrderExpiry",
               "HandleRelatedProducts", "HandleNotifications"}


@pytest.fixture(scope="module")
def prod_package(tmp_path_factory):
    out = tmp_path_factory.mktemp("lean")
    template = json.loads(package.package(stage="prod", out=out, quiet=True).read_text())
    return out, template


def _pins(path):
    pins = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


def test_the_zip_ships_nothing_the_runtime_carries_and_bytecode_for_every_module(prod_package):
    out, _ = prod_package
    path = out / "deployment.zip"
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        tops = {name.split("/", 1)[0] for name in names}
        for carried in ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "dateutil", "six.py",
                        "snapshot_restore_py.py"):
            assert carried not in tops, f"{carried} is in the zip, though the runtime carries it"
        assert not [t for t in tops if t.startswith(("botocore-", "urllib3-", "python_dateutil-"))]
        modules = [n for n in names if n.endswith(".py") and n.split("/", 1)[0] in
                   ("app.py", "chalicelib", "pymysql", "redis", "aws_lambda_powertools", "chalice")]
        assert len(modules) > 300
        missing = [m for m in modules if cache_from_source(m) not in names]
        assert not missing, f"modules without bytecode (compiled at every cold start): {missing[:5]}"
        # PEP 552 unchecked-hash pycs: valid whatever mtimes the unzipped files get.
        flags = int.from_bytes(archive.read(cache_from_source("app.py"))[4:8], "little")
        assert flags == 0b01
    assert path.stat().st_size < ZIP_LIMIT_MB * 1e6, f"{path.stat().st_size / 1e6:.1f} MB zipped"


def test_slimming_is_the_same_bytes_every_time(prod_package, tmp_path):
    """scripts/deploy.py uploads by content hash: an unchanged package must not change."""
    out, _ = prod_package
    digests = set()
    for attempt in range(2):
        copy = tmp_path / f"deployment-{attempt}.zip"
        shutil.copy(out / "package" / "deployment.zip", copy)  # what chalice built
        slim_package.slim(copy, "3.12")
        digests.add(hashlib.sha256(copy.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_bytecode_for_another_python_is_refused(prod_package, tmp_path):
    out, _ = prod_package
    copy = tmp_path / "deployment.zip"
    shutil.copy(out / "package" / "deployment.zip", copy)
    with pytest.raises(SystemExit, match="would be ignored"):
        slim_package.slim(copy, "3.11")
    with pytest.raises(SystemExit, match="not on python3.12"):
        package.check_runtime({"Resources": {"F": {"Type": "AWS::Serverless::Function",
                                                   "Properties": {"Runtime": "python3.11"}}}})


def test_the_tests_run_the_runtime_s_versions():
    """requirements-runtime.txt is what Lambda imports; the locks the tests install pin the same."""
    runtime = _pins(ROOT / "requirements-runtime.txt")
    dev = _pins(ROOT / "requirements-dev.txt")
    shipped = _pins(ROOT / "requirements.txt")
    assert runtime["boto3"] and runtime["botocore"] and runtime["snapshot-restore-py"]
    for name, version in runtime.items():
        assert dev.get(name) == version, (name, version, dev.get(name))
        assert shipped.get(name, version) == version, (name, version, shipped.get(name))


def test_snapstart_on_the_api_and_the_consumers_which_are_called_through_their_alias(prod_package):
    _, template = prod_package
    resources = template["Resources"]
    functions = {k: r["Properties"] for k, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    assert {p["Runtime"] for p in functions.values()} == {package.LAMBDA_RUNTIME}
    snapped = {name for name, p in functions.items() if p.get("SnapStart") == {"ApplyOn": "PublishedVersions"}}
    assert snapped == SNAPSTARTED
    for name in snapped:
        # SAM publishes a version per deploy and points the alias at it; its SQS mappings call the alias.
        assert functions[name]["AutoPublishAlias"] == package.SNAPSTART_ALIAS
    alias = package.alias_logical_id("APIHandler")
    uris = [operation["x-amazon-apigateway-integration"]["uri"]["Fn::Sub"]
            for methods in resources["RestAPI"]["Properties"]["DefinitionBody"]["paths"].values()
            for operation in methods.values() if isinstance(operation, dict)
            and "x-amazon-apigateway-integration" in operation
            and operation["x-amazon-apigateway-integration"].get("type") == "aws_proxy"]
    assert uris and all(f"${{{alias}}}" in uri and "APIHandler.Arn" not in uri for uri in uris)
    permissions = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"
                   and r["Properties"]["Principal"] == "apigateway.amazonaws.com"]
    assert permissions and all(p["FunctionName"] == {"Ref": alias} for p in permissions)

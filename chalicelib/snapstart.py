"""Lambda SnapStart's runtime hooks. With SnapStart a published version is
initialised once, snapshotted, and every new execution environment is a copy
restored from that snapshot, so what the snapshot holds is shared by them all.

Before the snapshot: load what a first request would import lazily (in the
snapshot it costs a restored environment nothing), then close every client:
a copied connection would be one socket, one TLS session and one MySQL
session shared by every copy, long dead by the time a copy runs.
After restore: reseed `random` (each copy would otherwise draw the same
jitter), and let bootstrap build fresh clients on first use (lazily: a
restore hook that fails because MySQL is down would fail the invocation; a
lazy connect answers 503 and recovers). uuid4 ids read os.urandom, so they
differ per copy without help. The database secret is read after restore too,
so a password rotated since the snapshot is picked up.

The hooks library (snapshot_restore_py) is part of the Lambda Python runtime
from 3.12; where it is missing (chalice local, the pollers) nothing is registered."""
import importlib
import pkgutil
import random

import chalicelib
from chalicelib import bootstrap
from chalicelib.ops import logs

# The AWS clients a first request builds (the database secret, the queues).
PRIMED_AWS_SERVICES = ("secretsmanager", "sqs")


def load_the_request_path():
    """Every chalicelib module (what they load lazily themselves stays lazy: the
    pinyin tables, the JWT library) and the AWS clients' models."""
    import boto3  # lazy: only the snapshot pays for it here

    for module in pkgutil.walk_packages(chalicelib.__path__, "chalicelib."):
        importlib.import_module(module.name)
    for service in PRIMED_AWS_SERVICES:
        # Loads botocore's models into the default session's cache; the dummy
        # keys keep the function's credentials out of the snapshot.
        boto3.client(service, region_name=bootstrap.settings().region, aws_access_key_id="snapshot",
                     aws_secret_access_key="snapshot").close()


def before_snapshot():
    load_the_request_path()
    bootstrap.reset()


def after_restore():
    random.seed()  # from os.urandom
    bootstrap.reset()
    logs.COLD_START.restart()


try:
    from snapshot_restore_py import register_after_restore, register_before_snapshot
except ImportError:
    pass
else:
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)

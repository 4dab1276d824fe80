"""pytest plugin: writes the node id of every failed test to the file named by
SHOP_FAILED_TESTS_FILE, so that `make test` can repeat them as its last lines
(after the local stack's own shutdown messages)."""
import os
from pathlib import Path

_failed = []


def pytest_runtest_logreport(report):
    if report.failed:
        _failed.append(report.nodeid + ("" if report.when == "call" else f" ({report.when})"))


def pytest_sessionfinish(session):
    path = os.environ.get("SHOP_FAILED_TESTS_FILE")
    if path and not hasattr(session.config, "workerinput"):  # xdist: the controller sees every report
        Path(path).write_text("".join(line + "\n" for line in _failed))

"""The lock files pin every package with hashes, agree with what was asked for
in the .in files, and the dev lock has the runtime lock's versions (the tests
run what the package ships)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s\\]+)")


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path):
    """{package: version} and the packages that carry at least one --hash."""
    pins, hashed, current = {}, set(), None
    for line in (ROOT / path).read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = _norm(match.group(1))
            pins[current] = match.group(3)
        elif line.strip().startswith("--hash=sha256:") and current:
            hashed.add(current)
        elif line.strip() and not line.startswith((" ", "#")):
            raise AssertionError(f"{path}: not a pinned requirement: {line!r}")
    return pins, hashed


def asked(path):
    pins = {}
    for line in (ROOT / path).read_text().splitlines():
        match = PIN.match(line.strip())
        if match:
            pins[_norm(match.group(1))] = match.group(3)
    return pins


def test_every_locked_package_is_pinned_with_hashes():
    for path in ("requirements.txt", "requirements-dev.txt"):
        pins, hashed = locked(path)
        assert pins and set(pins) == hashed, (path, sorted(set(pins) - hashed))


def test_the_locks_hold_what_the_in_files_ask_for():
    for lock, wanted in (("requirements.txt", "requirements.in"), ("requirements-dev.txt", "requirements-dev.in")):
        pins, _ = locked(lock)
        for name, version in asked(wanted).items():
            assert pins.get(name) == version, (lock, name, version, pins.get(name))


def test_the_tests_run_the_versions_that_ship():
    runtime, _ = locked("requirements.txt")
    dev, _ = locked("requirements-dev.txt")
    assert {name: dev.get(name) for name in runtime} == runtime

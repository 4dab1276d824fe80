"""`make test` ends by naming every failed test (the plugin writes them, stack.py repeats them)."""
import os
import subprocess
import sys
from pathlib import Path

from scripts.stack import failure_summary

ROOT = Path(__file__).resolve().parents[2]


def test_a_red_run_ends_with_the_names_of_its_failed_tests(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_fails(): assert 1 == 2\n"
        "@pytest.fixture\n"
        "def broken(): raise RuntimeError('setup')\n"
        "def test_errors(broken): pass\n"
    )
    report = tmp_path / "failed.txt"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.support.failed_tests", "-c", os.devnull,
         "--rootdir", str(tmp_path), "-p", "no:randomly", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "SHOP_FAILED_TESTS_FILE": str(report)}, capture_output=True, text=True,
        timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert report.read_text().splitlines() == ["test_sample.py::test_fails", "test_sample.py::test_errors (setup)"]

    closing = failure_summary(report, 1).splitlines()
    assert closing == ["pytest exited with 1; 2 failed:", "FAILED test_sample.py::test_fails",
                       "FAILED test_sample.py::test_errors (setup)"]


def test_a_run_that_left_no_list_says_so(tmp_path):
    assert "left no list of failed tests" in failure_summary(tmp_path / "missing.txt", 2)

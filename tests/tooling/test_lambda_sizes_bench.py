"""`make bench-lambda-sizes` keeps running: its --smoke mode (1,024 MB, one
environment, two requests per route) against this session's AWS endpoint.
Numbers are not judged here (benches measure speed, tests do not); that the
bench gets through seeding, the cold start, the warm routes, the ingest
consumer, a SnapStart restore and the import breakdown, and ends with its
machine-readable line, is."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.bench
@pytest.mark.timeout(600)
def test_the_bench_runs_in_smoke_mode(test_env):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "lambda_sizes"), "--smoke"], cwd=ROOT,
                            env={**os.environ, "AWS_ENDPOINT_URL": test_env["AWS_ENDPOINT_URL"]},
                            capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"cold_ms_1024=\d+ zip_mb=\d+\.\d", lines[-1]), lines[-1]
    assert any(re.match(r"size_mb=1024 .*api_restore_ms=\d", line) for line in lines), lines
    assert any(line.startswith("API init, imports at full speed") for line in lines), lines

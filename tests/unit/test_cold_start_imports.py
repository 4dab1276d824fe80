"""What a cold start imports: app.py loads the routes, not what only some
routes need (docs/cold-starts.md). Checked in a fresh interpreter, since this
one has imported everything already."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Module -> where it is loaded instead.
ON_DEMAND = {
    "pypinyin": "domain/search_text.py, where Chinese is indexed",
    "chalicelib.entrypoints.openapi": "GET /openapi.json",
    "jwt": "entrypoints/customer_tokens.py, where the app verifies tokens itself",
    "aws_xray_sdk": "ops/logs.py, when tracing is on",
    "boto3": "the first AWS client (the runtime's copy; a GET from the cache needs none)",
}


def _imported_by_app(**env):
    code = "import json, sys; import app; print(json.dumps(sorted(sys.modules)))"
    environment = {k: v for k, v in os.environ.items() if k not in ("LAMBDA_TASK_ROOT", "AWS_LAMBDA_FUNCTION_NAME")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**environment, **env},
                            capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_importing_the_app_leaves_what_only_some_routes_need():
    modules = _imported_by_app(POWERTOOLS_TRACE_DISABLED="true")
    for name, where in ON_DEMAND.items():
        assert name not in modules, f"{name} is imported at cold start; it belongs to {where}"
    assert "chalicelib.entrypoints.routes.ops" in modules  # the route that builds the document is there

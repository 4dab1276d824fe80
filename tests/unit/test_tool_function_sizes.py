"""The benches and the operators' scripts stay readable: no function over 80
lines (a long one is split where its steps are: setup, one measurement, the report)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 80


def _python_files():
    for folder in ("bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and (path.suffix == ".py" or (not path.suffix and path.read_bytes()[:2] == b"#!"
                                                             and b"python" in path.read_bytes().split(b"\n", 1)[0])):
                yield path


FILES = list(_python_files())


def test_the_benches_and_scripts_are_found():
    names = {p.name for p in FILES}
    assert {"lambda_sizes", "orders", "stack.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_is_over_80_lines(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: split {long}"

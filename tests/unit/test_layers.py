"""The layers of chalicelib point one way: entry points -> services -> domain,
with adapters implementing the ports the services declare (service/ports.py)
and bootstrap.py plugging them in. Read from the source (every import, those
inside functions too), so a late import cannot hide an arrow that runs back up."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "chalicelib"
MAX_MODULE_LINES = 400
DRIVERS = ("pymysql", "redis")
PORTS = "chalicelib.service.ports"


def _modules():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name, path):
    """Every module `name` imports (absolute names), with the line of each import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in MODULES else base), node.lineno


GRAPH = {name: sorted(set(_imports(name, path))) for name, path in MODULES.items()}


def _layer(module):
    """domain | service | adapters | entrypoints | ops | chalicelib (the top level) | None (outside)."""
    parts = module.split(".")
    if parts[0] != "chalicelib":
        return None
    return parts[1] if len(parts) > 2 else "chalicelib"


def _arrows(layer, allowed=lambda target: True):
    """`file:line -> target` of the imports of `layer`'s modules that `allowed` refuses."""
    return [f"{MODULES[name].relative_to(ROOT)}:{line} -> {target}"
            for name, edges in GRAPH.items() if _layer(name) == layer
            for target, line in edges if not allowed(target)]


def test_the_graph_is_read_from_the_source():
    # A parse that found nothing would pass every rule below.
    assert any(target == PORTS for edges in GRAPH.values() for target, _ in edges)
    assert {"domain", "service", "adapters", "entrypoints"} <= {_layer(name) for name in MODULES}


def test_the_domain_imports_nothing_of_chalicelib_but_the_domain():
    assert not _arrows("domain", lambda t: _layer(t) in (None, "domain"))


def test_services_import_no_adapter_and_no_entry_point():
    assert not _arrows("service", lambda t: _layer(t) not in ("adapters", "entrypoints", "chalicelib")
                       or t == "chalicelib")


def test_adapters_import_of_the_services_only_the_ports_and_no_entry_point():
    assert not _arrows("adapters", lambda t: _layer(t) not in ("service", "entrypoints", "chalicelib") or t == PORTS)


def test_no_service_speaks_a_database_or_redis_driver():
    assert not _arrows("service", lambda t: t.split(".")[0] not in DRIVERS)


def test_the_composition_root_and_observability_never_import_an_entry_point():
    for layer in ("chalicelib", "ops"):
        assert not _arrows(layer, lambda t: _layer(t) != "entrypoints"), layer


def _cycle():
    """One import cycle among chalicelib's modules, or None."""
    edges = {name: {t for t, _ in targets if t in MODULES and t != name} for name, targets in GRAPH.items()}
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle():
    # A package's __init__ importing its own modules is not a cycle; chalicelib's are empty.
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_cycle_finder_finds_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "chalicelib.domain.errors", [*GRAPH["chalicelib.domain.errors"],
                                                           ("chalicelib.domain.orders", 1)])
    cycle = _cycle()
    assert cycle and cycle[0] == cycle[-1]


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_no_module_is_over_400_lines(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines: split it along its seams"

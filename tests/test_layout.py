"""The package layout docs/architecture.md draws: which package may import which, no
import cycles between packages or between modules, and the product never imports loadtest.

Imports are read from the source (ast), including those under ``if TYPE_CHECKING:`` and
inside functions: a cycle there is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("relaycast", "community", "common", "sfu", "signaling", "turn", "hls_bridge", "ingest", "web")
PACKAGES = (*PRODUCT, "loadtest")

# docs/architecture.md, "Packages and what they may import".
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "web": set(),
    "turn": {"common"},
    "sfu": {"common"},
    "hls_bridge": {"common", "sfu"},
    "ingest": {"common", "sfu"},
    "signaling": {"common", "sfu", "turn", "hls_bridge", "web"},
    "community": {"common", "sfu", "signaling", "hls_bridge", "web"},
    "relaycast": {"common", "community", "sfu", "signaling", "turn", "hls_bridge", "ingest", "web"},
    "loadtest": {"common", "community", "sfu", "signaling", "turn", "hls_bridge", "ingest", "web", "relaycast"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{alias.name}" for alias in node.names)  # submodules
    return out


def _graph() -> dict[str, set[str]]:
    files = {
        _module_name(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "node_modules" not in p.parts
    }
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files and m != name}
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_the_known_imports() -> None:
    """The scanner itself works: known edges are found (a scanner that sees nothing would pass)."""
    assert "common.problems" in GRAPH["hls_bridge.origin"]
    assert "signaling.app" in GRAPH["relaycast.service"]
    assert "sfu.worker" in GRAPH["relaycast.service"]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    bad = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _package(module) == package
        for target in targets
        if _package(target) != package and _package(target) not in ALLOWED[package]
    )
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_no_import_cycles_between_packages() -> None:
    packages = {
        p: {_package(t) for m, ts in GRAPH.items() if _package(m) == p for t in ts} - {p}
        for p in PACKAGES
    }
    assert _cycles(packages) == []


def test_no_import_cycles_between_modules() -> None:
    # A package's __init__ importing its own submodules is a re-export, not a design cycle.
    graph = {m: {t for t in ts if not (m == _package(m) and _package(t) == m)} for m, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_product_never_imports_loadtest() -> None:
    bad = sorted(
        f"{m} -> {t}" for m, ts in GRAPH.items() if _package(m) in PRODUCT for t in ts if _package(t) == "loadtest"
    )
    assert not bad

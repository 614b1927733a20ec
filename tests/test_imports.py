"""One import root for test helpers: every module under tests/ imports a helper by its
package path (``from tests.e2e.browser import ...``), never by a bare name that works only
because pytest put the test's folder on ``sys.path``, and never from ``conftest`` (pytest
loads conftest.py itself; importing it again as a module loads a second copy).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

def _sources() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "node_modules" not in p.parts)


def _is_test_file(path: Path) -> bool:
    return path.name.startswith("test_") or path.name.endswith("_test.py")


HELPER_NAMES = frozenset(
    p.stem for p in _sources() if not _is_test_file(p) and p.name != "__init__.py"
) | {"conftest"}


def bad_imports(tree: ast.AST) -> list[str]:
    """``import X`` / ``from X import ...`` of a bare test-helper module or of conftest, as
    ``"line N: module"`` strings."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "tests" or node.module.startswith("tests."):
                names += [f"{node.module}.{a.name}" for a in node.names if a.name == "conftest"]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in HELPER_NAMES or name.endswith(".conftest"):
                found.append(f"line {node.lineno}: {name}")
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_helpers_imported_by_package_path(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    found = bad_imports(ast.parse(path.read_text(), filename=rel))
    assert not found, f"{rel}: import helpers as tests.<dir>.<module>, not {found}"


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("from conftest import STREAM_KEY", True),
        ("from tests.conftest import make_config", True),
        ("import conftest", True),
        ("import browser", True),
        ("from sfu_helpers import wait_for", True),
        ("import lossy as l", True),
        ("from tests import conftest", True),
        ("from tests.e2e.browser import open_page", False),
        ("from tests.services import STREAM_KEY", False),
        ("from signaling import browser", False),
        ("from . import x", False),
    ],
)
def test_bad_imports_detects(source: str, bad: bool) -> None:
    assert bool(bad_imports(ast.parse(source))) is bad

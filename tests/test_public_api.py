"""Each package's public surface is its `__init__.py`: a sorted, complete `__all__`."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = [
    "bus",
    "bus.transport",
    "broker",
    "components.runtime",
    "components.health",
    "components.echo",
    "components.district",
    "components.orchestrator",
    "components.router",
    "components.scheduler",
    "components.swarm",
    "mafia",
    "mesh",
    "store",
]


def _public_names(module: ModuleType) -> set[str]:
    """Public names the package's `__init__.py` binds at top level (imports and definitions)."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.asname or alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def _all_of(name: str) -> tuple[ModuleType, list[str]]:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        if name == "broker":
            pytest.skip("broker has no __all__ yet")
        pytest.fail(f"{name} has no __all__")
    return module, list(exported)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_without_duplicates(name: str) -> None:
    _, exported = _all_of(name)
    assert exported == sorted(exported)
    assert len(exported) == len(set(exported))


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_every_public_name_of_the_package(name: str) -> None:
    module, exported = _all_of(name)
    assert _public_names(module) - set(exported) == set(), "public but not in __all__"


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_in_all_exists(name: str) -> None:
    module, exported = _all_of(name)
    missing = [n for n in exported if not hasattr(module, n)]
    assert missing == []
    assert all(not n.startswith("_") for n in exported)
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)  # what a star import gives
    assert set(namespace) - {"__builtins__"} == set(exported)


def test_the_checker_sees_imports_definitions_and_assignments(tmp_path: Path) -> None:
    source = tmp_path / "fake.py"
    source.write_text(
        "from __future__ import annotations\n"
        "import os.path\n"
        "from x import a, b as c, _d\n"
        "def f(): ...\n"
        "class K: ...\n"
        "VALUE = 1\n"
        "typed: int = 2\n"
        "_hidden = 3\n"
        "__all__ = ['a']\n"
    )
    module = ModuleType("fake")
    module.__file__ = str(source)
    assert _public_names(module) == {"os", "a", "c", "f", "K", "VALUE", "typed"}

"""Imports point one way: from the command line down to the policy language.

docs/architecture.md describes the layers. A module may import its own layer and the layers
below it; ``cli/`` never imports ``worker/`` (the commands run where no worker does).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "celery_policies"
#: Bottom to top. A name is a module or a folder directly under the package.
LAYERS: list[set[str]] = [
    {"errors", "compat", "guard", "connections", "headers", "logs", "location",
     "redelivery"},
    {"spec"},
    {"appinfo", "policy"},
    {"deadletters"},
    {"sentry"},
    {"metrics"},
    {"tools"},
    {"lint"},
    {"worker"},
    {"console"},
    {"cli"},
    {"celery_command", "__init__", "__main__"},
]
#: Pairs (importer, imported) forbidden even though the layers allow them.
FORBIDDEN = {("cli", "worker"), ("console", "worker")}


def layer_of(unit: str) -> int:
    for index, names in enumerate(LAYERS):
        if unit in names:
            return index
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS and docs/architecture.md")


def unit_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(path: Path, source: str | None = None) -> set[str]:
    """The package's top-level units a module imports (relative and absolute imports)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # folders between it and the package
    found: set[str] = set()
    tree = ast.parse(path.read_text() if source is None else source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 < depth:  # stays inside its own folder
                    continue
                names = (node.module.split(".")[:1] if node.module
                         else [alias.name for alias in node.names])
                found.update(names)
            elif node.module and node.module.startswith("celery_policies."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("celery_policies."):
                    found.add(alias.name.split(".")[1])
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer() -> None:
    for path in MODULES:
        layer_of(unit_of(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    unit = unit_of(path)
    for imported in imported_units(path):
        assert layer_of(imported) <= layer_of(unit), f"{unit} imports {imported}, a layer above it"
        assert (unit, imported) not in FORBIDDEN, f"{unit} must not import {imported}"


def test_the_walk_sees_imports_that_point_up() -> None:
    """The check itself: upward imports written either way in a module of ``spec/`` are
    found, and an import inside its own folder is not mistaken for one."""
    model = PACKAGE / "spec" / "model.py"
    assert imported_units(model) <= {"errors", "spec"} | LAYERS[0]
    assert "worker" in imported_units(model, "from ..worker import runtime\n")
    assert "worker" in imported_units(model, "from ..worker.routes import x\n")
    assert "worker" in imported_units(model, "import celery_policies.worker.runtime\n")
    assert imported_units(model, "from .durations import parse_duration\n") == set()

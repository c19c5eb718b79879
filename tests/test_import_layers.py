"""Imports in ``backend/`` run downward only: the layer order of docs/ARCHITECTURE.md ("Layers"), checked by
parsing every module with ``ast``, so imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BACKEND = REPO / "backend"

# Lowest first. A module may import its own unit and any unit of a lower layer; units of one layer never import
# each other. A unit is a package of the engine (``backend.scail2.<name>``), a root module of the engine, or a
# top-level part of ``backend``.
LAYERS: list[set[str]] = [
    {"blender-side"},  # backend.client, backend.launcher, backend.palette: stdlib + requests, Blender imports them
    {"scail2.errors"},
    {"scail2.loaders"},
    {"scail2.models", "scail2.accel", "scail2.parallel", "scail2.schedulers"},
    {"scail2.conditioning"},
    {"scail2.pipelines"},
    {"scail2.testing", "masks"},
    {"scail2.cli", "scail2.tiny", "scail2.parity", "scail2"},  # commands, and the contract package
    {"worker"},
]
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}
BLENDER_SIDE = {"backend.client", "backend.launcher", "backend.palette"}  # and backend/__init__.py
# Command-line modules are entry points: nothing in backend/ imports them.
COMMANDS = {"backend.scail2.cli", "backend.scail2.tiny", "backend.scail2.parity", "backend.masks.cli",
            "backend.worker.cli"}
# The tools for tests and fidelity: only their own commands use them, never the engine or the services.
TESTING = "backend.scail2.testing"
TESTING_USERS = {"scail2.testing", "scail2.tiny", "scail2.parity"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str | None:
    """The layering unit of a ``backend`` module, or None for anything outside ``backend``."""
    parts = module.split(".")
    if module == "backend" or ".".join(parts[:2]) in BLENDER_SIDE:
        return "blender-side"
    if parts[0] != "backend" or len(parts) < 2:
        return None
    if parts[1] != "scail2":
        return parts[1]
    return "scail2" if len(parts) == 2 else f"scail2.{parts[2]}"


def imported_modules(path: Path, name: str | None = None) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in ``path``, relative ones resolved against ``name`` (default:
    the module ``path`` is); ``from P import m`` gives ``P.m`` too when ``m`` is a module."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:
                if is_module(f"{target}.{alias.name}"):
                    yield f"{target}.{alias.name}", node.lineno


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def backend_modules() -> list[Path]:
    return sorted(BACKEND.rglob("*.py"))


def test_every_backend_unit_has_a_layer():
    units = {unit_of(module_name(path)) for path in backend_modules()}
    assert units - set(RANK) == set(), "give these parts of backend/ a layer in LAYERS (and in docs/ARCHITECTURE.md)"


def test_imports_run_downward_only():
    violations = []
    for path in backend_modules():
        importer = unit_of(module_name(path))
        for target, line in imported_modules(path):
            imported = unit_of(target)
            if imported is None or imported == importer:
                continue
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            if RANK[imported] > RANK[importer]:
                violations.append(f"{where}: {imported} is above {importer}")
            elif RANK[imported] == RANK[importer]:
                violations.append(f"{where}: {imported} and {importer} are on one layer")
    assert violations == []


def test_no_module_imports_a_command_or_a_testing_tool():
    violations = []
    for path in backend_modules():
        importer = module_name(path)
        for target, line in imported_modules(path):
            if target in COMMANDS and target != importer:
                violations.append(f"{path.relative_to(REPO)}:{line} imports the command module {target}")
            if (target == TESTING or target.startswith(TESTING + ".")) and unit_of(importer) not in TESTING_USERS:
                violations.append(f"{path.relative_to(REPO)}:{line} imports the test tool {target}")
    assert violations == []


def test_the_checker_sees_a_lazy_upward_import(tmp_path: Path):
    """A function-level import counts: the kind of import that hid the model's reach into ``parallel``."""
    path = tmp_path / "example.py"
    path.write_text("def build():\n    from ..pipelines.pipeline_scail2 import Scail2Pipeline\n    return Scail2Pipeline\n")
    found = list(imported_modules(path, "backend.scail2.models.example"))
    assert ("backend.scail2.pipelines.pipeline_scail2", 2) in found
    assert RANK[unit_of("backend.scail2.pipelines.pipeline_scail2")] > RANK[unit_of("backend.scail2.models.example")]


@pytest.mark.parametrize("name", importlib.import_module("backend.scail2").__all__)
def test_the_contract_is_importable_from_the_package(name: str):
    """docs/ARCHITECTURE.md's engine contract: every name loads from ``backend.scail2`` itself."""
    assert getattr(importlib.import_module("backend.scail2"), name) is not None

"""The package layering of docs/architecture.md, enforced.

Every package of ``clew`` has a level. A package may import itself and packages of a strictly lower
level, never a peer or anything above: checked on the source (every import statement, also those
inside functions) and on a fresh interpreter per package (what importing it really pulls in). No
two modules import each other in a circle at import time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "clew"

LEVELS = {
    # the one error type every layer raises
    "errors": 0,
    # base: no model, no torch
    "allocator": 1,
    "files": 1,
    "assets": 1,
    "render": 2,
    # the model core
    "models": 2,
    # dictionaries, which read and write at the model's hook points
    "dictionaries": 3,
    # a model and a dictionary together: the live replacement model, the frozen one of a prompt
    "replacement": 4,
    # what is computed on a replacement model: graphs, training, head motifs, toy models
    "attribution": 5,
    "training": 5,
    "heads": 5,
    "toys": 5,
    "features": 5,
    # what is built from those: the organism (trained, traced and examined)
    "qk": 6,
    "intervene": 6,
    "organism": 6,
    # many graphs: tracing a batch into a store, aggregation, comparison
    "batch": 7,
    # graphs read as circuits: supernodes, summaries, their tested claims
    "circuits": 7,
    # the user's entry points
    "resolve": 8,
    "explorer": 8,
    "commands": 9,
    "cli": 10,
}
"""Package (or top-level module) under ``clew`` -> level. The coming packages go here too, at the
level docs/architecture.md gives them."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _package(module: str) -> str:
    """``clew.attribution.engine`` -> ``attribution``; the root ``clew`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, top_level_only: bool) -> list[tuple[str, int]]:
    """The ``clew`` modules that ``path`` imports, with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "clew"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clew":
            for alias in node.names:  # `from clew.x import y` imports the module clew.x.y when it is one
                sub = f"{node.module}.{alias.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno))
    return found


def test_every_package_has_a_level():
    packages = {_package(m) for m in MODULES} - {""}
    assert packages <= set(LEVELS), (
        f"place these in LEVELS and docs/architecture.md: {packages - set(LEVELS)}"
    )


def test_no_package_imports_a_peer_or_anything_above_it():
    wrong = []
    for module, path in MODULES.items():
        here = _package(module)
        if not here:  # the root package only re-exports, lazily, on attribute access
            continue
        for target, line in _imports(path, top_level_only=False):
            there = _package(target)
            if there and there != here and LEVELS[there] >= LEVELS[here]:
                wrong.append(
                    f"{path.relative_to(ROOT.parent)}:{line}: {here} (level {LEVELS[here]}) imports {target} (level {LEVELS[there]})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {
        m: {t for t, _ in _imports(p, top_level_only=True) if t in MODULES and t != m}
        for m, p in MODULES.items()
    }
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(t) :] + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_a_package_imported_alone_pulls_in_nothing_above_it():
    """Each package in a fresh interpreter: the clew modules it loads are its own or of lower levels."""
    script = "import importlib, json, sys; importlib.import_module(sys.argv[1]); print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'clew')))"
    procs = {
        pkg: subprocess.Popen(
            [sys.executable, "-c", script, f"clew.{pkg}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pkg in LEVELS
        if f"clew.{pkg}" in MODULES
    }
    wrong = []
    for pkg, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"import clew.{pkg} failed:\n{err}"
        for loaded in json.loads(out):
            there = _package(loaded)
            if there and there != pkg and LEVELS[there] >= LEVELS[pkg]:
                wrong.append(
                    f"import clew.{pkg} (level {LEVELS[pkg]}) loads {loaded} (level {LEVELS[there]})"
                )
    assert not wrong, "\n".join(wrong)

"""The import rules of the layers, read from the source (``ast``), so that a change that breaks
them fails here rather than in a review:

- the models import nothing of the training engine (only its protocol, ``recsys.training.api``),
  of tracking, of the commands or of the workflows: a model is one file plus a registry line;
- scoring, data and evaluation import neither mlflow nor the command layer;
- only ``recsys.tracking`` imports mlflow, and only ``recsys.cli`` / ``recsys.commands``
  import argparse;
- the module-level imports inside recsys form no cycle (imports inside functions are how a
  module reaches a higher layer on demand; ``TYPE_CHECKING`` imports are for type hints only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "recsys"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import outside ``if TYPE_CHECKING:``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module or ""
                found.append((name, top))
                # `from recsys.x import y` may import the submodule recsys.x.y
                found.extend((f"{name}.{alias.name}", top) for alias in child.names)
            nested = top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested)

    visit(ast.parse(path.read_text()), True)
    return found


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _offenders(importers: tuple[str, ...] | set[str], forbidden: tuple[str, ...],
               allowed: tuple[str, ...] = ()) -> list[str]:
    """``importers``: packages (a tuple: they and their modules) or exact module names (a set)."""
    def chosen(module: str) -> bool:
        return module in importers if isinstance(importers, set) else _within(module, *importers)

    return sorted(f"{module} imports {target}"
                  for module, targets in IMPORTS.items() if chosen(module)
                  for target, _ in targets
                  if _within(target, *forbidden) and not _within(target, *allowed))


def test_the_rules_read_real_imports():
    """The walker sees the imports it must (guards against a rule passing on nothing)."""
    assert ("recsys.training.api", True) in IMPORTS["recsys.models.neural"]
    assert any(t == "mlflow" for t, _ in IMPORTS["recsys.tracking.mlflow"])
    assert any(t == "argparse" for t, _ in IMPORTS["recsys.commands.train"])


def test_models_know_neither_the_engine_nor_tracking_nor_the_faces():
    assert _offenders(("recsys.models",),
                      ("recsys.training", "recsys.tracking", "recsys.commands", "recsys.workflows",
                       "recsys.cli", "mlflow", "argparse"),
                      allowed=("recsys.training.api",)) == []


@pytest.mark.parametrize("layer", ["recsys.scoring", "recsys.data", "recsys.evaluation"])
def test_the_core_imports_neither_mlflow_nor_the_commands(layer):
    assert _offenders((layer,), ("mlflow", "recsys.commands", "recsys.cli", "recsys.workflows",
                                 "recsys.tracking")) == []


def test_only_tracking_imports_mlflow():
    everything_else = {m for m in MODULES if not _within(m, "recsys.tracking")}
    assert _offenders(everything_else, ("mlflow",)) == []


def test_only_the_command_layer_sees_argparse():
    library = {m for m in MODULES if not _within(m, "recsys.cli", "recsys.commands")}
    assert _offenders(library, ("argparse",)) == []


def test_no_import_cycles_at_module_level():
    graph = {module: sorted({t for t, top in targets if top and t in MODULES and t != module})
             for module, targets in IMPORTS.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in graph:
        if module not in state:
            walk(module, [])
    assert cycles == []

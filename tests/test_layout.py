"""The layout is the architecture: packages in layers, imports pointing down, no cycle, and no import
hidden in a function to get round one. Parses the source; imports nothing of the project."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own layer and those before it, never one after it.
LAYERS = ["config", "store", "losses", "models", "data", "hardlabel", "eval", "engine", "jobs", "ui", "cli", "app"]

# Entry points import the project inside functions on purpose: the CLI loads torch only for the commands
# that need it, the worker sets its environment before transformers is imported, app.py prepares the
# offline default before it builds the UI.
LAZY_ENTRY_POINTS = {"workbench.cli", "workbench.cli_cluster", "workbench.__main__", "jobs.worker", "app"}


def _modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in ("workbench", "jobs"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("jobs", "app"):
        return parts[0]
    if module in ("workbench.cli", "workbench.cli_study", "workbench.cli_cluster", "workbench.__main__"):
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported project module, line, inside a function) for every import statement of `module`."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn) if node is not fn}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in MODULES:
                found.append((name, node.lineno, id(node) in in_function))
    return found


def test_every_module_sits_in_a_layer():
    assert [m for m in MODULES if m != "workbench" and layer(m) is None] == []


def test_every_package_says_what_it_owns_and_may_import():
    for package in ("workbench", "jobs", *(f"workbench.{name}" for name in LAYERS if (ROOT / "workbench" / name).is_dir())):
        doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
        assert doc and len(doc.split()) >= 25, f"{package}/__init__.py needs a paragraph on what it owns"


def test_imports_point_down():
    upward = [f"{module}:{line} imports {target} ({layer(module)} -> {layer(target)})"
              for module in MODULES for target, line, _ in imports(module)
              if LAYERS.index(layer(target) or "config") > LAYERS.index(layer(module) or "app")]
    assert upward == []


def test_no_import_cycle():
    graph = {module: {target for target, _, _ in imports(module) if target != module} for module in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert cycles == []


def test_no_project_import_hides_in_a_function_outside_the_entry_points():
    hidden = [f"{module}:{line} imports {target} inside a function"
              for module in MODULES if module not in LAZY_ENTRY_POINTS
              for target, line, in_function in imports(module) if in_function]
    assert hidden == []


@pytest.mark.parametrize("source, target", [("workbench.config.schema", "workbench.ui.app"),
                                            ("workbench.losses.fused", "workbench.engine.runner")])
def test_the_direction_check_catches_an_upward_import(source, target, monkeypatch, tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(f"import {target}\n")
    monkeypatch.setitem(MODULES, source, fake)
    with pytest.raises(AssertionError):
        test_imports_point_down()

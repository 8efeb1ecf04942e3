"""The package's layers import only downward: a newcomer can read each layer without the ones above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cxrutils"

# Each layer and the layers it may import (besides itself). The pipeline reads top to bottom:
# base (files, text, settings, summary) -> data -> statistics -> the training engine -> evaluation ->
# comparison and inference (siblings) -> what notebooks show -> publishing the reports -> the command line.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "data": {"base"},
    "demo": {"base", "data"},
    "stats": {"base"},
    "engine": {"base", "data", "stats"},
    "evaluate": {"base", "data", "stats", "engine"},
    "compare": {"base", "data", "stats", "engine", "evaluate"},
    "inference": {"base", "data", "stats", "engine"},
    "show": {"base", "data", "demo", "stats", "engine", "evaluate", "compare", "inference"},
    "publish": {"base", "data", "demo", "stats", "engine", "evaluate", "compare", "inference", "show"},
    "cli": {"base", "data", "demo", "stats", "engine", "evaluate", "compare", "inference", "show", "publish"},
}
# The package's top-level modules that are the command line; every other top-level module is the base layer.
COMMAND_LINE = {"cli", "__main__"}
# Layers that must run without torch (their users include CPU-only tools and worker processes).
TORCH_FREE = {"base", "data", "demo", "stats"}


def layer_of(module: str) -> str:
    """``cxrutils.data.cache`` -> data; ``cxrutils.labels`` -> base; ``cxrutils.cli`` -> cli."""
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "cli" if parts[1] in COMMAND_LINE else "base"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(part for part in relative.parts if part != "__init__")
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def _imports(tree: ast.Module, module: str) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = module.split(".")[: -node.level] if not module.endswith("__init__") else module.split(".")
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def test_every_layer_is_known():
    layers = {layer_of(name) for name in _modules() if name != "cxrutils"}
    assert layers <= set(ALLOWED), layers - set(ALLOWED)


def test_layers_import_only_the_layers_below_them():
    modules = _modules()
    wrong = []
    for name, tree in modules.items():
        if name == "cxrutils":
            continue
        layer = layer_of(name)
        for imported in _imports(tree, name):
            if not imported.startswith("cxrutils.") or imported not in modules:
                continue
            target = layer_of(imported)
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{name} ({layer}) imports {imported} ({target})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_lower_layers_do_not_import_torch():
    wrong = [
        name for name, tree in _modules().items()
        if name != "cxrutils" and layer_of(name) in TORCH_FREE
        and any(imported == "torch" or imported.startswith(("torch.", "torchvision", "torchxrayvision"))
                for imported in _imports(tree, name))
    ]
    assert not wrong, wrong


def test_a_lower_layer_importing_a_higher_one_is_caught():
    tree = ast.parse("from cxrutils.engine.train import train\n")
    imported = _imports(tree, "cxrutils.stats.metrics")
    assert "cxrutils.engine.train" in imported
    assert layer_of("cxrutils.engine.train") not in ALLOWED[layer_of("cxrutils.stats.metrics")]


def _import_graph(modules: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Which of the package's modules each module imports, at its top or inside a function.

    ``from cxrutils.evaluate import localization`` inside ``cxrutils.evaluate`` names its own
    package only to reach a sibling module: that is an edge to the sibling, not to the package.
    """
    return {name: {imported for imported in _imports(tree, name)
                   if imported in modules and imported != name and not name.startswith(imported + ".")}
            for name, tree in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle of ``graph`` (as the modules of a strongly connected component, sorted), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_module_imports_itself_through_others():
    cycles = import_cycles(_import_graph(_modules()))
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_a_cycle_is_caught():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_name_is_repeated_at_two_levels():
    """``cache.py`` beside ``data/cache.py`` made a reader ask which one runs: each name says one thing."""
    names: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            names.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE)))
    packages = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    repeated = {stem: where for stem, where in names.items() if len(where) > 1 or stem in packages}
    assert not repeated, repeated


def test_the_folders_read_as_the_pipeline():
    """Every sub-package is a layer of ALLOWED, and ALLOWED names no layer that is not there."""
    packages = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    assert packages == set(ALLOWED) - {"base", "cli"}

"""The package's layers import only downward: a newcomer can read each layer without the ones above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cxrutils"

# Each layer and the layers it may import (besides itself). The pipeline reads top to bottom:
# files -> data -> statistics -> the training engine -> evaluation -> comparison and inference -> reports.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "data": {"base"},
    "demo": {"base", "data"},
    "stats": {"base"},
    "engine": {"base", "data", "stats"},
    "evaluate": {"base", "data", "stats", "engine"},
    "compare": {"base", "data", "stats", "engine", "evaluate"},
    "inference": {"base", "data", "stats", "engine", "evaluate"},
    "report": {"base", "data", "demo", "stats", "engine", "evaluate", "compare", "inference"},
    "commands": {"base", "data", "demo", "stats", "engine", "evaluate", "compare", "inference", "report"},
}
# Top-level modules that are command lines (python -m cxrutils.<name>) sit above everything.
COMMANDS = {"train", "reports", "rehearsal", "cache", "infer", "export"}
# Layers that must run without torch (their users include CPU-only tools and worker processes).
TORCH_FREE = {"base", "data", "demo", "stats"}


def layer_of(module: str) -> str:
    """``cxrutils.data.cache`` -> data; ``cxrutils.labels`` -> base; ``cxrutils.train`` -> commands."""
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "commands" if parts[1] in COMMANDS else "base"


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

"""The import rules of docs/architecture.md, checked on the source (no imports run):
arrows run one way, Lightning stays in the Lightning layers, peft stays in models/lora.py,
and the lower layers know no test model or toy world by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "draft_lightning"
# Layers that may import Lightning: the CLI, the LightningModules, the data module, the
# plug-ins, and the toy world's pretraining.
LIGHTNING_LAYERS = ("cli", "module", "base_module", "data", "training", "baselines", "toy")
# Layers that must know no test model or toy world (by import or by name).
NAME_BLIND = ("models", "samplers", "estimators", "rewards", "data", "evaluation", "regularizers")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module `path` imports (at any depth of the file), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def internal_edges() -> dict[str, set[str]]:
    return {
        name: {m for m in imports(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }


def layer(name: str) -> str:
    return name.split(".")[1] if "." in name else ""


def test_no_import_cycles():
    """Tarjan's strongly connected components over the package's import graph."""
    graph = internal_edges()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            # A package __init__ re-exporting its own submodules is not a cycle of concepts.
            members = [m for m in component if MODULES[m].name != "__init__.py"]
            if len(members) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


def test_lightning_only_in_its_layers():
    offenders = [
        name
        for name, path in MODULES.items()
        if layer(name) not in LIGHTNING_LAYERS
        and any(m == "lightning" or m.startswith("lightning.") for m in imports(path))
    ]
    assert not offenders, offenders


def test_peft_only_in_lora():
    offenders = [
        name
        for name, path in MODULES.items()
        if any(m == "peft" or m.startswith("peft.") for m in imports(path))
    ]
    assert offenders == ["draft_lightning.models.lora"], offenders


@pytest.mark.parametrize("package", NAME_BLIND)
def test_lower_layers_know_no_test_model_or_toy_world(package):
    for name, path in MODULES.items():
        if layer(name) != package:
            continue
        tree = ast.parse(path.read_text())
        bad_imports = [
            m
            for m in imports(path)
            if m.startswith(("draft_lightning.testing", "draft_lightning.toy"))
        ]
        assert not bad_imports, (name, bad_imports)
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        names = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and ("tiny:" in node.value or "toy:" in node.value)
        ]
        assert not names, (name, names)


def test_flat_modules_and_module_size():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= 12, flat
    assert len((PACKAGE / "module.py").read_text().splitlines()) <= 300


def test_the_rules_can_fail(tmp_path):
    """The cycle detector finds a planted cycle (so a pass above means something)."""
    global MODULES
    saved = MODULES
    (tmp_path / "a.py").write_text("import draft_lightning.b\n")
    (tmp_path / "b.py").write_text("from draft_lightning.a import x\n")
    MODULES = {"draft_lightning.a": tmp_path / "a.py", "draft_lightning.b": tmp_path / "b.py"}
    try:
        with pytest.raises(AssertionError):
            test_no_import_cycles()
    finally:
        MODULES = saved

"""The package layout: imports point one way, down the flow, and no module imports itself back through others.

Layers, lowest first: base (config, presets, distributed, io) → corpus → lm → model → collect → train →
interpret → view → report → the app (run, cli, memory, notebooks, the package root). A module may import its own
layer and the ones below it.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kit"
LAYERS = ["base", "corpus", "lm", "model", "collect", "train", "interpret", "view", "report", "app"]
BASE = {"kit.config", "kit.presets", "kit.distributed", "kit.io"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    if module in BASE or any(module.startswith(b + ".") for b in BASE):
        return 0
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else LAYERS.index("app")


def kit_imports(path: Path, known: set[str]) -> set[str]:
    """Every kit module `path` imports, at the top or inside a function (`from kit import x` counts as kit.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("kit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kit") and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
    return out


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: kit_imports(p, set(paths)) & set(paths) - {m} for m, p in paths.items()}


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (layer {LAYERS[layer(m)]}) imports {d} (layer {LAYERS[layer(d)]})"
                  for m, deps in g.items() for d in deps if layer(d) > layer(m))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, ignoring the implicit edge from a submodule to its own package's __init__."""
    found, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(g.get(m, ())):
            if m.startswith(d + "."):
                continue
            if state.get(d) == "open":
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_imports_point_down_the_flow():
    assert upward(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_look_for():
    planted = {"kit.model.transcoder": {"kit.train.trainer"}, "kit.train.trainer": {"kit.model.transcoder"}}
    assert upward(planted) == ["kit.model.transcoder (layer model) imports kit.train.trainer (layer train)"]
    assert cycles(planted) == [["kit.model.transcoder", "kit.train.trainer", "kit.model.transcoder"]]


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_small(path):
    assert len(path.read_text().splitlines()) <= 250, f"{path.name}: split it (one noun per file)"


def test_every_stage_package_says_what_it_owns():
    for pkg in ROOT.iterdir():
        if pkg.is_dir() and (pkg / "__init__.py").exists():
            doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text()))
            assert doc and "import" in doc, f"kit/{pkg.name}/__init__.py must say what it owns and may import"

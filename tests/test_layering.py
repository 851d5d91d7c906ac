"""The package's layering, checked on the source (an AST walk over msg_ray/, no imports executed).

Floors, bottom up: core (pure torch) < data < train (+ tracking, plots, export) < experiments (compare, tune)
< faces (CLIs). A module may import msg_ray modules of its own floor or lower, never higher; inside the train
floor the checkpoint format sits below the export (which reads checkpoint files) and the export below the rest of
the floor (the loop that writes both); msg_ray imports form
no cycle (function-local imports included, so a cycle cannot hide inside a function); the core and the data
floor import no Ray, DeepSpeed or MLflow, anywhere; function-local imports are kept for heavy optional
dependencies only (everything else is imported at the top).

To see the contract bite: add ``import ray`` to ``msg_ray/flops.py`` and run ``pytest tests/test_layering.py``:
``test_core_imports_no_framework`` fails naming ``msg_ray.flops -> ray``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "msg_ray"
CORE = {
    "msg_ray",
    "structure",
    "architecture",
    "archs",
    "archs.transformer",
    "archs.gpt_bert",
    "archs.llama",
    "archs.llama_spec",
    "masked_layers",
    "operators",
    "operators.base",
    "operators.msg",
    "operators.net2net",
    "operators.gstack",
    "operators.hypercloning",
    "operators.lemon",
    "model",
    "growth",
    "optim_carry",
    "schedule",
    "flops",
    "presets",
    "registry",
    "validate",
}
FLOORS = ("core", "data", "train", "experiments", "faces")
FACES = {"msg_ray.cli", "msg_ray.cli_args", "msg_ray.compare.cli", "msg_ray.data.cli", "msg_ray.tune.cli"}
FRAMEWORKS = ("ray", "deepspeed", "mlflow")
# imported inside functions on purpose: slow to import and not needed by most callers (each module says why)
# torch._dynamo: ~4 s to import, needed only where an engine is built (engine.freeze_import_heap)
DEFERRABLE = ("ray", "deepspeed", "mlflow", "datasets", "transformers", "torch._dynamo")


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def floor(mod: str) -> int:
    if mod in FACES:
        return FLOORS.index("faces")
    short = mod.removeprefix("msg_ray.")
    if mod == "msg_ray" or short in CORE:
        return FLOORS.index("core")
    top = short.split(".")[0]
    if top == "data":
        return FLOORS.index("data")
    if top in ("train", "tracking", "plots", "export"):
        return FLOORS.index("train")
    if top in ("compare", "tune"):
        return FLOORS.index("experiments")
    raise AssertionError(f"{mod}: no floor assigned; add it to tests/test_layering.py")


# the train floor's lower levels, bottom up; every other train-floor module sits above them
TRAIN_LEVELS = ("msg_ray.train.checkpoint", "msg_ray.export")


def train_level(mod: str) -> int:
    return TRAIN_LEVELS.index(mod) if mod in TRAIN_LEVELS else len(TRAIN_LEVELS)


def imports(mod: str) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in ``mod``; ``from pkg import sub`` names ``pkg.sub``
    when ``sub`` is a module of the package."""
    tree = ast.parse(MODULES[mod].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.col_offset == 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            out += [(m, node.col_offset == 0) for m in subs or [node.module]]
    return out


def internal_edges() -> dict[str, set[str]]:
    return {m: {i for i, _ in imports(m) if i in MODULES and i != m} for m in MODULES}


def test_every_module_has_a_floor_and_imports_only_downwards():
    bad = [
        f"{m} ({FLOORS[floor(m)]}) -> {i} ({FLOORS[floor(i)]})"
        for m, deps in internal_edges().items()
        for i in deps
        if floor(i) > floor(m)
    ]
    assert not bad, "imports of a higher floor:\n" + "\n".join(sorted(bad))


def test_checkpoint_sits_below_export_and_export_below_the_loop():
    train = FLOORS.index("train")
    bad = [
        f"{m} -> {i}"
        for m, deps in internal_edges().items()
        for i in deps
        if floor(m) == floor(i) == train and train_level(i) > train_level(m)
    ]
    assert not bad, "imports running back up the train floor (checkpoint < export < the rest):\n" + "\n".join(bad)
    assert "msg_ray.train.checkpoint" in internal_edges()["msg_ray.export"]  # the order is a real one


@pytest.mark.parametrize("floor_name", ["core", "data"])
def test_core_imports_no_framework(floor_name):
    bad = [
        f"{m} -> {i}"
        for m in MODULES
        if FLOORS[floor(m)] == floor_name
        for i, _ in imports(m)
        if i.split(".")[0] in FRAMEWORKS
    ]
    assert not bad, f"the {floor_name} floor must stay free of Ray/DeepSpeed/MLflow:\n" + "\n".join(bad)


def test_no_import_cycles():
    edges, state, cycles = internal_edges(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(edges[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join([*stack[stack.index(d) :], d]))
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_only_the_mlflow_backend_imports_mlflow():
    users = {m for m in MODULES for i, _ in imports(m) if i.split(".")[0] == "mlflow"}
    assert users and all(m.startswith("msg_ray.tracking.mlflow_") for m in users), sorted(users)


def test_function_local_imports_only_defer_heavy_dependencies():
    bad = [
        f"{m}: {i}"
        for m in MODULES
        for i, top in imports(m)
        if not top and not any(i == d or i.startswith(f"{d}.") for d in DEFERRABLE)
    ]
    assert not bad, "import these at the top of the module:\n" + "\n".join(bad)


def test_the_checker_sees_what_it_checks():
    """Guards the guard: the walk finds the imports the rules are about."""
    assert ("msg_ray.train.engine", True) in imports("msg_ray.train.growth_event")
    assert ("deepspeed", False) in imports("msg_ray.train.engine")
    assert "msg_ray.tune.results" in internal_edges()["msg_ray.tune.sweep"]  # `from msg_ray.tune import results`
    assert floor("msg_ray.flops") == 0 and floor("msg_ray.compare.cli") == FLOORS.index("faces")

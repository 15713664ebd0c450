"""dvc.yaml declares every library module a stage runs, so editing one re-runs that stage."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """tripletml / stage modules ``path`` imports anywhere (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from tripletml import oneshot`
    return found


def module_file(name: str) -> Path | None:
    if name == "common":
        return REPO / "stages" / "common.py"
    parts = name.split(".")
    # the package's __init__ holds conventions and re-exports only; not a stage dependency
    if parts[0] != "tripletml" or len(parts) != 2:
        return None
    path = REPO / "tripletml" / f"{parts[1]}.py"
    return path if path.is_file() else None


def closure(script: Path) -> set[str]:
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        rel = path.relative_to(REPO).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        todo.extend(f for f in map(module_file, imported_modules(path)) if f is not None)
    return seen


def stages():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in spec.items():
        stage = stage.get("do", stage)  # foreach stages
        script = stage["cmd"].split()[1]
        yield pytest.param(script, stage["deps"], id=name)


@pytest.mark.parametrize("script, deps", list(stages()))
def test_every_module_a_stage_runs_is_a_declared_dependency(script, deps):
    missing = closure(REPO / script) - set(deps)
    assert not missing, f"{script}: add to its deps in dvc.yaml: {sorted(missing)}"


def test_the_closure_follows_lazy_and_package_imports():
    needed = closure(REPO / "stages" / "train.py")
    assert {"tripletml/training.py", "tripletml/architectures.py", "tripletml/distribute.py", "stages/common.py"} <= needed
    assert "tripletml/__init__.py" not in needed

"""dvc.yaml declares every library module a stage runs, so editing one re-runs that stage."""

import ast
import re
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


ROOT = re.compile(r"\b(\w+) = (?:common\.)?params\([^)]*\)(?:\.(\w+))?")  # p = common.params() [.data]
INLINE = re.compile(r"\bparams\([^)]*\)\.(\w+)(?:\.(\w+))?")  # common.params().data.raw_dir
ALIAS = re.compile(r"\b(\w+) = (\w+)\.(\w+)\s*$", re.M)  # e = p.evaluate
METHODS = {"model_dump"}  # a whole section read at once


def _key(*parts: str) -> str:
    kept = [x for x in parts if x and x not in METHODS]
    return ".".join(kept[:2])


def params_read(script: Path) -> set[str]:
    """The params keys a stage script reads: ``p.section.key`` -> "section.key", a whole
    section (``p.model.model_dump()``, ``e = p.evaluate``) -> "section"."""
    text = script.read_text()
    prefix = {var: section for var, section in ROOT.findall(text)}
    for var, base, attr in ALIAS.findall(text):
        if prefix.get(base) == "":
            prefix[var] = attr
    read = {_key(a, b) for a, b in INLINE.findall(text)}
    for var, section in prefix.items():
        for a, b, call in re.findall(rf"\b{var}\.(\w+)(?:\.(\w+))?(\()?", text):
            if not section and a == "strategy" and call:  # Params.strategy(name): train.* merged with strategies.<name>
                read |= {"train", "strategies"}
            else:
                read.add(_key(section, a, b))
    if "common.strategies(" in text:  # the strategy list: the pair plus extra_strategies
        read.add("extra_strategies")
    return read - {""}


def covered(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(d + ".") or (key == "strategies" and d.startswith("strategies.")) for d in declared)


@pytest.mark.parametrize("script, stage", [(s.values[0], n) for s, n in ((p, p.id) for p in stages())])
def test_every_param_a_stage_reads_is_declared(script, stage):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    declared = [str(d) for d in spec.get("do", spec).get("params", [])]
    missing = sorted(k for k in params_read(REPO / script) if not covered(k, declared))
    assert not missing, f"{stage}: add to its params in dvc.yaml: {missing}"


def test_params_read_sees_keys_sections_and_strategy_lists(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "p = common.params()\ne = p.evaluate\nx = p.data.image_size\nm = p.model.model_dump()\n"
        "names = common.strategies(p)\ns = p.strategy('hard')\nn = e.n_way\n"
        "d = common.params(use_prepared=False).data\nr = d.raw_dir\nz = common.params().data.seed\n"
    )
    assert params_read(script) == {
        "evaluate", "evaluate.n_way", "data.image_size", "model", "extra_strategies", "train", "strategies",
        "data", "data.raw_dir", "data.seed",
    }

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


# Modules a stage runs whose work no output depends on: the MLflow logging only reads what a
# stage wrote (tests/test_tracking.py: a stage's outputs are the same whether the store answers
# or not), so editing it re-runs no stage. An observer may import no other library module
# (test below): otherwise an edit there could change outputs behind DVC's back.
OBSERVERS = {"tripletml/tracking.py"}


def library_imports(path: Path) -> set[str]:
    """The tripletml modules ``path`` imports, relative imports included (as "relative")."""
    tree = ast.parse(path.read_text())
    relative = any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(tree))
    return {m for m in imported_modules(path) if m.split(".")[0] == "tripletml"} | ({"relative"} if relative else set())


def closure(script: Path) -> set[str]:
    """The files a stage runs (its script, ``common``, library modules), observers left out."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        rel = path.relative_to(REPO).as_posix()
        if rel in seen or rel in OBSERVERS:
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


@pytest.mark.parametrize("observer", sorted(OBSERVERS))
def test_an_observer_imports_no_library_module_and_is_in_no_deps(observer):
    assert not library_imports(REPO / observer), f"{observer} imports library code: it cannot be left out of deps"
    listed = [s.id for s in stages() if observer in s.values[1]]
    assert not listed, f"{observer} is in the deps of {listed}: editing it would re-run them for nothing"
    module = observer[:-3].replace("/", ".")  # tripletml.tracking
    assert any(module in imported_modules(REPO / s.values[0]) for s in stages()), f"no stage uses {observer}"


def test_library_imports_sees_every_form(tmp_path):
    for line in ("import tripletml.data", "from tripletml import errors", "from tripletml.errors import DataError",
                 "def f():\n    from tripletml.embedder import load_embedder", "from . import data"):
        (tmp_path / "m.py").write_text(line + "\n")
        assert library_imports(tmp_path / "m.py"), line
    (tmp_path / "m.py").write_text("import os\nimport mlflow\nfrom pathlib import Path\n")
    assert not library_imports(tmp_path / "m.py")


ROOT = re.compile(r"\b(\w+) = (?:common\.)?params\([^)]*\)(?:\.(\w+))?[ \t]*(?:#.*)?$", re.M)  # p = common.params() [.data]
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
    read = {_key(a, b) for a, b in INLINE.findall(ROOT.sub("", text))}  # `d = params().data` alone reads nothing
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
        "data.raw_dir", "data.seed",
    }

"""A throw-away copy of the project (tracked sources, synthetic zips, tiny params) to run stages in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml
from synthetic import make_raw_dir

REPO = Path(__file__).resolve().parents[1]
TRACKED = ["dvc.yaml", "params.yaml", "stages", "tripletml", "profiles", ".gitignore", "docs/seed_runs.csv"]


def stage_env(work: Path, **extra: str) -> dict[str, str]:
    """The environment a stage runs with in ``work``: its own MLflow store, the copy's library."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", "PYTHONPATH": str(work), **extra}


def run_ok(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=kw.pop("env", stage_env(cwd)), timeout=900, **kw)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def make_repo(work: Path, train: dict | None = None, strategies: dict | None = None) -> Path:
    """Copy the project into ``work`` as a git + DVC repo with synthetic zips and tiny params.

    The strategies are the committed ones (``extra_strategies`` included), each on the tiny
    ``train`` schedule; ``train`` and ``strategies`` override further.
    """
    work.mkdir(parents=True, exist_ok=True)
    for name in TRACKED:
        src = REPO / name
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy(src, work / name)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=work, check=True)
    make_raw_dir(work / "data" / "raw")
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["data"].update(validation_alphabets=2)
    p["model"].update(filters=8, embedding_dim=16)
    p["train"].update(loops=2, steps_per_loop=3, batch_size=8, classes_per_batch=4, val_tasks=10, test_tasks=10, n_way=5, precision="float32")
    p["train"].update(train or {})
    for overrides in p["strategies"].values():  # the tiny schedule above applies to every strategy
        for key in [k for k in overrides if k in p["train"]]:
            del overrides[key]
    for name, s in p["strategies"].items():  # P x K batches the synthetic alphabets can fill
        if s["miner"] not in ("random", "hard"):
            s.update(classes_per_batch=4, samples_per_class=2)
    for name, values in (strategies or {}).items():
        p["strategies"].setdefault(name, {}).update(values)
    p["evaluate"].update(tasks=40, assignment_tasks=10, n_way=5)
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return work

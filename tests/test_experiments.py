"""DVC experiments as their users run them: queued, in their own workspaces, offline."""

import json
import os
import subprocess
import time

import pytest
import yaml
from conftest import copy_of
from repo_copy import run_ok

pytestmark = pytest.mark.slow


def _git_commit(work, message):
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], cwd=work, check=True)


def _queue_env(work):
    """No MLFLOW_TRACKING_URI: runs must land in the repo's own mlflow.db by default."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "PYTHONPATH": str(work)}


def _wait_for_queue(work, env, timeout=900):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = run_ok(["dvc", "queue", "status"], work, env=env).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"queue still busy after {timeout} s:\n{status}")


def test_queued_experiments_run_offline_from_the_cache(reproduced, tmp_path):
    work = copy_of(reproduced[0], tmp_path / "repo")  # after `dvc repro`: the cache holds raw data, splits, models
    env = _queue_env(work)

    for name, value in (("short", "train.loops=1"), ("wide", "train.margin=0.3")):
        run_ok(["dvc", "exp", "run", "--queue", "-n", name, "-S", value], work, env=env)
    run_ok(["dvc", "queue", "start", "-j", "1"], work, env=env)
    status = _wait_for_queue(work, env)
    assert status.count("Success") == 2, status

    for name in ("short", "wide"):
        log = run_ok(["dvc", "queue", "logs", name], work, env=env).stdout
        # the raw data and the prepared splits came out of the cache: nothing was downloaded or re-read
        assert "Running stage 'download'" not in log and "Running stage 'prepare'" not in log, log[-2000:]
        assert "Running stage 'train_random'" in log

    shown = json.loads(run_ok(["dvc", "exp", "show", "--json"], work, env=env).stdout)
    exps = {e["name"]: e for rev in shown for e in (rev.get("experiments") or []) for e in e["revs"]}
    assert {"short", "wide"} <= set(exps)
    for name in ("short", "wide"):
        metrics = exps[name]["data"]["metrics"]
        assert "test_acc20" in metrics["metrics/evaluate/random.json"]["data"], metrics.keys()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tripletml").experiment_id])
    tagged = {r.data.tags.get("dvc_experiment") for r in runs}
    assert {"short", "wide"} <= tagged, tagged
    for name in ("short", "wide"):
        stages = {r.data.tags.get("dvc_stage") for r in runs if r.data.tags.get("dvc_experiment") == name}
        assert {"train_random", "train_hard"} <= stages, (name, stages)


def test_a_profile_in_a_fresh_clone_keeps_the_placed_raw_data(reproduced, tmp_path):
    """A fresh clone has dvc.lock but an empty cache; the README has users place the zips by hand."""
    import shutil

    work = copy_of(reproduced[0], tmp_path / "repo")  # after `dvc repro`; profiles/run.py included
    env = _queue_env(work)
    (work / "profiles" / "tiny.yaml").write_text("train.margin: 0.3\n")
    _git_commit(work, "base")
    shutil.rmtree(work / ".dvc" / "cache")  # as cloned: the lock names outputs the cache lacks
    placed = {p.name: p.read_bytes() for p in (work / "data" / "raw").iterdir()}

    res = run_ok(["python", "profiles/run.py", "tiny"], work, env=env)
    assert {p.name: p.read_bytes() for p in (work / "data" / "raw").iterdir()} == placed, res.stdout[-2000:]
    shown = json.loads(run_ok(["dvc", "exp", "show", "--json"], work, env=env).stdout)
    exps = {e["name"] for rev in shown for e in (rev.get("experiments") or []) for e in e["revs"]}
    assert "tiny" in exps
    kept = json.loads((work / "runs" / "tiny" / "run.json").read_text())  # the finished run, kept as files
    assert kept["overrides"] == {"train.margin": 0.3} and kept["wall_seconds"] > 0 and kept["evaluated"]
    assert yaml.safe_load((work / "runs" / "tiny" / "params.yaml").read_text())["train"]["margin"] == 0.3

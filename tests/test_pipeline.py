"""The DVC pipeline end to end, in a temporary copy of the repo with synthetic zips and tiny params."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import copy_of
from repo_copy import run_ok, stage_env

pytestmark = pytest.mark.slow


_run = run_ok


def _ran(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(reproduced, tmp_path_factory):
    """The session's reproduced repo (conftest.reproduced), committed: `dvc exp run` branches from it."""
    work, stdout = reproduced
    return copy_of(work, tmp_path_factory.mktemp("pipeline") / "repo"), stdout


def test_repro_runs_every_stage_and_leaves_status_clean(repo):
    work, stdout = repo
    extra = [f"train_extra@{s}" for s in yaml.safe_load((work / "params.yaml").read_text())["extra_strategies"]]
    assert {"download", "prepare", "train_random", "train_hard", *extra, "evaluate", "report"} <= _ran(stdout)
    status = _run(["dvc", "status"], work).stdout
    assert "up to date" in status
    table = pd.read_csv(work / "reports" / "comparison.csv")
    for col in ["strategy", "test_acc20", "test_acc20_ci95_low", "test_acc20_ci95_high", "test_acc20_250",
                "within_acc20", "best_loop", "train_seconds", "seconds_per_step",
                "sampler", "miner", "assignment_best_acc20", "lake20_acc"]:
        assert col in table.columns
    assert list(table.strategy) == ["random", "hard", *(s.split("@")[1] for s in extra), "ensemble"]
    assert list(table.sampler[:2]) == ["triplets", "triplets"] and list(table.miner[:2]) == ["random", "hard"]
    assert table.lake20_acc.between(0, 100).all()  # the synthetic all_runs.zip was scored for every row
    summary = json.loads((work / "data" / "prepared" / "summary.json").read_text())
    assert summary["test"]["smallest_alphabet"] == {"name": "Eval0", "characters": 5}  # synthetic: 5, 6, 5
    md = (work / "reports" / "comparison.md").read_text()
    assert "McNemar" in md and "What moved 20-way accuracy" in md and "Lake et al.'s 20 official one-shot runs" in md
    for png in ["accuracy.png", "tasks.png", "hard_triplets.png"]:
        assert (work / "reports" / png).read_bytes()[:4] == b"\x89PNG"
    headline = json.loads((work / "metrics" / "summary.json").read_text())
    assert headline["hard"]["across"] == table.set_index("strategy").at["hard", "test_acc20"]
    tests = pd.read_csv(work / "reports" / "tests.csv")
    pair = tests[(tests.factor == "miner") & (tests.held == "sampler triplets") & (tests.task_set == "across")].iloc[0]
    assert headline["hard_minus_random"]["across"] == pytest.approx(pair.acc - pair.baseline_acc)


def test_the_default_profile_is_kept_as_a_run_folder_whose_models_score_as_evaluated(repo):
    work, _ = repo
    out = _run([sys.executable, "profiles/run.py", "default"], work).stdout
    assert "kept as runs/default/" in out
    info = json.loads((work / "runs/default/run.json").read_text())
    assert info["wall_seconds"] is None, "nothing ran, so no wall time is claimed"
    assert info["strategies"] == list(pd.read_csv(work / "reports/comparison.csv").strategy[:-1])
    scored = _run([sys.executable, "-m", "tripletml.runs", "score", "runs/default"], work).stdout
    for s in info["strategies"]:
        lake = json.loads((work / "metrics/evaluate" / f"{s}.json").read_text())["lake20_acc"]
        assert f"{s}: {lake:.2f} % on Lake's 20 runs" in scored, "a kept model scores as evaluate scored it"


def test_mlflow_has_one_run_per_training_stage_with_one_value_per_loop(repo):
    work, _ = repo
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{work}/mlflow.db")
    exp = client.get_experiment_by_name("tripletml")
    runs = client.search_runs([exp.experiment_id])
    by_name = {}
    for r in runs:
        by_name.setdefault(r.info.run_name, []).append(r)
    assert len(by_name["train_random"]) == 1 and len(by_name["train_hard"]) == 1
    for name in ("train_random", "train_hard"):
        run = by_name[name][0]
        for key in ("loss", "val_acc20", "test_acc20_250", "loop_seconds"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1, 2], (name, key, steps)
        assert run.data.tags["strategy"] == name.split("_")[1]
        assert run.data.params["train.loops"] == "2"
    report = by_name["report"][0]
    artifacts = {a.path for a in client.list_artifacts(report.info.run_id)}
    assert {"comparison.csv", "comparison.md", "accuracy.png"} <= artifacts
    assert len({r.data.tags["pipeline"] for r in runs}) == 1, "one pipeline tag groups the runs"


def test_hard_param_change_reruns_exactly_hard_evaluate_report(repo):
    work, _ = repo
    out = _run(["dvc", "exp", "run", "-S", "+strategies.hard.margin=0.3"], work).stdout
    assert _ran(out) == {"train_hard", "evaluate", "report"}
    shown = _run(["dvc", "exp", "show", "--csv"], work).stdout.splitlines()
    header = shown[0].split(",")
    col = header.index("strategies.hard.margin")
    assert "0.3" in {row.split(",")[col] for row in shown[1:]}, "the experiment is listed with its param"


def test_evaluate_param_change_reruns_evaluate_and_report_only(repo):
    work, _ = repo
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["evaluate"]["tasks"] = 30
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    ran = _ran(_run(["dvc", "repro"], work).stdout)
    assert ran == {"evaluate", "report"}


def test_bad_params_fail_before_any_work(repo, tmp_path):
    work, _ = repo
    p = yaml.safe_load((work / "params.yaml").read_text())
    p["train"]["lerning_rate"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(p))
    env = stage_env(work, TRIPLETML_PARAMS=str(bad))
    res = subprocess.run([sys.executable, "stages/train.py", "--strategy", "hard"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "unknown key 'train.lerning_rate'" in res.stderr and "learning_rate" in res.stderr

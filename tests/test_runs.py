"""Run folders (tripletml.runs) and the docs generated from them (tripletml.docs)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tripletml import docs, runs
from tripletml.errors import DataError
from tripletml.machine import machine_facts

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = {"random": ("triplets", "random"), "hard": ("triplets", "hard")}


def _workspace(root: Path, acc: dict[str, float], evaluated: bool = True) -> Path:
    """A workspace as the pipeline leaves it, for two strategies, in a git repository."""
    root.mkdir(parents=True, exist_ok=True)
    params = {"train": {"seed": 0}, "extra_strategies": [],
              "strategies": {s: {"sampler": a, "miner": b} for s, (a, b) in STRATEGIES.items()}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for s, value in acc.items():
        for sub in ("metrics/train", "metrics/history", "metrics/evaluate", f"models/{s}"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "metrics/train" / f"{s}.json").write_text(json.dumps(
            {"final_loss": 0.02, "assignment_best_acc20": value + 1, "assignment_best_loop": 2, "best_loop": 2,
             "best_val_acc20": value - 1, "train_seconds": 100.0, "seconds_per_step": 0.05}))
        pd.DataFrame({"loop": [1, 2], "loss": [0.1, 0.05], "val_acc20": [50.0, value - 1],
                      "test_acc20_250": [52.0, value + 1], "loop_seconds": [50.0, 50.0], "steps": [10, 10]}
                     ).to_csv(root / "metrics/history" / f"{s}.csv", index=False)
        if evaluated:
            (root / "metrics/evaluate" / f"{s}.json").write_text(json.dumps(
                {"test_acc20": value, "test_acc20_ci95_low": value - 2, "test_acc20_ci95_high": value + 2,
                 "within_acc20": value - 10, "within_acc20_ci95_low": value - 12, "within_acc20_ci95_high": value - 8,
                 "test_acc20_250": value, "lake20_acc": value - 5}))
        (root / f"models/{s}/embedding.keras").write_bytes(b"weights of " + s.encode())
        (root / f"models/{s}/meta.json").write_text("{}")
    if evaluated:
        ens = acc["hard"]
        (root / "metrics/evaluate/ensemble.json").write_text(json.dumps(
            {"test_acc20": ens, "within_acc20": ens - 10, "test_acc20_250": ens, "lake20_acc": ens - 5}))
        (root / "reports").mkdir(exist_ok=True)
        pd.DataFrame([{"factor": "miner", "held": "sampler triplets", "strategy": "hard", "baseline": "random",
                       "task_set": "across", "tasks": 100, "acc": acc["hard"], "baseline_acc": acc["random"],
                       "b": 20, "c": 5, "p_value": 0.004, "verdict": ""}]).to_csv(root / "reports/tests.csv", index=False)
    (root / "scratch.txt").write_text("not a pipeline output")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", "--allow-empty"], cwd=root, check=True)
    return root


def test_a_saved_run_holds_the_outputs_params_commit_and_machine(tmp_path):
    ws = _workspace(tmp_path / "ws", {"random": 80.0, "hard": 90.0})
    dest = runs.save_run("default", ws, tmp_path / "runs" / "default", {"train.loops": 2}, wall_seconds=612.34)
    assert (dest / "models/hard/embedding.keras").read_bytes() == b"weights of hard"
    assert (dest / "metrics/evaluate/ensemble.json").is_file() and (dest / "reports/tests.csv").is_file()
    assert not (dest / "scratch.txt").exists(), "only the pipeline's outputs are kept"
    info = json.loads((dest / "run.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True).stdout.strip()
    assert info["commit"] == head and info["overrides"] == {"train.loops": 2}
    assert info["strategies"] == ["random", "hard"] and info["evaluated"]
    assert (info["train_seconds"], info["wall_seconds"]) == (200.0, 612.3)
    assert info["machine"] == machine_facts()
    rec = runs.load_run(dest)
    assert rec.evaluate["hard"]["test_acc20"] == 90.0 and list(rec.histories["random"]["loop"]) == [1, 2]


def test_saving_again_replaces_the_folder_whole(tmp_path):
    ws = _workspace(tmp_path / "ws", {"random": 80.0, "hard": 90.0})
    dest = runs.save_run("p", ws, tmp_path / "runs" / "p")
    shutil.rmtree(ws / "models" / "hard")
    (ws / "metrics/train/hard.json").unlink()
    runs.save_run("p", ws, dest)
    assert not (dest / "models" / "hard").exists() and runs.load_run(dest).info["strategies"] == ["random"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["p"], "no temporary folder left behind"


def test_a_workspace_without_finished_training_is_refused_and_the_saved_run_kept(tmp_path):
    ws = _workspace(tmp_path / "ws", {"random": 80.0, "hard": 90.0})
    dest = runs.save_run("p", ws, tmp_path / "runs" / "p")
    shutil.rmtree(ws / "metrics")
    with pytest.raises(DataError, match=r"ws: no finished training"):
        runs.save_run("p", ws, dest)
    assert runs.load_run(dest).info["strategies"] == ["random", "hard"]


def test_outputs_another_run_left_are_not_kept(tmp_path):
    ws = _workspace(tmp_path / "ws", {"random": 80.0, "hard": 90.0})
    dest = runs.save_run("p", ws, tmp_path / "runs" / "p", exclude=["models/hard", "metrics/train/hard.json",
                                                                    "metrics/history/hard.csv", "metrics/evaluate"])
    rec = runs.load_run(dest)
    assert rec.info["strategies"] == ["random"] and not rec.info["evaluated"] and rec.evaluate == {}
    assert not (dest / "models" / "hard").exists() and (dest / "models" / "random" / "embedding.keras").is_file()


def test_a_half_finished_run_is_kept_with_what_it_has(tmp_path):
    ws = _workspace(tmp_path / "ws", {"random": 80.0, "hard": 90.0}, evaluated=False)
    rec = runs.load_run(runs.save_run("p", ws, tmp_path / "runs" / "p", note="the cores were shared"))
    assert not rec.info["evaluated"] and rec.evaluate == {} and rec.tests() is None
    facts = docs.run_facts(docs.Sources(tmp_path), "p")
    assert facts.endswith(" the cores were shared.")
    table = docs.run_table(docs.Sources(tmp_path), "p")
    assert "| hard | 91.0 (2) | 0.0200 | 100 s | 0.05 |" in re.sub(" +", " ", table), "the training stages' own figures"


# ----------------------------------------------------------------------------- docs


def _repo(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "repo"
    runs.save_run("default", _workspace(tmp_path / "ws", {"random": 80.0, "hard": 90.0}), root / "runs" / "default")
    (root / "docs").mkdir()
    (root / "README.md").write_text(text)
    (root / "docs" / "results.md").write_text("no blocks here\n")
    return root


BLOCKS = (
    "# t\n\n<!-- generated: run-table default -->\nold\n<!-- end generated -->\n\n"
    "<!-- generated: run-finding default -->\n<!-- end generated -->\n"
    "<!-- generated: run-table long -->\n<!-- end generated -->\ntail\n"
)


def test_blocks_are_made_from_the_run_folders(tmp_path):
    root = _repo(tmp_path, BLOCKS)
    assert docs.rewrite(root, check=True) == ["README.md: run-table default", "README.md: run-finding default",
                                              "README.md: run-table long"]
    docs.rewrite(root)
    text = (root / "README.md").read_text()
    assert "| hard | triplets | hard | 90.0 [88.0, 92.0] | 91.0 | 80.0 | 85.0 | 0.050 |" in re.sub(" +", " ", text)
    assert "hard 90.0 % vs random 80.0 %, p = 0.004" in text
    assert "`python profiles/run.py long` makes and keeps one" in text, "a profile without a run shows no figure"
    assert text.startswith("# t\n") and text.endswith("tail\n") and "old" not in text
    assert docs.rewrite(root, check=True) == []


def test_a_changed_figure_makes_the_check_fail(tmp_path, capsys):
    root = _repo(tmp_path, BLOCKS)
    docs.rewrite(root)
    path = root / "runs/default/metrics/evaluate/hard.json"
    path.write_text(path.read_text().replace('"test_acc20": 90.0', '"test_acc20": 90.5'))
    with pytest.raises(SystemExit) as exc:
        docs.main(["--check", "--root", str(root)])
    assert exc.value.code == 1 and "stale: README.md: run-table default" in capsys.readouterr().out


def test_an_unknown_block_is_named(tmp_path):
    root = _repo(tmp_path, "<!-- generated: nonsense x -->\n<!-- end generated -->\n")
    with pytest.raises(SystemExit, match="README.md: unknown generated block 'nonsense'"):
        docs.rewrite(root, check=True)


def test_the_committed_docs_agree_with_the_committed_runs():
    assert docs.rewrite(REPO, check=True) == [], "run `python -m tripletml.docs` and commit"


def test_a_figure_changed_in_a_committed_run_is_caught(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "runs", root / "runs", ignore=shutil.ignore_patterns("*.keras", "*.png"))
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copy(REPO / "README.md", root / "README.md")
    assert docs.rewrite(root, check=True) == []
    path = root / "runs/default/metrics/evaluate/hard.json"
    figures = json.loads(path.read_text())
    path.write_text(json.dumps({**figures, "test_acc20": figures["test_acc20"] + 0.5}))
    assert "README.md: run-table default" in docs.rewrite(root, check=True)

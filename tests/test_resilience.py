"""Failures driven for real on stage subprocesses: SIGKILL mid-loop, a full disk, an unwritable folder."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from repo_copy import make_repo, run_ok, stage_env
from synthetic import glyph

pytestmark = pytest.mark.slow

LOOPS = 4


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    # Loops long enough (about a second each) to land a kill in the middle of one.
    work = make_repo(tmp_path_factory.mktemp("resilience"), train={"loops": LOOPS, "steps_per_loop": 300})
    run_ok(["dvc", "repro", "prepare"], work)
    return work


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def _embed_probe(model_dir: Path) -> np.ndarray:
    from tripletml import load_embedder

    raw = np.stack([glyph(seed, 0) for seed in range(16)])
    return load_embedder(model_dir).embed(raw)


def test_sigkill_mid_loop_then_dvc_repro_resumes_the_same_run(repo: Path) -> None:
    folder = repo / "checkpoints" / "random"
    proc = subprocess.Popen(
        ["dvc", "repro", "train_random"], cwd=repo, env=stage_env(repo),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not list(folder.glob("*/state.json")):  # written atomically at the end of loop 1
        assert proc.poll() is None, "the stage ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    (state_file,) = folder.glob("*/state.json")  # one run, one folder
    loop_seconds = json.loads(state_file.read_text())["history"][0]["loop_seconds"]
    time.sleep(0.4 * loop_seconds)  # well inside loop 2
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage under it
    proc.wait()
    killed = json.loads(state_file.read_text())
    assert killed["next_loop"] == 1, "the kill landed in the middle of loop 2"
    assert not (repo / "models" / "random" / "embedding.keras").exists()

    out = run_ok(["dvc", "repro", "train_random"], repo).stdout
    assert "resuming random after loop 1" in out
    assert not (repo / "checkpoints" / "random").exists(), "a finished stage leaves no checkpoint behind"
    history = pd.read_csv(repo / "metrics" / "history" / "random.csv")
    assert list(history["loop"]) == list(range(1, LOOPS + 1))  # loop 1 from before the kill, the rest after

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("tripletml")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "train_random"]
    assert len(runs) == 1, "the resumed stage continues the killed stage's MLflow run"
    for key in ("loss", "val_acc20", "test_acc20_250", "loop_seconds"):
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, key)]
        assert sorted(steps) == list(range(1, LOOPS + 1)), (key, steps)

    # The same model as an uninterrupted run (its own MLflow store; no checkpoint to resume).
    resumed = _embed_probe(repo / "models" / "random")
    run_ok([sys.executable, "stages/train.py", "--strategy", "random"], repo,
           env=stage_env(repo, MLFLOW_TRACKING_URI=f"sqlite:///{repo}/uninterrupted.db"))
    uninterrupted = _embed_probe(repo / "models" / "random")
    np.testing.assert_allclose(resumed, uninterrupted, rtol=1e-4, atol=1e-5)


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_preparing_keeps_the_old_data(repo: Path) -> None:
    folder = repo / "data" / "prepared"
    before = _snapshot(folder)
    assert before["train.npz"] and len(before["train.npz"]) > 100_000
    res = subprocess.run(
        [sys.executable, "stages/prepare.py"], cwd=repo, env=stage_env(repo), capture_output=True, text=True,
        timeout=300, preexec_fn=_file_size_limit(100_000),  # the OS refuses to grow any file past 100 kB
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == "error: cannot write data/prepared/train.npz: File too large", res.stderr
    assert _snapshot(folder) == before, "old files intact, no temporary file left"


@pytest.mark.parametrize(
    "cmd, folder",
    [(["stages/prepare.py"], "data/prepared"), (["stages/train.py", "--strategy", "hard"], "metrics/history")],
)
def test_unwritable_output_folder_fails_before_any_work(repo: Path, cmd: list[str], folder: str) -> None:
    out = repo / folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "earlier.txt").write_text("an earlier output")
    before = _snapshot(out)
    argv = [sys.executable, *cmd]
    if os.geteuid() == 0:  # root writes through permissions: run without that capability
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing")
        argv = ["setpriv", "--bounding-set", "-dac_override", *argv]
    out.chmod(0o555)
    try:
        res = subprocess.run(argv, cwd=repo, env=stage_env(repo), capture_output=True, text=True, timeout=300)
    finally:
        out.chmod(0o755)
    assert res.returncode == 1
    # TensorFlow may log to stderr first; the stage's own error is one last line
    assert res.stderr.strip().splitlines()[-1] == f"error: cannot write to output folder {folder}: Permission denied", res.stderr
    assert _snapshot(out) == before
    assert not list((repo / "checkpoints").glob("hard/*/state.json")), "no training happened"


def test_tracking_server_lost_mid_stage_then_sync_logs_every_loop_once(tmp_path: Path) -> None:
    from servers import MlflowServer, free_port

    import mlflow

    # Long loops (seconds each) so the server is surely down before the stage ends.
    work = make_repo(tmp_path / "repo", train={"loops": 3, "steps_per_loop": 1500})
    run_ok([sys.executable, "stages/prepare.py"], work)
    server = MlflowServer(tmp_path, free_port())
    server.start()
    env = stage_env(work, MLFLOW_TRACKING_URI=server.uri)
    keys = ("loss", "val_acc20", "test_acc20_250", "loop_seconds")
    try:
        proc = subprocess.Popen([sys.executable, "stages/train.py", "--strategy", "random"], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        client = mlflow.MlflowClient(server.uri)
        deadline = time.monotonic() + 300
        while True:  # until loop 1 is in MLflow
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:] if proc.poll() else ""
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "attributes.run_name = 'train_random'")
            if runs and client.get_metric_history(runs[0].info.run_id, "loss"):
                break
            time.sleep(0.2)
        server.stop()
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]  # training went on
        assert "warning: MLflow store" in stderr and "python -m tripletml.tracking sync train_random" in stderr
        history = (work / "metrics" / "history" / "random.csv").read_text().splitlines()
        assert len(history) == 1 + 3, "every loop is in the DVC outputs"

        server.start()  # same port, same store
        run_id = runs[0].info.run_id
        assert len(client.get_metric_history(run_id, "loss")) < 3, "the server went down mid-run"
        for _ in range(2):  # sync is idempotent
            res = subprocess.run([sys.executable, "-m", "tripletml.tracking", "sync", "train_random"], cwd=work, env=env,
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
            assert res.returncode == 0, res.stderr[-3000:]
        assert f"train_random: MLflow run {run_id}: 0 metric values, 0 files, 0 datasets logged" in res.stdout
        runs = client.search_runs([runs[0].info.experiment_id], "attributes.run_name = 'train_random'")
        assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
        for key in keys:
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3], key  # each once
        assert runs[0].outputs.model_outputs, "the model, logged by sync"
    finally:
        server.stop()

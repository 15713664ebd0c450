"""A team on one experiment: one DVC remote on a real SSH server and one MLflow tracking server
on PostgreSQL with proxied artifacts, all started here on 127.0.0.1; two clones of the repo.

Clone A holds a finished pipeline (tiny params), logs it to the server and pushes; clone B,
fresh, pulls and finds everything A has; B's own stages log to the server as they run. Then the faults: the database restarted mid-stage, a push
killed midway, wrong credentials and an unreachable remote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import copy_of
from repo_copy import run_ok, stage_env
from servers import MlflowServer, Postgres, Sshd, free_port, served_model

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    db = Postgres(free_port())
    ssh = Sshd(root / "ssh", free_port())
    (root / "mlflow").mkdir()
    server = MlflowServer(root / "mlflow", free_port(), backend_uri=None)
    try:
        db.start()
        ssh.start()
        server.backend_uri = db.uri
        server.start()
        yield SimpleNamespace(db=db, ssh=ssh, mlflow=server, remote=root / "remote", root=root)
    finally:
        server.stop()
        ssh.stop()
        db.remove()


def _env(work: Path, team, **extra) -> dict:
    return stage_env(work, MLFLOW_TRACKING_URI=team.mlflow.uri, **extra)


def _use_key(work: Path, team, key: Path | None = None) -> None:
    """The key is each user's own: it goes into the clone's untracked .dvc/config.local."""
    run_ok(["dvc", "remote", "modify", "--local", "team", "keyfile", str(key or team.ssh.key)], work)


def _glyphs() -> np.ndarray:
    from synthetic import glyph

    return np.stack([glyph(seed, 1) for seed in range(6)])  # raw images, 1 = paper


@pytest.fixture(scope="module")
def clone_a(reproduced, team, tmp_path_factory):
    """A's finished pipeline (the session's reproduced repo), its runs logged from its outputs into
    the team's server (`tracking sync`), its data and models pushed to the team's remote."""
    a = copy_of(reproduced[0], tmp_path_factory.mktemp("a") / "repo")
    run_ok(["dvc", "remote", "add", "-d", "team", team.ssh.url(team.remote)], a)
    _use_key(a, team)
    run_ok([sys.executable, "-m", "tripletml.tracking", "sync"], a, env=_env(a, team))
    run_ok(["dvc", "push"], a)
    subprocess.run(["git", "add", "-A"], cwd=a, check=True)
    subprocess.run([*GIT, "commit", "-qm", "the team's remote"], cwd=a, check=True)
    return a


@pytest.fixture(scope="module")
def clone_b(clone_a, team, tmp_path_factory):
    b = tmp_path_factory.mktemp("b") / "repo"
    subprocess.run(["git", "clone", "-q", str(clone_a), str(b)], check=True)
    _use_key(b, team)
    run_ok(["dvc", "pull"], b)
    return b


def test_a_fresh_clone_pulls_the_same_experiment_and_reruns_nothing(clone_a, clone_b, team):
    assert "up to date" in run_ok(["dvc", "status"], clone_b).stdout
    assert "Running stage" not in run_ok(["dvc", "repro"], clone_b, env=_env(clone_b, team)).stdout
    shown = [json.loads(run_ok(["dvc", "metrics", "show", "--json"], w).stdout) for w in (clone_a, clone_b)]
    assert shown[0] == shown[1] and "metrics/summary.json" in shown[0][""]["data"]
    from tripletml.embedder import load_embedder

    a, b = (load_embedder(w / "models" / "hard").embed(_glyphs()) for w in (clone_a, clone_b))
    assert np.array_equal(a, b), "B's pulled model is A's, bit for bit"


def test_the_registered_model_serves_from_the_server_in_the_other_clone(clone_a, clone_b, team, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(team.mlflow.uri)
    version = client.get_model_version("tripletml-hard", "1")
    assert client.get_run(version.run_id).info.artifact_uri.startswith("mlflow-artifacts:"), "proxied: HTTP only"
    env = {**_env(clone_b, team), "MLFLOW_ENV_MANAGER": "local"}
    with served_model("models:/tripletml-hard/1", env, clone_b, tmp_path / "serve.log") as predict:
        served = predict(_glyphs())
    from tripletml.embedder import load_embedder

    np.testing.assert_allclose(served, load_embedder(clone_a / "models" / "hard").embed(_glyphs()), rtol=1e-5, atol=1e-6)


def test_a_queued_experiment_in_the_other_clone_logs_into_the_same_server_tagged(clone_b, team):
    env = _env(clone_b, team)
    run_ok(["dvc", "exp", "run", "--queue", "-n", "team-margin", "-S", "train.margin=0.3"], clone_b, env=env)
    run_ok(["dvc", "queue", "start", "-j", "1"], clone_b, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = run_ok(["dvc", "queue", "status"], clone_b, env=env).stdout
        if "team-margin" in status and not any(w in status for w in ("Queued", "Running")):
            break
        time.sleep(2)
    assert "Success" in status, status
    import mlflow

    client = mlflow.MlflowClient(team.mlflow.uri)
    exp = client.get_experiment_by_name("tripletml")
    tagged = client.search_runs([exp.experiment_id], "tags.dvc_experiment = 'team-margin'")
    assert {"train_random", "train_hard", "evaluate", "report"} <= {r.info.run_name for r in tagged}
    assert {r.data.params.get("train.margin") for r in tagged if r.info.run_name == "train_hard"} == {"0.3"}


def test_the_database_restarted_mid_stage_then_sync_leaves_each_loop_once(clone_b, team, tmp_path):
    """The stage finishes with one warning; `tracking sync` then logs what the run lacks, once."""
    params = yaml.safe_load((clone_b / "params.yaml").read_text())
    params["train"].update(loops=4, steps_per_loop=40, seed=7)  # a run of its own, seconds a loop
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = _env(clone_b, team, TRIPLETML_PARAMS=str(tmp_path / "params.yaml"))
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "stages/train.py", "--strategy", "random"], cwd=clone_b, env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("random loop 1/4"):
            team.db.stop()  # the server's database goes away in the middle of the stage ...
        if line.startswith("random loop 3/4"):
            team.db.start()  # ... and comes back before it ends
    assert proc.wait() == 0 and "random: chosen loop" in "".join(lines)
    err = (tmp_path / "stderr").read_text()
    assert err.count("warning:") == 1 and f"MLflow store {team.mlflow.uri}" in err, err
    for _ in range(2):  # the second sync finds nothing to add
        run_ok([sys.executable, "-m", "tripletml.tracking", "sync", "train_random"], clone_b, env=env)
    import mlflow

    client = mlflow.MlflowClient(team.mlflow.uri)
    exp = client.get_experiment_by_name("tripletml")
    tag = subprocess.run([sys.executable, "-c", "from tripletml.tracking import pipeline_tag; print(pipeline_tag())"],
                         cwd=clone_b, env=env, capture_output=True, text=True, check=True).stdout.strip()
    runs = client.search_runs([exp.experiment_id], f"tags.pipeline = '{tag}' and attributes.run_name = 'train_random'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    for key in ("loss", "val_acc20", "loop_seconds"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
    assert len([v for v in client.search_model_versions("name = 'tripletml-random'") if v.run_id == run.info.run_id]) == 1


def _cache_files(work: Path) -> set[str]:
    return {str(p.relative_to(work / ".dvc" / "cache")) for p in (work / ".dvc" / "cache").rglob("*") if p.is_file()}


def test_a_push_killed_midway_then_rerun_leaves_the_remote_complete(clone_a, team, tmp_path):
    spare = team.root / "spare"
    run_ok(["dvc", "remote", "add", "spare", team.ssh.url(spare)], clone_a)
    run_ok(["dvc", "remote", "modify", "--local", "spare", "keyfile", str(team.ssh.key)], clone_a)
    big = clone_a / "data" / "big.bin"  # big enough that a push takes seconds on loopback
    big.write_bytes(np.random.default_rng(0).bytes(300 * 2**20))
    run_ok(["dvc", "add", str(big)], clone_a)
    proc = subprocess.Popen(["dvc", "push", "-r", "spare"], cwd=clone_a, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(p.stat().st_size for p in spare.rglob("*") if p.is_file()) > 20 * 2**20:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL, "the push was stopped midway"
    assert "new:" in run_ok(["dvc", "status", "-c", "-r", "spare"], clone_a).stdout, "the remote lacks files"
    run_ok(["dvc", "push", "-r", "spare"], clone_a)
    assert "in sync" in run_ok(["dvc", "status", "-c", "-r", "spare"], clone_a).stdout
    # What the remote holds is whole: a fresh cache fetched from it has every file, byte for byte.
    fresh = tmp_path / "fresh"
    subprocess.run(["git", "clone", "-q", str(clone_a), str(fresh)], check=True)
    for name, value in (("url", team.ssh.url(spare)), ("keyfile", str(team.ssh.key))):
        run_ok(["dvc", "remote", "modify", "--local", "team", name, value], fresh)
    subprocess.run(["cp", str(clone_a / "data" / "big.bin.dvc"), str(fresh / "data")], check=True)
    run_ok(["dvc", "pull", "data/big.bin"], fresh)
    assert (fresh / "data" / "big.bin").read_bytes() == big.read_bytes()


@pytest.mark.parametrize("fault", ["wrong key", "unreachable"])
def test_wrong_credentials_or_an_unreachable_remote_fail_in_one_line_naming_it(clone_a, team, fault, tmp_path):
    before = _cache_files(clone_a)
    url = team.ssh.url(team.remote)
    if fault == "wrong key":
        key, where = team.ssh.folder / "host_key", "on host 127.0.0.1"  # a key the server does not know
    else:
        closed = free_port()  # nothing listens there
        key, where = team.ssh.key, f"('127.0.0.1', {closed})"
        url = url.replace(f":{team.ssh.port}/", f":{closed}/")
    run_ok(["dvc", "remote", "modify", "--local", "team", "keyfile", str(key)], clone_a)
    run_ok(["dvc", "remote", "modify", "--local", "team", "url", url], clone_a)
    try:
        res = subprocess.run(["dvc", "push", "-r", "team"], cwd=clone_a, capture_output=True, text=True, timeout=120)
    finally:
        (clone_a / ".dvc" / "config.local").unlink()
        _use_key(clone_a, team)
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and where in errors[0], errors
    assert _cache_files(clone_a) == before, "nothing lost locally"
    assert "up to date" in run_ok(["dvc", "status"], clone_a).stdout

"""tripletml.tracking: local sqlite store, a real `mlflow server` that dies mid-run, replay."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from tripletml import tracking
from tripletml.errors import TrackingError

pytest.importorskip("mlflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")  # mlflow's own SQLAlchemy use

PARAMS = {"train": {"learning_rate": 0.001, "augment": {"rotations": False, "affine": 0.0}}, "model": {"arch": "convnet"}}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Each test sees no MLFLOW_TRACKING_URI and gets back the environment it started with
    (RunLogger.start sets the MLFLOW_HTTP_* defaults process-wide)."""
    saved = dict(os.environ)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    # One database for the module: creating MLflow's tables costs seconds.
    return "sqlite:///" + (tmp_path_factory.mktemp("store") / "mlflow.db").as_posix()


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def steps(uri, run_id, key):
    return [int(m.step) for m in client(uri).get_metric_history(run_id, key)]


def tracking_warnings(record):
    return [w for w in record if issubclass(w.category, tracking.TrackingWarning)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- pure helpers


def test_default_uri_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.default_tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_default_uri_is_repo_root_also_from_a_dvc_temp_copy(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "stages" / "deep").mkdir(parents=True)
    expected = f"sqlite:///{repo.resolve().as_posix()}/mlflow.db"
    assert tracking.default_tracking_uri(repo) == expected
    assert tracking.default_tracking_uri(repo / "stages" / "deep") == expected
    # `dvc exp run --temp/--queue`: a full copy (with its own .dvc and .git) under .dvc/tmp/exps
    copy = repo / ".dvc" / "tmp" / "exps" / "xyz"
    (copy / ".dvc").mkdir(parents=True)
    (copy / ".git").mkdir()
    (copy / "stages").mkdir()
    assert tracking.default_tracking_uri(copy) == expected
    assert tracking.default_tracking_uri(copy / "stages") == expected
    assert expected.startswith("sqlite:////")  # absolute: four slashes


def test_pipeline_tag_and_git_commit(tmp_path, monkeypatch):
    a = tracking.pipeline_tag("train:\n  loops: 10\n", "abc")
    assert a == tracking.pipeline_tag("train:\r\n  loops: 10\r\n", "abc")
    assert re.fullmatch(r"[0-9a-f]{12}", a)
    assert a != tracking.pipeline_tag("train:\n  loops: 11\n", "abc")
    assert a != tracking.pipeline_tag("train:\n  loops: 10\n", "abd")
    assert tracking.pipeline_tag("x", None) != tracking.pipeline_tag("x", "abc")  # no commit is a value of its own

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert tracking.git_commit(tmp_path) is None  # not a repository
    assert tracking.git_commit(tmp_path / "missing") is None
    repo = tmp_path / "g"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    assert tracking.git_commit(repo) is None  # no commit yet
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
    sha = tracking.git_commit(repo)
    assert sha is not None and len(sha) == 40


def test_import_is_light():
    code = "import sys, tripletml.tracking; print('mlflow' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_check_reachable_closed_port_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")) as info:
        tracking.check_reachable(uri, timeout=2.0)
    assert time.monotonic() - t0 < 4
    assert "\n" not in str(info.value)


def test_check_reachable_sqlite(tmp_path):
    tracking.check_reachable(f"sqlite:///{tmp_path.as_posix()}/mlflow.db")
    with pytest.raises(TrackingError, match="does not exist"):
        tracking.check_reachable(f"sqlite:///{tmp_path.as_posix()}/nope/mlflow.db")


# ----------------------------------------------------------------------------- sqlite store


def test_run_then_resume_is_one_history(sqlite_uri, tmp_path):
    tags = {"pipeline": "p1", "strategy": "random"}
    logger = tracking.RunLogger.start(sqlite_uri, "train_random", tags, PARAMS)
    for step in (1, 2, 3):
        assert logger.log_metrics({"loss": 1.0 / step, "val_acc20": 10.0 * step, "test_acc20": None}, step)
    logger.log_dict({"best_loop": 3}, "summary/best.json")
    assert logger.close()

    c = client(sqlite_uri)
    run = c.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train_random"
    assert {k: run.data.tags[k] for k in tags} == tags
    assert run.data.params["train.augment.rotations"] == "False"
    assert run.data.params["train.learning_rate"] == "0.001"
    assert run.data.params["model.arch"] == "convnet"
    assert steps(sqlite_uri, logger.run_id, "loss") == [1, 2, 3]
    assert steps(sqlite_uri, logger.run_id, "val_acc20") == [1, 2, 3]
    assert "test_acc20" not in run.data.metrics
    assert [a.path for a in c.list_artifacts(logger.run_id, "summary")] == ["summary/best.json"]
    # artifacts live beside the database, not in ./mlruns of whatever folder ran the stage
    db_folder = Path(sqlite_uri[len("sqlite:///") :]).parent
    assert run.info.artifact_uri.startswith(db_folder.as_uri())

    # a resumed stage continues the same run; a replayed step 3 is not logged twice
    resumed = tracking.RunLogger.start(sqlite_uri, "train_random", tags, PARAMS, run_id=logger.run_id)
    assert resumed.run_id == logger.run_id
    assert c.get_run(logger.run_id).info.status == "RUNNING"
    for step in (3, 4, 5):
        resumed.log_metrics({"loss": 1.0 / step, "val_acc20": 10.0 * step}, step)
    assert resumed.close()
    for key in ("loss", "val_acc20"):
        assert steps(sqlite_uri, logger.run_id, key) == [1, 2, 3, 4, 5]
    assert c.get_run(logger.run_id).info.status == "FINISHED"
    experiment_id = c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    assert len(c.search_runs([experiment_id], "tags.pipeline = 'p1'")) == 1


def test_resume_of_an_unknown_run_starts_a_new_one(sqlite_uri):
    with pytest.warns(tracking.TrackingWarning, match="starting a new run"):
        logger = tracking.RunLogger.start(sqlite_uri, "train_hard", {}, {}, run_id="0" * 32)
    assert logger.run_id != "0" * 32
    with pytest.raises(TrackingError, match="not a number"):
        logger.log_metrics({"loss": "high"}, 1)
    with pytest.raises(TrackingError, match="rejected"):  # an invalid key: dropped, not stuck in the queue
        logger.log_metrics({"loss*": 1.0}, 1)
    assert logger.pending == 0
    assert logger.log_metrics({"loss": 1.0}, 1)
    with pytest.raises(TrackingError, match="status"):
        logger.close("DONE")
    assert logger.close()


def _fail(exc_text="store down"):
    def boom(*args, **kwargs):
        raise ConnectionError(exc_text)

    return boom


def test_outage_queues_durably_then_sends_in_order(sqlite_uri, tmp_path, monkeypatch):
    pending = tmp_path / "pending" / "train_random.jsonl"
    logger = tracking.RunLogger.start(sqlite_uri, "outage", {"pipeline": "p2"}, {}, replay_file=pending, retry_interval=0)
    store = logger._outbox.client
    assert logger.log_metrics({"loss": 1.0}, 1)
    monkeypatch.setattr(store, "log_batch", _fail())
    monkeypatch.setattr(store, "log_artifact", _fail())
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"weights")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert not logger.log_metrics({"loss": 0.5}, 2)
        assert not logger.log_artifacts(artifact, "embedder")
        assert not logger.log_metrics({"loss": 0.25}, 3)
    assert len(tracking_warnings(record)) == 1  # reported once per outage
    assert "store down" in str(tracking_warnings(record)[0].message)
    assert logger.pending == 3
    lines = [json.loads(line) for line in pending.read_text().splitlines()]
    assert [(r["kind"], r.get("step")) for r in lines] == [("metrics", 2), ("artifact", None), ("metrics", 3)]

    monkeypatch.undo()  # the store is back: the next call sends the queue first, in order
    assert logger.log_metrics({"loss": 0.125}, 4)
    assert logger.pending == 0 and not pending.exists()
    history = client(sqlite_uri).get_metric_history(logger.run_id, "loss")
    assert [int(m.step) for m in history] == [1, 2, 3, 4]
    assert [m.timestamp for m in history] == sorted(m.timestamp for m in history)
    assert [a.path for a in client(sqlite_uri).list_artifacts(logger.run_id, "embedder")] == ["embedder/model.bin"]
    assert logger.close()


def test_a_rejected_record_in_the_queue_does_not_block_the_rest(sqlite_uri, tmp_path, monkeypatch):
    pending = tmp_path / "p.jsonl"
    logger = tracking.RunLogger.start(sqlite_uri, "rejected", {}, {}, replay_file=pending, retry_interval=0)
    monkeypatch.setattr(logger._outbox.client, "log_batch", _fail())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step, key in ((1, "loss"), (2, "bad*key"), (3, "loss")):
            logger.log_metrics({key: 1.0}, step)
    assert len(tracking_warnings(record)) == 1
    monkeypatch.undo()
    with pytest.raises(TrackingError, match="rejected.*dropped"):
        logger.flush()  # one batch of three is refused: sent one by one, the bad one dropped
    assert logger.flush() and not pending.exists()
    assert steps(sqlite_uri, logger.run_id, "loss") == [1, 3]
    assert logger.close()


def test_close_leaves_replay_file_and_replay_sends_it_once(sqlite_uri, tmp_path, monkeypatch):
    pending = tmp_path / "train_hard.jsonl"
    logger = tracking.RunLogger.start(sqlite_uri, "replayed", {}, {}, replay_file=pending, retry_interval=0)
    store = logger._outbox.client
    real_log_batch = store.log_batch

    def lost_answer(*args, **kwargs):  # the store got it, but the answer never came back
        real_log_batch(*args, **kwargs)
        raise ConnectionError("read timed out")

    monkeypatch.setattr(store, "log_batch", lost_answer)
    with pytest.warns(tracking.TrackingWarning, match="read timed out"):
        logger.log_metrics({"loss": 1.0}, 1)
    monkeypatch.setattr(store, "log_batch", _fail())
    monkeypatch.setattr(store, "set_terminated", _fail())
    logger.log_metrics({"loss": 0.5}, 2)
    logger.log_text("notes", "notes/readme.txt")  # staged copy beside the replay file
    with pytest.warns(tracking.TrackingWarning, match=str(pending.name)):
        assert not logger.close(retries=2, delay=0.01)
    kinds = [json.loads(line)["kind"] for line in pending.read_text().splitlines()]
    assert kinds == ["metrics", "metrics", "artifact", "terminate"]

    assert tracking.replay(pending, sqlite_uri) == 4
    assert not pending.exists()
    assert not pending.with_name("train_hard.files").exists()
    assert steps(sqlite_uri, logger.run_id, "loss") == [1, 2]  # step 1 not duplicated
    run = client(sqlite_uri).get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert [a.path for a in client(sqlite_uri).list_artifacts(logger.run_id, "notes")] == ["notes/readme.txt"]
    assert tracking.replay(pending, sqlite_uri) == 0


def test_log_evaluation(sqlite_uri, tmp_path):
    report = tmp_path / "evaluate.json"
    report.write_text('{"random": {"test_acc20": 80.0}}')
    run_id = tracking.log_evaluation(
        sqlite_uri,
        tags={"pipeline": "p3", "dvc_stage": "evaluate"},
        metrics={"random": {"test_acc20": 80.0}, "hard_test_acc20": 85.5},
        artifacts=[report],
    )
    run = client(sqlite_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "evaluate"
    assert run.data.metrics == {"random.test_acc20": 80.0, "hard_test_acc20": 85.5}
    assert run.data.tags["pipeline"] == "p3"
    assert [a.path for a in client(sqlite_uri).list_artifacts(run_id)] == ["evaluate.json"]


# ----------------------------------------------------------------------------- a real server


class Server:
    """`mlflow server` on 127.0.0.1 in its own process group (so stopping it stops its workers)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self, timeout: float = 60.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner processes
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{(self.folder / 'server.db').as_posix()}",
            "--serve-artifacts", "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not up after {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # the group we created with start_new_session
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # workers of the group may outlive the parent briefly
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path, free_port())
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_server_dies_mid_run_and_nothing_is_lost(server, tmp_path):
    tracking.check_reachable(server.uri)
    pending = tmp_path / "pending.jsonl"
    logger = tracking.RunLogger.start(
        server.uri, "train_random", {"pipeline": "p4"}, PARAMS, replay_file=pending, retry_interval=0
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / "embedding.keras").write_bytes(b"\0" * 1024)
    for step in (1, 2, 3):
        assert logger.log_metrics({"loss": 1.0 / step, "val_acc20": 10.0 * step}, step)
    assert logger.log_artifacts(model, "embedder")
    c = client(server.uri)
    assert [int(m.step) for m in c.get_metric_history(logger.run_id, "loss")] == [1, 2, 3]
    assert [a.path for a in c.list_artifacts(logger.run_id, "embedder")] == ["embedder/embedding.keras"]

    server.stop()
    late = tmp_path / "late.txt"
    late.write_text("logged while the server was down")
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for step in (4, 5):
            assert not logger.log_metrics({"loss": 1.0 / step, "val_acc20": 10.0 * step}, step)
        assert not logger.log_artifacts(late)
    assert time.monotonic() - t0 < 15  # a dead server costs seconds, not minutes
    assert len(tracking_warnings(record)) == 1
    assert logger.pending == 3
    assert [json.loads(line).get("step") for line in pending.read_text().splitlines()] == [4, 5, None]
    with pytest.raises(TrackingError, match=str(server.port)):
        tracking.check_reachable(server.uri, timeout=2)

    server.start()  # same port, same backend
    assert logger.close()
    assert not pending.exists()
    c = client(server.uri)
    for key in ("loss", "val_acc20"):
        assert [int(m.step) for m in c.get_metric_history(logger.run_id, key)] == [1, 2, 3, 4, 5]
    run = c.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pipeline"] == "p4"
    assert run.data.params["train.augment.affine"] == "0.0"
    assert "late.txt" in [a.path for a in c.list_artifacts(logger.run_id)]

"""tripletml.tracking: live logging that never stops a stage, `sync` from the DVC outputs, the served model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from servers import MlflowServer, free_port, served_model

from tripletml import tracking

pytest.importorskip("mlflow")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")  # mlflow's own SQLAlchemy use

PARAMS = {"train": {"learning_rate": 0.001, "augment": {"rotations": False, "affine": 0.0}}, "model": {"arch": "convnet"}}
LOOP_KEYS = ("loss", "val_acc20", "test_acc20_250", "loop_seconds")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # One database for the module: creating MLflow's tables costs seconds.
    return "sqlite:///" + (tmp_path_factory.mktemp("store") / "mlflow.db").as_posix()


@pytest.fixture(autouse=True)
def _env(monkeypatch, store):
    """The module's store by default, no DVC experiment around, the environment restored after
    (connect() sets the MLFLOW_HTTP_* defaults process-wide)."""
    saved = dict(os.environ)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for key in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "TRIPLETML_PARAMS"):
        monkeypatch.delenv(key, raising=False)
    yield
    os.environ.clear()
    os.environ.update(saved)


def client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def steps(uri, run_id, key):
    return [int(m.step) for m in client(uri).get_metric_history(run_id, key)]


def ours(stderr: str) -> list[str]:
    """Our own lines on stderr (MLflow logs there too)."""
    return [line for line in stderr.splitlines() if line.startswith(("warning:", "error:"))]




def loop_row(loop: int) -> dict:
    return {"loop": loop, "loss": 1.0 / loop, "val_acc20": 10.0 * loop, "test_acc20_250": 9.0 * loop,
            "loop_seconds": 0.5, "steps": 3}  # fmt: skip


def workspace(root: Path, name: str, strategy: str = "hard", loops: int = 3) -> Path:
    """The DVC outputs of train_<strategy>, evaluate and report, small and fake (the model file
    is not loaded when logged). ``name`` makes its params, hence its pipeline tag, its own."""
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(f"# {name}\ndata: {{prepared_dir: data/prepared}}\nevaluate: {{tasks: 40, n_way: 5}}\n")
    (root / "data" / "prepared").mkdir(parents=True)
    for i, split in enumerate(("train", "val", "test")):
        np.savez(root / "data" / "prepared" / f"{split}.npz", X=np.full((2, 20, 3, 3), i, np.float32))
    (root / "models" / strategy).mkdir(parents=True)
    (root / "models" / strategy / "embedding.keras").write_bytes(b"weights")
    (root / "models" / strategy / "meta.json").write_text(json.dumps({"embedding_dim": 16, "params": PARAMS}))
    (root / "metrics" / "history").mkdir(parents=True)
    rows = [loop_row(i) for i in range(1, loops + 1)]
    rows[0]["val_acc20"] = ""  # a value the stage did not have: no metric
    lines = [",".join(rows[0])] + [",".join(str(v) for v in r.values()) for r in rows]
    (root / "metrics" / "history" / f"{strategy}.csv").write_text("\n".join(lines) + "\n")
    (root / "metrics" / "train").mkdir()
    summary = {"strategy": strategy, "final_loss": 0.25, "best_loop": 2, "best_val_acc20": None, "loops": loops}
    (root / "metrics" / "train" / f"{strategy}.json").write_text(json.dumps(summary))
    (root / "metrics" / "evaluate").mkdir()
    (root / "metrics" / "evaluate" / f"{strategy}.json").write_text(json.dumps({"test_acc20": 80.0, "within_acc20": 40.0}))
    (root / "reports").mkdir()
    (root / "reports" / "comparison.csv").write_text(f"strategy,test_acc20\n{strategy},80.0\n")
    (root / "reports" / "comparison.md").write_text("| strategy |\n")
    (root / "reports" / "accuracy.png").write_bytes(b"\x89PNG")
    return root


@pytest.fixture
def ws(tmp_path, monkeypatch, request) -> Path:
    root = workspace(tmp_path / "ws", request.node.name)
    monkeypatch.chdir(root)
    return root


def only_run(uri: str, name: str):
    c = client(uri)
    runs = c.search_runs([c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                         f"attributes.run_name = '{name}' and tags.pipeline = '{tracking.pipeline_tag()}'")  # fmt: skip
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


# ----------------------------------------------------------------------------- where, who, which run


def test_default_uri_is_the_users_repo_also_from_a_dvc_temp_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "stages" / "deep").mkdir(parents=True)
    expected = f"sqlite:///{repo.resolve().as_posix()}/mlflow.db"
    assert expected.startswith("sqlite:////")  # absolute: four slashes
    assert tracking.default_tracking_uri(repo) == tracking.default_tracking_uri(repo / "stages" / "deep") == expected
    # `dvc exp run --temp/--queue` runs a stage in a full copy under .dvc/tmp/exps and sets DVC_ROOT to the user's repo
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmpxyz"
    (copy / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert tracking.default_tracking_uri() == f"sqlite:///{copy.resolve().as_posix()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert tracking.default_tracking_uri() == expected
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.default_tracking_uri() == "http://127.0.0.1:5999"


def test_pipeline_tag_follows_params_and_code_but_not_the_observers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stages").mkdir()
    (tmp_path / "tripletml").mkdir()
    for f in ("stages/train.py", "tripletml/training.py", "tripletml/tracking.py", "tripletml/serving.py"):
        (tmp_path / f).write_text("x = 1\n")
    (tmp_path / "params.yaml").write_text("train:\n  loops: 10\n")
    tag = tracking.pipeline_tag()
    assert re.fullmatch(r"[0-9a-f]{12}", tag)
    (tmp_path / "params.yaml").write_bytes(b"train:\r\n  loops: 10\r\n")
    assert tracking.pipeline_tag() == tag  # a checkout's line endings
    for observer in ("tripletml/tracking.py", "tripletml/serving.py"):
        (tmp_path / observer).write_text("x = 2\n")
        assert tracking.pipeline_tag() == tag, observer
    (tmp_path / "tripletml" / "training.py").write_text("x = 2\n")
    assert tracking.pipeline_tag() != tag
    changed = tracking.pipeline_tag()
    (tmp_path / "params.yaml").write_text("train:\n  loops: 11\n")
    assert tracking.pipeline_tag() not in (tag, changed)
    other = tmp_path / "other.yaml"
    other.write_text("train:\n  loops: 10\n")
    monkeypatch.setenv("TRIPLETML_PARAMS", str(other))
    assert tracking.pipeline_tag() not in (tag, changed)  # the params file the stages read


def test_import_is_light_and_conventions_agree():
    code = "import sys, tripletml.tracking; print('mlflow' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]
    from tripletml.data import RAW_SIZE

    assert tracking.RAW_SIZE == RAW_SIZE


def test_a_closed_port_is_unreachable_in_seconds(monkeypatch, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(Exception):
        tracking.connect(uri)
    assert time.monotonic() - t0 < 5
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.main(["sync", "evaluate"]) == 1
    err = ours(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"error: MLflow store {uri} unreachable"), err


# ----------------------------------------------------------------------------- live logging


def test_an_unreachable_store_costs_one_warning_and_nothing_else(ws, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    live = tracking.LiveRun("train_hard", PARAMS)
    for loop in (1, 2, 3):
        live.log_loop(loop_row(loop))
    live.finish()
    assert time.monotonic() - t0 < 10
    err = ours(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("warning: MLflow store http://127.0.0.1:"), err
    assert err[0].endswith("python -m tripletml.tracking sync train_hard")


def test_store_lost_mid_run_then_sync_logs_each_loop_once(ws, store, monkeypatch, capsys):
    live = tracking.LiveRun("train_hard", PARAMS)
    live.log_loop(loop_row(1))
    calls = []

    def lost(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("store down")

    monkeypatch.setattr(live.client, "log_batch", lost)
    for loop in (2, 3):
        live.log_loop(loop_row(loop))
    live.finish()
    assert len(calls) == 1, "live logging stops trying after the first failure"
    err = ours(capsys.readouterr().err)
    assert len(err) == 1 and "store down" in err[0] and err[0].endswith("sync train_hard")
    run = only_run(store, "train_hard")
    assert run.info.status == "RUNNING"
    assert steps(store, run.info.run_id, "loss") == [1]

    assert tracking.main(["sync", "train_hard"]) == 0
    assert tracking.main(["sync", "train_hard"]) == 0  # again: nothing new
    out = capsys.readouterr().out
    assert "model tripletml-hard version" in out and ": 0 metric values, 0 files, 0 datasets logged" in out
    run = only_run(store, "train_hard")
    assert run.info.run_id == live.run_id and run.info.status == "FINISHED"
    for key in LOOP_KEYS:
        assert steps(store, live.run_id, key) == [1, 2, 3], key
    assert run.data.metrics["final_loss"] == 0.25 and "best_val_acc20" not in run.data.metrics  # null: no metric
    assert run.data.params["train.augment.rotations"] == "False" and run.data.params["model.arch"] == "convnet"
    assert run.data.tags["strategy"] == "hard" and run.data.tags["dvc_stage"] == "train_hard"
    assert "mlflow.source.name" in run.data.tags


def test_a_resumed_stage_continues_its_run_a_rerun_gets_its_own(ws, store):
    killed = tracking.LiveRun("train_hard", PARAMS)
    for loop in (1, 2):
        killed.log_loop(loop_row(loop))
    resumed = tracking.LiveRun("train_hard", PARAMS)  # the kill came after loop 2 was logged, before its checkpoint
    assert resumed.run_id == killed.run_id
    for loop in (2, 3):
        resumed.log_loop(loop_row(loop))
    resumed.finish()
    for key in LOOP_KEYS:
        assert steps(store, killed.run_id, key) == [1, 2, 3], key
    rerun = tracking.LiveRun("train_hard", PARAMS)  # `dvc repro -f`: the finished run stays as it was
    assert rerun.run_id != killed.run_id


def test_dvc_names_the_stage_and_the_experiment(ws, store, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "train_extra@hard")
    monkeypatch.setenv("DVC_EXP_NAME", "wide-margin")
    tracking.LiveRun("train_extra@hard", PARAMS).finish()
    run = only_run(store, "train_hard")
    assert run.data.tags["dvc_stage"] == "train_extra@hard" and run.data.tags["dvc_experiment"] == "wide-margin"
    c = client(store)
    experiment_id = c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    assert [r.info.run_id for r in c.search_runs([experiment_id], "tags.dvc_experiment = 'wide-margin'")] == [run.info.run_id]


def test_the_experiment_says_model_training_and_link_opens_its_runs(ws, store, monkeypatch, capsys):
    """MLflow 3.17's UI opens an experiment on its GenAI pages unless told otherwise: a new store's
    experiment says model training, an older store's once a stage or `link` meets it, a kind set by
    hand stays; `link` prints the runs' page in the model-training view."""
    monkeypatch.setattr(tracking, "EXPERIMENT", "tripletml-kind")  # new in the module's store
    c, key = client(store), "mlflow.experimentKind"

    def kind():
        return c.get_experiment_by_name(tracking.EXPERIMENT).tags.get(key)

    tracking.LiveRun("train_hard", PARAMS)  # the experiment is created
    assert kind() == "custom_model_development"
    experiment_id = c.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    c.delete_experiment_tag(experiment_id, key)  # a store made before the tag
    assert tracking.main(["link"]) == 0
    assert kind() == "custom_model_development"
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning")  # fmt: skip
    c.set_experiment_tag(experiment_id, key, "genai_development")
    tracking.LiveRun("train_hard", PARAMS)
    assert kind() == "genai_development"
    link = tracking.ui_link("7", "https://mlflow.example/")  # a tracking server: its own address
    assert link == "https://mlflow.example/#/experiments/7/runs?workflowType=machine_learning"


# ----------------------------------------------------------------------------- sync


def test_sync_logs_every_stage_from_its_outputs_once(ws, store, capsys):
    assert tracking.main(["sync"]) == 0  # every stage whose outputs exist
    c = client(store)
    train, evaluate, report = (only_run(store, name) for name in ("train_hard", "evaluate", "report"))
    assert {r.info.status for r in (train, evaluate, report)} == {"FINISHED"}
    assert steps(store, train.info.run_id, "loss") == [1, 2, 3]
    assert steps(store, train.info.run_id, "val_acc20") == [2, 3]  # empty in the history: no value
    # the prepared splits as dataset inputs, their digest DVC's md5
    md5 = {s: hashlib.md5((ws / "data" / "prepared" / f"{s}.npz").read_bytes()).hexdigest() for s in ("train", "val", "test")}
    assert {(d.dataset.name, d.dataset.digest) for d in train.inputs.dataset_inputs} == {
        (f"omniglot-{s}", digest) for s, digest in md5.items()}  # fmt: skip
    assert [(d.dataset.name, d.dataset.digest) for d in evaluate.inputs.dataset_inputs] == [("omniglot-test", md5["test"])]
    # the embedder: an MLflow Model with its signature, registered
    model_id = train.outputs.model_outputs[0].model_id
    model = c.get_logged_model(model_id)
    assert model.name == "embedder" and model.source_run_id == train.info.run_id
    from mlflow.models import get_model_info

    signature = get_model_info(f"models:/{model_id}").signature
    assert signature.inputs.inputs[0].shape == (-1, 105, 105) and signature.inputs.inputs[0].type == np.dtype(np.uint8)
    assert signature.outputs.inputs[0].shape == (-1, 16) and signature.outputs.inputs[0].type == np.dtype(np.float32)
    versions = c.search_model_versions("name = 'tripletml-hard'")
    assert train.info.run_id in {v.run_id for v in versions}
    assert evaluate.data.metrics == {"hard_test_acc20": 80.0, "hard_within_acc20": 40.0}
    assert evaluate.data.params == {"evaluate.tasks": "40", "evaluate.n_way": "5"}
    assert [a.path for a in c.list_artifacts(evaluate.info.run_id)] == ["hard.json"]
    assert report.data.metrics == {"hard_test_acc20": 80.0}
    assert {a.path for a in c.list_artifacts(report.info.run_id)} == {"comparison.csv", "comparison.md", "accuracy.png"}

    assert tracking.main(["sync"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all(line.endswith(": 0 metric values, 0 files, 0 datasets logged") for line in out[-3:]), out[-3:]
    assert len(c.search_model_versions("name = 'tripletml-hard'")) == len(versions)
    for key in LOOP_KEYS:
        assert len(steps(store, train.info.run_id, key)) == len(set(steps(store, train.info.run_id, key))), key


def test_sync_errors_are_one_line_per_stage(ws, capsys):
    shutil.rmtree(ws / "reports")
    assert tracking.main(["sync", "report", "prepare", "evaluate"]) == 1
    err = ours(capsys.readouterr().err)
    assert err == [
        "error: report: reports/comparison.csv missing (run `dvc repro report` first)",
        "error: prepare: not a tracked stage (train_<strategy>, train_extra@<strategy>, evaluate, report)",
    ]


def test_served_images_paper_1_or_255_are_the_same_images():
    from tripletml.serving import to_raw

    raw = np.ones((2, 105, 105), np.uint8)
    raw[:, 40:60, 50] = 0
    assert np.array_equal(to_raw(raw), raw)
    assert np.array_equal(to_raw(raw * 255), raw)
    gray = (raw * 200).astype(np.uint8)  # a grayscale decode: at or above 128 is paper
    assert np.array_equal(to_raw(gray), raw)
    assert to_raw(raw[0]).shape == (1, 105, 105)


# ----------------------------------------------------------------------------- real servers and stages


@pytest.mark.slow
def test_a_real_server_lost_mid_run_costs_seconds_and_sync_fills_the_gap(ws, tmp_path, capsys):
    server = MlflowServer(tmp_path, free_port())
    server.start()
    try:
        os.environ["MLFLOW_TRACKING_URI"] = server.uri
        live = tracking.LiveRun("train_hard", PARAMS)
        live.log_loop(loop_row(1))
        server.stop()
        t0 = time.monotonic()
        for loop in (2, 3):
            live.log_loop(loop_row(loop))
        live.finish()
        assert time.monotonic() - t0 < 15, "a dead server costs seconds, not minutes"
        assert capsys.readouterr().err.count("warning:") == 1
        server.start()  # same port, same store
        assert tracking.main(["sync"]) == 0 and tracking.main(["sync"]) == 0
        run = only_run(server.uri, "train_hard")
        assert run.info.run_id == live.run_id and run.info.status == "FINISHED"
        assert steps(server.uri, live.run_id, "loss") == [1, 2, 3]
        assert client(server.uri).search_model_versions("name = 'tripletml-hard'")[0].run_id == live.run_id
    finally:
        server.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny repo copy whose train_hard ran twice: with a reachable store, then with none."""
    from repo_copy import make_repo, run_ok, stage_env

    work = make_repo(tmp_path_factory.mktemp("trained") / "repo")
    run_ok([sys.executable, "stages/prepare.py"], work)
    outputs = ["models/hard/meta.json", "models/hard/mined.json", "metrics/train/hard.json", "metrics/history/hard.csv"]
    runs = {}
    for label, uri in (("reachable", f"sqlite:///{work}/mlflow.db"), ("unreachable", f"http://127.0.0.1:{free_port()}")):
        res = run_ok([sys.executable, "stages/train.py", "--strategy", "hard"], work, env=stage_env(work, MLFLOW_TRACKING_URI=uri))
        runs[label] = {"stdout": res.stdout, "stderr": res.stderr, **{f: (work / f).read_bytes() for f in outputs}}
    return work, runs


def _without(text: bytes, *columns: str) -> list:
    """A JSON object or CSV table without its timing fields."""
    if text.startswith(b"{"):
        return sorted((k, v) for k, v in json.loads(text).items() if k not in columns)
    rows = [line.split(",") for line in text.decode().splitlines()]
    keep = [i for i, name in enumerate(rows[0]) if name not in columns]
    return [[row[i] for i in keep] for row in rows]


@pytest.mark.slow
def test_a_stage_writes_the_same_outputs_whether_mlflow_answers_or_not(trained):
    _, runs = trained
    a, b = runs["reachable"], runs["unreachable"]
    assert "warning: MLflow store http://127.0.0.1:" in b["stderr"] and "warning:" not in a["stderr"]
    assert "model tripletml-hard version 1 logged" in a["stdout"]
    digest = [[line for line in r["stdout"].splitlines() if "weights sha256" in line] for r in (a, b)]
    assert digest[0] == digest[1] and len(digest[0]) == 1, digest
    for f in ("models/hard/meta.json", "models/hard/mined.json"):
        assert a[f] == b[f], f
    assert _without(a["metrics/train/hard.json"], "train_seconds", "seconds_per_step") == _without(
        b["metrics/train/hard.json"], "train_seconds", "seconds_per_step")  # fmt: skip
    assert _without(a["metrics/history/hard.csv"], "loop_seconds") == _without(b["metrics/history/hard.csv"], "loop_seconds")


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_embedders_own_embeddings(trained, tmp_path):
    from synthetic import glyph

    from tripletml.embedder import load_embedder

    work, _ = trained
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db"}
    raw = np.stack([glyph(seed, 0) for seed in range(4)])  # 1 = paper, 0 = ink
    expected = load_embedder(work / "models" / "hard").embed(raw)
    with served_model("models:/tripletml-hard/1", env, tmp_path, tmp_path / "serve.log") as predict:
        for images in (raw, raw * 255):  # both decodes of a PNG
            np.testing.assert_allclose(predict(images), expected, rtol=1e-5, atol=1e-6)

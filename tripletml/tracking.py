"""MLflow tracking, an observer: no stage output depends on it, and a lost store stops nothing.

:class:`LiveRun` logs a stage's params and per-loop metrics as they come; a store that cannot
be reached costs one ``warning:`` line, logging stops and the stage goes on.
``python -m tripletml.tracking sync [stage...]`` (:func:`sync_stage`) (re)logs stages from
their DVC outputs, the one source of truth: params, per-loop metrics (step = loop), summary
metrics, the embedder as an MLflow Model registered as ``tripletml-<strategy>``, the prepared
splits as dataset inputs, the report; what a run holds is skipped, so it is safe to repeat.
A stage's run is found by its name (``train_<strategy>``, ``evaluate``, ``report``) and tag
``pipeline`` (:func:`pipeline_tag`); tags ``dvc_experiment`` (the name under ``dvc exp run``),
``dvc_stage`` and MLflow's ``mlflow.source.*`` (script, git commit) say where it came from.
The experiment is tagged as model training (:data:`EXPERIMENT_TAGS`); ``python -m tripletml.tracking
link`` (:func:`ui_link`) prints the MLflow UI's address that opens on its runs, not on GenAI pages.
It imports no other tripletml module, so no stage lists it in its deps (tests/test_dvc_deps.py).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EXPERIMENT = "tripletml"
# MLflow 3.17's UI shows an experiment in the view of its sidebar switch "GenAI / Model training": the
# link's ``workflowType`` (ui_link() gives it), else the browser's last choice, else GenAI (overview,
# traces). The tag declares the kind as MLflow's own "create experiment" writes it under "Model training";
# 3.17's view does not read it.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"
RAW_SIZE = 105  # the Omniglot PNGs' side: tripletml.data.RAW_SIZE (a test checks they agree)
# MLflow's HTTP client retries a dead server for minutes; here it costs seconds (setdefault: a user's setting wins).
ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # fmt: skip
OBSERVERS = ("tracking.py", "serving.py")  # library files no stage output depends on
NOT_METRICS = ("loop", "steps")  # history columns that are no metric: the step itself, a constant
SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "test"}


def repo_root(cwd: str | os.PathLike | None = None) -> Path:
    """The user's repository: ``DVC_ROOT``, which DVC sets to it also when a stage runs in a
    throw-away copy (``dvc exp run --temp/--queue``), else the nearest folder above ``cwd``
    (default: the current one) holding ``.dvc`` or ``.git``."""
    if cwd is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(cwd if cwd is not None else os.getcwd()).resolve()
    found = [f for marker in (".dvc", ".git") for f in (here, *here.parents) if (f / marker).exists()]
    return found[0] if found else here


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db`` (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or f"sqlite:///{(repo_root(cwd) / 'mlflow.db').as_posix()}"


def pipeline_tag(params_file: str | os.PathLike | None = None) -> str:
    """12 hex digits shared by the stages run from the same params and code: a hash of the params
    file (default ``TRIPLETML_PARAMS``, else params.yaml) and of the current folder's
    ``stages/*.py`` and ``tripletml/*.py`` but the observers, a commit in between or not."""
    files = [Path(params_file or os.environ.get("TRIPLETML_PARAMS", "params.yaml")), *sorted(Path("stages").glob("*.py"))]
    files += sorted(f for f in Path("tripletml").glob("*.py") if f.name not in OBSERVERS)
    digest = hashlib.sha256()
    for f in files:
        text = f.read_bytes().replace(b"\r\n", b"\n") if f.is_file() else b""  # line endings of a checkout
        digest.update(f.as_posix().encode() + b"\0" + text + b"\0")
    return digest.hexdigest()[:12]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow keys are flat); pydantic models are dumped."""
    flat: dict[str, Any] = {}
    for key, value in (tree.model_dump() if hasattr(tree, "model_dump") else tree).items():
        value = value.model_dump() if hasattr(value, "model_dump") else value
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
    return flat


def _number(value: Any) -> float | None:
    """A finite float, or None for what is no metric value (empty, None, NaN, text, a bool)."""
    try:
        return number if math.isfinite(number := float(value)) and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def connect(uri: str) -> tuple[Any, str]:
    """An ``MlflowClient`` for ``uri`` and experiment ``tripletml``'s id; its first request raises if the store is away."""
    for key, value in ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow

    mlflow.set_tracking_uri(uri)  # for the fluent API too, which logs models
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    if (experiment := client.get_experiment_by_name(EXPERIMENT)) is not None:
        for key, value in EXPERIMENT_TAGS.items():  # a store made before the tag; a kind set by hand stays
            if not experiment.tags.get(key):
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return client, experiment.experiment_id
    location = None  # MLflow's default, ./mlruns of the folder that ran first, may be a DVC temp copy
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :].split("?")[0]).absolute().parent / "mlartifacts" / EXPERIMENT).as_uri()
    return client, client.create_experiment(EXPERIMENT, artifact_location=location, tags=EXPERIMENT_TAGS)


def ui_link(experiment_id: str, uri: str) -> str:
    """The MLflow UI's page of the experiment's runs, in its model-training view: on the tracking
    server of an ``http(s)`` store, else on ``mlflow ui``'s default address."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_VIEW}"


def _open_run(client: Any, experiment_id: str, stage: str, key: str, unfinished_only: bool) -> str:
    """The latest run of ``stage`` in pipeline ``key``, else a new one. Live logging takes an
    unfinished run only (a stage resumed after a kill); a rerun gets a run of its own."""
    from mlflow.tracking.context.registry import resolve_tags  # MLflow's source tags: script, git commit, user

    name = stage.replace("train_extra@", "train_")
    query = f"tags.pipeline = '{key}' and attributes.run_name = '{name}'"
    query += " and attributes.status != 'FINISHED'" if unfinished_only else ""
    if found := client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1):
        return found[0].info.run_id
    tags = {"pipeline": key, "dvc_stage": os.environ.get("DVC_STAGE", stage), "dvc_experiment": os.environ.get("DVC_EXP_NAME"),
            "strategy": name[len("train_") :] if name.startswith("train_") else None}  # fmt: skip
    return client.create_run(experiment_id, run_name=name, tags=resolve_tags({k: v for k, v in tags.items() if v})).info.run_id


def _held(client: Any, run_id: str) -> set[tuple[str, int]]:
    return {(k, int(m.step)) for k in client.get_run(run_id).data.metrics for m in client.get_metric_history(run_id, k)}


def _log(client: Any, run_id: str, params: Mapping[str, Any], metrics: Iterable[tuple[str, Any, int]], have: set) -> int:
    """Log the params the run lacks and the metrics whose (key, step) is not in ``have`` (updated); how many went."""
    from mlflow.entities import Metric, Param

    known = client.get_run(run_id).data.params if params else {}
    new_params = [Param(k, str(v)) for k, v in params.items() if k not in known]
    new = {(k, int(step)): v for k, value, step in metrics if (v := _number(value)) is not None and (k, int(step)) not in have}
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for (k, step), v in new.items()]
    for i in range(0, len(new_params), 100):  # log_batch's limits: 100 params, 1000 metrics a call
        client.log_batch(run_id, params=new_params[i : i + 100])
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])
    have.update(new)
    return len(items)


def _loop_metrics(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, Any, int]]:
    return [(k, v, int(float(row["loop"]))) for row in rows for k, v in row.items() if k not in NOT_METRICS]


class LiveRun:
    """A stage's run while it runs: continues the stage's unfinished run (resumed after a kill),
    skipping held steps. Never raises: after a failed call it stops trying; ``sync`` catches up."""

    def __init__(self, stage: str, params: Any = None, uri: str | None = None) -> None:
        self.stage, self.uri, self.key = stage, uri or default_tracking_uri(), ""
        self.client, self.experiment_id, self.run_id, self.have = None, "", "", set()
        try:
            self.key, (client, self.experiment_id) = pipeline_tag(), connect(self.uri)
            self.run_id = _open_run(client, self.experiment_id, stage, self.key, unfinished_only=True)
            self.have = _held(client, self.run_id)
            _log(client, self.run_id, flatten(params or {}), [], self.have)  # values logged as str()
            self.client = client
        except Exception as exc:  # noqa: BLE001 - whatever the store does, the stage goes on
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        self.client, why = None, " ".join(str(exc).split())[:200] or type(exc).__name__
        print(f"warning: MLflow store {self.uri}: {why}; logging stops, the stage goes on; "
              f"afterwards: python -m tripletml.tracking sync {self.stage}", file=sys.stderr, flush=True)  # fmt: skip

    def _try(self, call: Any, *args: Any) -> Any:
        try:
            return None if self.client is None else call(self.client, *args)
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)

    def log_loop(self, record: Mapping[str, Any]) -> None:
        """One loop's record: ``loop`` is the step, the other numbers its metrics."""
        self._try(_log, self.run_id, {}, _loop_metrics([record]), self.have)

    def finish(self) -> None:
        """Once the stage has written its DVC outputs: log them into this run, end it."""
        if done := self._try(sync_stage, self.experiment_id, self.stage, self.key, self.run_id):
            print(done, flush=True)


def _read(path: str | os.PathLike) -> Any:
    text = Path(path).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines())) if str(path).endswith(".csv") else json.loads(text)


def _outputs(stage: str) -> dict[str, Any]:
    """What ``stage``'s DVC outputs give its run: params, metrics (key, value, step), files,
    dataset inputs and, for a training stage, the model folder."""
    import yaml

    params = yaml.safe_load(Path(os.environ.get("TRIPLETML_PARAMS", "params.yaml")).read_text(encoding="utf-8"))
    prepared = Path(params["data"]["prepared_dir"])
    out: dict[str, Any] = {"params": {}, "metrics": [], "files": [], "inputs": [], "model": None}
    if stage.startswith("train_"):
        s = stage.split("@")[-1] if "@" in stage else stage[len("train_") :]
        summary = _read(f"metrics/train/{s}.json").items()
        out.update(params=flatten(_read(f"models/{s}/meta.json")["params"]), model=Path("models") / s,
                   metrics=_loop_metrics(_read(f"metrics/history/{s}.csv")) + [(k, v, 0) for k, v in summary],
                   inputs=[prepared / f"{split}.npz" for split in SPLIT_CONTEXT])  # fmt: skip
    elif stage == "evaluate":
        files = sorted(Path("metrics/evaluate").glob("*.json"))  # one per strategy and the ensemble
        out.update(params=flatten({"evaluate": params["evaluate"]}), files=files, inputs=[prepared / "test.npz"],
                   metrics=[(f"{f.stem}_{k}", v, 0) for f in files for k, v in _read(f).items()])  # fmt: skip
    elif stage == "report":
        out.update(metrics=[(f"{r['strategy']}_test_acc20", r["test_acc20"], 0) for r in _read("reports/comparison.csv")],
                   files=sorted(Path("reports").glob("comparison.*")) + sorted(Path("reports").glob("*.png")))  # fmt: skip
    else:
        raise ValueError("not a tracked stage (train_<strategy>, train_extra@<strategy>, evaluate, report)")
    return out


def _log_inputs(client: Any, run: Any, paths: list[Path]) -> int:
    """The prepared splits as dataset inputs: name ``omniglot-<split>``, digest = DVC's md5."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    held = {(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs}
    new = []
    for path in paths:
        name, digest = f"omniglot-{path.stem}", hashlib.md5(path.read_bytes()).hexdigest()
        if (name, digest) not in held:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": two names for one local source
                warnings.simplefilter("ignore", UserWarning)
                dataset = MetaDataset(resolve_dataset_source(str(path.absolute())), name=name, digest=digest)
            new.append(DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", SPLIT_CONTEXT[path.stem])]))
    client.log_inputs(run.info.run_id, datasets=new)
    return len(new)


def _log_model(run_id: str, folder: Path) -> str:
    """The embedder in ``folder`` as an MLflow Model (its code: tripletml/serving.py) with its
    signature, registered as ``tripletml-<strategy>``; returns the version."""
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    width = int(_read(folder / "meta.json")["embedding_dim"])
    signature = ModelSignature(Schema([TensorSpec(np.dtype(np.uint8), (-1, RAW_SIZE, RAW_SIZE))]),
                               Schema([TensorSpec(np.dtype(np.float32), (-1, width))]))  # fmt: skip
    # Requirements given, not inferred: inference would load TensorFlow in a subprocess.
    requirements = [f"{p}=={importlib.metadata.version(p)}" for p in ("tensorflow", "keras", "numpy")]
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():  # in the store connect() chose
        warnings.filterwarnings("ignore", ".*input example was not provided", UserWarning)  # the signature says it all
        info = mlflow.pyfunc.log_model(
            name="embedder", python_model=str(Path(__file__).with_name("serving.py")), artifacts={"embedder": str(folder)},
            signature=signature, pip_requirements=requirements, registered_model_name=f"tripletml-{folder.name}",
        )  # fmt: skip
    return str(info.registered_model_version)


def sync_stage(client: Any, experiment_id: str, stage: str, key: str | None = None, run_id: str | None = None) -> str:
    """Log what ``stage``'s DVC outputs hold and its run lacks, end the run; a one-line account."""
    out = _outputs(stage)
    run_id = run_id or _open_run(client, experiment_id, stage, key or pipeline_tag(), unfinished_only=False)
    metrics = _log(client, run_id, out["params"], out["metrics"], _held(client, run_id))
    held = {a.path for a in client.list_artifacts(run_id)}
    files = [f for f in out["files"] if f.name not in held]
    for f in files:
        client.log_artifact(run_id, str(f))
    run = client.get_run(run_id)
    datasets, model = _log_inputs(client, run, out["inputs"]), ""
    if out["model"] is not None and not (run.outputs and run.outputs.model_outputs):
        model = f", model tripletml-{out['model'].name} version {_log_model(run_id, out['model'])}"
    client.set_terminated(run_id, "FINISHED")
    return f"{stage}: MLflow run {run_id}: {metrics} metric values, {len(files)} files, {datasets} datasets{model} logged"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripletml.tracking", description="MLflow tracking of the DVC pipeline.")
    commands = ap.add_subparsers(dest="command", required=True)
    commands.add_parser("link", help="print the MLflow UI's address of the runs of experiment tripletml", description=(
        "Print the address at which the MLflow UI (`mlflow ui`, or the server of an http(s) MLFLOW_TRACKING_URI) shows "
        "experiment tripletml's runs in its model-training view rather than its GenAI overview."))  # fmt: skip
    sp = commands.add_parser(
        "sync", help="(re)log stages from their DVC outputs into MLflow; safe to repeat", description=(
        "Log each stage's params, per-loop metrics (step = loop), summary metrics, model (registered as tripletml-<strategy>), "
        "dataset inputs and report from its DVC outputs in the current folder into its MLflow run (found by run name and tag "
        "pipeline, else created), skipping what it holds. The store: MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db."))
    sp.add_argument("stages", nargs="*", metavar="stage",
                    help="train_<strategy>, train_extra@<strategy>, evaluate or report (default: each whose outputs exist)")
    args = ap.parse_args(argv)
    uri = default_tracking_uri()
    try:
        client, experiment_id = connect(uri)
    except Exception as exc:  # noqa: BLE001 - whatever the check raises, the store is unreachable
        print(f"error: MLflow store {uri} unreachable: {' '.join(str(exc).split())[:200]}", file=sys.stderr)
        return 1
    if args.command == "link":
        print(ui_link(experiment_id, uri))
        return 0
    stages = args.stages or [f"train_{f.stem}" for f in sorted(Path("metrics/history").glob("*.csv"))] + [
        s for s, f in (("evaluate", "metrics/evaluate"), ("report", "reports/comparison.csv")) if Path(f).exists()]
    status = 0
    for stage in stages:
        try:
            print(sync_stage(client, experiment_id, stage), flush=True)
        except Exception as exc:  # noqa: BLE001 - one line per stage, then the next one
            missing = isinstance(exc, FileNotFoundError) and f"{exc.filename} missing (run `dvc repro {stage}` first)"
            print(f"error: {stage}: {missing or ' '.join(str(exc).split())[:200]}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

"""MLflow tracking: the one module of the library that imports mlflow.

Where runs go
    :func:`default_tracking_uri` -- ``MLFLOW_TRACKING_URI`` when set, else a SQLite
    file ``mlflow.db`` at the repository root (also when DVC runs a stage in a
    temporary copy, see there). Browse with ``mlflow ui --backend-store-uri
    sqlite:///mlflow.db`` and filter ``tags.pipeline = '<id>'`` to see the stages of
    one pipeline run (random and hard side by side).

When the store goes away
    Training must never die because the tracking server restarts. :class:`RunLogger`
    keeps what it cannot send in memory and in an append-only JSONL *replay file*
    (fsync'ed), retries in order, and at :meth:`RunLogger.close` leaves whatever is
    still unsent in that file; :func:`replay` sends it later. Each (metric, step) is
    sent at most once, also across a resumed stage.

    MLflow's HTTP client retries a dead server with exponential backoff for minutes
    (7 retries, 120 s timeout). :func:`http_fast_fail_defaults` (called by
    ``RunLogger.start``, :func:`replay` and :func:`log_evaluation`) therefore sets,
    with ``os.environ.setdefault`` so an explicit user setting wins and for the
    whole process, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``,
    ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10``:
    a dead server costs seconds; our own queue does the retrying.

mlflow is imported lazily, so importing this module (e.g. for :func:`pipeline_tag`)
stays cheap; TensorFlow is never imported here (models are logged as files).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tripletml.errors import TrackingError

EXPERIMENT = "tripletml"

#: Environment defaults that make MLflow's HTTP client fail in seconds, not minutes.
HTTP_FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
_MAX_BATCH_METRICS = 1000  # MLflow's log_batch limits
_MAX_BATCH_PARAMS = 100
_MAX_PARAM_VALUE = 6000


class TrackingWarning(UserWarning):
    """The tracking store could not be reached; records wait in a queue / replay file."""


# ----------------------------------------------------------------------------- where


def repo_root(cwd: str | os.PathLike | None = None) -> Path:
    """The repository root for ``cwd``: see :func:`default_tracking_uri`."""
    here = Path(cwd if cwd is not None else os.getcwd()).resolve()
    parts = here.parts
    # `dvc exp run --temp/--queue` runs stages in <repo>/.dvc/tmp/exps/<tmp>/: the user's
    # store belongs to <repo>, not to the throw-away copy (which has its own .dvc/).
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for marker in (".dvc", ".git"):
        for folder in (here, *here.parents):
            if (folder / marker).exists():
                return folder
    return here


def default_tracking_uri(cwd: str | os.PathLike | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db`` (absolute).

    The repo root is the nearest folder above ``cwd`` (default: the current folder)
    holding ``.dvc``, else ``.git``, else ``cwd`` itself. When ``cwd`` lies inside
    ``<repo>/.dvc/tmp/exps/...`` -- the temporary copy in which ``dvc exp run --temp``
    and ``--queue`` run stages -- the root is ``<repo>``, the folder holding that
    ``.dvc``, so queued experiments land in the user's store rather than in a copy
    that DVC deletes afterwards. Setting ``MLFLOW_TRACKING_URI`` (e.g. to an
    ``http://`` server) is the explicit way to choose the store.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    return "sqlite:///" + (repo_root(cwd) / "mlflow.db").as_posix()


def _redact(uri: str) -> str:
    """``uri`` without a password, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory)."""
    rest = uri.split(":///", 1)[1] if ":///" in uri else ""
    rest = rest.split("?", 1)[0]
    if rest in ("", ":memory:"):
        return None
    return Path(urllib.parse.unquote(rest))


def _local_store_path(uri: str) -> Path | None:
    """The folder or file of a local (sqlite or file) store; None for other stores."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme.startswith("sqlite"):
        return _sqlite_path(uri)
    if scheme == "file":
        return Path(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    if scheme == "" or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(uri)
    return None


# ----------------------------------------------------------------------------- reachability


def http_fast_fail_defaults() -> None:
    """Make MLflow's HTTP client give up in seconds (see the module docstring)."""
    for key, value in HTTP_FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)


def _http_status(url: str, timeout: float) -> int:
    """The HTTP status ``url`` answers with; raises OSError when nothing answers."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:  # an answer, just not a 2xx one
        return exc.code


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` (naming ``uri``) unless the store can take a run.

    Meant to run before training, so a dead store fails the stage in seconds rather
    than after hours. ``http(s)``: the server must answer ``/health`` (or the
    experiments API, for servers behind a prefix or with auth) within ``timeout``
    seconds; plain urllib, no retries. ``sqlite``/``file``: the folder must exist and
    be writable. Other stores (databases, Databricks) are not checked.
    """
    shown = _redact(uri)
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        base = uri.rstrip("/")
        try:
            if _http_status(base + "/health", timeout) == 200:
                return
            status = _http_status(base + "/api/2.0/mlflow/experiments/search?max_results=1", timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timeout, not HTTP
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {shown} does not answer ({_one_line(reason)}); "
                "start it or set MLFLOW_TRACKING_URI"
            ) from None
        if status == 200 or status in (401, 403):  # 401/403: the MLflow client brings credentials
            return
        raise TrackingError(f"{shown} answers HTTP {status}: not an MLflow tracking server?")
    path = _local_store_path(uri)
    if path is None:
        return
    path = path.expanduser().absolute()
    if scheme.startswith("sqlite"):
        folder = path.parent
        if not folder.is_dir():
            raise TrackingError(f"MLflow store {shown}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingError(f"MLflow store {shown}: folder {folder} is not writable")
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise TrackingError(f"MLflow store {shown}: {path} is not writable")
        return
    folder = path if path.exists() else next(p for p in path.parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise TrackingError(f"MLflow store {shown}: {folder} is not a writable folder")


# ----------------------------------------------------------------------------- identity


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The HEAD commit of the git repository around ``cwd``; None when there is none."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,  # no repo / no commit yet: a return code, not an error
        )
    except (OSError, subprocess.SubprocessError):  # no git, no folder, hung git
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def pipeline_tag(params_text: str, commit: str | None) -> str:
    """A 12-hex id shared by every stage of one pipeline run: hash(commit, params file text).

    Logged as tag ``pipeline``; ``mlflow ui`` filter: ``tags.pipeline = '<id>'``.
    """
    digest = hashlib.sha256()
    digest.update((commit or "no-git").encode())
    digest.update(b"\0")
    digest.update(params_text.replace("\r\n", "\n").encode("utf-8"))  # checkout line endings
    return digest.hexdigest()[:12]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow keys are flat)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ----------------------------------------------------------------------------- the queue


def _now_ms() -> int:
    return int(time.time() * 1000)


def _is_permanent(exc: BaseException) -> bool:
    """True when retrying cannot help: the store answered and rejected the request."""
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return False  # connection errors, sqlite locks, OSError: transient
    status = exc.get_http_status_code()
    return 400 <= status < 500 and status not in (408, 429)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; best effort
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Outbox:
    """Records (metrics, artifacts, run ends) in send order, mirrored in a replay file.

    Invariant after every public call: the replay file holds exactly ``pending``
    (absent when empty), so a crash at any point loses nothing that was not sent.
    """

    def __init__(self, client: Any, uri: str, replay_file: Path | None, retry_interval: float) -> None:
        self.client = client
        self.uri = uri
        self.file = replay_file
        self.retry_interval = retry_interval
        self.pending: list[dict] = []
        self.sent: dict[str, set[tuple[str, int]]] = {}  # run_id -> (key, step) already in the store
        self.stale: set[str] = set()  # runs to re-read: a failed call may have reached the store
        self._in_file = 0  # leading records of `pending` that the file holds
        self._drained_since_write = False
        self._next_try = 0.0
        self._warned = False
        self._file_warned = False
        self._isolate = 0  # after a rejected batch: records left to send one at a time
        if self.file is not None and self.file.exists():
            self.pending = self._read_file(self.file)
            self._in_file = len(self.pending)
            self.stale.update(r["run_id"] for r in self.pending)

    # -- the replay file

    @staticmethod
    def _read_file(path: Path) -> list[dict]:
        records, bad = [], 0
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise TrackingError(f"{path}: cannot read the MLflow replay file: {exc.strerror or exc}") from None
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "kind" not in record or "run_id" not in record:
                    raise ValueError
            except ValueError:  # a line cut short by a crash mid-append
                bad += 1
                continue
            records.append(record)
        if bad:
            warnings.warn(f"{path}: skipped {bad} unreadable line(s)", TrackingWarning, stacklevel=3)
        return records

    def _persist(self) -> None:
        """Make the replay file hold exactly ``pending``, durably; never raises OSError."""
        if self.file is None:
            return
        try:
            self._write_file()
        except OSError as exc:  # disk full, folder gone: training goes on, records stay in memory
            self._drained_since_write = True  # rewrite the whole file next time
            if not self._file_warned:
                self._file_warned = True
                warnings.warn(
                    f"cannot write MLflow replay file {self.file} ({exc.strerror or exc}); "
                    "unsent records are kept in memory only",
                    TrackingWarning,
                    stacklevel=4,
                )
        else:
            self._file_warned = False

    def _write_file(self) -> None:
        assert self.file is not None
        if not self.pending:
            self.file.unlink(missing_ok=True)
            self._in_file, self._drained_since_write = 0, False
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        if not self._drained_since_write and self._in_file <= len(self.pending) and self.file.exists():
            new = self.pending[self._in_file :]
            if new:  # the common case during an outage: append + flush + fsync
                with open(self.file, "a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in new)
                    fh.flush()
                    os.fsync(fh.fileno())
        else:  # some records left the queue: rewrite atomically
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=f".{self.file.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in self.pending)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            _fsync_folder(self.file.parent)
        self._in_file, self._drained_since_write = len(self.pending), False

    def staging_dir(self) -> Path:
        """Where generated artifacts (log_text/log_dict) wait while the store is down."""
        if self.file is not None:
            base = self.file.with_name(self.file.stem + ".files")
        else:
            base = Path(tempfile.gettempdir()) / "tripletml-mlflow-pending"
        folder = base / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- sending

    def seed(self, run_id: str) -> None:
        """Read which (key, step) the run already has, so nothing is sent twice."""
        run = self.client.get_run(run_id)
        seen = set()
        for key in run.data.metrics:
            seen.update((key, int(m.step)) for m in self.client.get_metric_history(run_id, key))
        self.sent[run_id] = seen
        self.stale.discard(run_id)

    def _next_batch(self) -> list[dict]:
        """The next send: consecutive metric records of one run, else one record."""
        first = self.pending[0]
        if first["kind"] != "metrics" or self._isolate > 0:
            return [first]
        batch, n = [], 0
        for record in self.pending:
            if record["kind"] != "metrics" or record["run_id"] != first["run_id"]:
                break
            if batch and n + len(record["metrics"]) > _MAX_BATCH_METRICS:
                break
            batch.append(record)
            n += len(record["metrics"])
        return batch

    def _send(self, batch: list[dict]) -> None:
        from mlflow.entities import Metric

        record = batch[0]
        run_id = record["run_id"]
        if record["kind"] == "metrics":
            if run_id not in self.sent or run_id in self.stale:
                self.seed(run_id)
            sent = self.sent[run_id]
            metrics, keys = [], set()
            for r in batch:
                step = int(r["step"])
                for key, value in r["metrics"].items():
                    if (key, step) in sent or (key, step) in keys:
                        continue
                    keys.add((key, step))
                    metrics.append(Metric(key, float(value), int(r["timestamp"]), step))
            if metrics:
                # synchronous: an async logger would hide the failure we must catch
                self.client.log_batch(run_id, metrics=metrics, synchronous=True)
            sent.update(keys)
        elif record["kind"] == "artifact":
            path = Path(record["path"])
            if not path.exists():
                warnings.warn(
                    f"MLflow run {run_id}: {path} vanished before it could be logged; skipped",
                    TrackingWarning,
                    stacklevel=4,
                )
                return
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), record.get("artifact_path"))
            else:
                self.client.log_artifact(run_id, str(path), record.get("artifact_path"))
            if record.get("staged"):  # our own copy of a log_text/log_dict artifact
                shutil.rmtree(path.parent, ignore_errors=True)
                try:
                    path.parent.parent.rmdir()  # the staging base, once empty
                except OSError:
                    pass
        elif record["kind"] == "terminate":
            self.client.set_terminated(run_id, record["status"], int(record["end_time"]))
        else:
            raise TrackingError(f"unknown MLflow record kind {record['kind']!r} in {self.file}")

    def drain(self, force: bool = False) -> bool:
        """Send pending records in order; stop at the first failure. True when empty.

        Unless ``force``, a failure pauses further attempts for ``retry_interval``
        seconds, so an unreachable (not refusing, but silent) server does not cost a
        timeout at every step.
        """
        if not self.pending:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        while self.pending:
            batch = self._next_batch()
            try:
                self._send(batch)
            except TrackingError:
                raise
            except Exception as exc:
                if _is_permanent(exc):
                    if len(batch) > 1:  # send one by one to find the record the store refuses
                        self._isolate = len(batch)
                        continue
                    # It can never be sent (bad key, deleted run): drop it so it does not
                    # block everything behind it, and say so.
                    self._isolate = 0
                    del self.pending[0]
                    self._in_file = max(0, self._in_file - 1)
                    self._drained_since_write = True
                    self._persist()
                    raise TrackingError(
                        f"MLflow store {_redact(self.uri)} rejected a {batch[0]['kind']} record for run "
                        f"{batch[0]['run_id']} (dropped): {_one_line(exc)}"
                    ) from exc
                self.stale.add(batch[0]["run_id"])
                self._next_try = time.monotonic() + self.retry_interval
                if not self._warned:
                    self._warned = True
                    where = f" and in {self.file}" if self.file is not None else " (in memory only)"
                    warnings.warn(
                        f"MLflow store {_redact(self.uri)} unreachable ({_one_line(exc)}); "
                        f"records are queued{where} and retried; training goes on",
                        TrackingWarning,
                        stacklevel=4,
                    )
                return False
            del self.pending[: len(batch)]
            self._isolate = max(0, self._isolate - len(batch))
            self._in_file = max(0, self._in_file - len(batch))
            self._drained_since_write = True
        self._warned = False  # a later outage warns again
        return True

    def submit(self, record: dict) -> bool:
        """Queue ``record`` behind anything pending and try to send; True when all went."""
        self.pending.append(record)
        try:
            return self.drain()
        finally:
            self._persist()

    def flush(self, retries: int = 3, delay: float = 1.0) -> bool:
        """Try to send everything, up to ``retries`` attempts ``delay`` seconds apart."""
        try:
            for attempt in range(max(1, retries)):
                if attempt:
                    time.sleep(delay)
                if self.drain(force=True):
                    return True
            return False
        finally:
            self._persist()


# ----------------------------------------------------------------------------- runs


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, uri: str, name: str) -> str:
    """The experiment's id, creating it if needed (two stages may race to create it)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    local = _local_store_path(uri)
    if local is not None:
        # MLflow's default artifact root for sqlite is ./mlruns of the *current* folder:
        # wrong for stages run in a DVC temp copy. Keep artifacts next to the database.
        base = local.expanduser().absolute()
        base = base.parent if urllib.parse.urlsplit(uri).scheme.lower().startswith("sqlite") else base
        location = (base / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created meanwhile by another stage
        if experiment is None:
            raise
        return experiment.experiment_id


def _params_batches(client: Any, run_id: str, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), _MAX_BATCH_PARAMS):
        client.log_batch(run_id, params=items[i : i + _MAX_BATCH_PARAMS], synchronous=True)
    tag_items = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(tag_items), _MAX_BATCH_PARAMS):
        client.log_batch(run_id, tags=tag_items[i : i + _MAX_BATCH_PARAMS], synchronous=True)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 3] + "..."


class RunLogger:
    """One MLflow run for one execution of a training stage, robust to the store going away.

    Create with :meth:`start`. Logging never raises because the store is unreachable:
    records are queued (memory + replay file) and sent, in order, by later calls,
    :meth:`flush` or :meth:`close`. It raises :class:`TrackingError` only for
    mistakes (a non-numeric metric, a missing file, a record the store rejects).
    Usable as a context manager: the run ends FINISHED, or FAILED/KILLED on an error.
    """

    def __init__(self, outbox: _Outbox, run_id: str) -> None:
        self._outbox = outbox
        self._run_id = run_id
        self._closed = False

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def pending(self) -> int:
        """Records not yet in the store."""
        return len(self._outbox.pending)

    @property
    def replay_file(self) -> Path | None:
        return self._outbox.file

    @classmethod
    def start(
        cls,
        uri: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        replay_file: str | os.PathLike | None = None,
        *,
        experiment: str = EXPERIMENT,
        retry_interval: float = 30.0,
    ) -> RunLogger:
        """Start a run in ``experiment`` (created if needed), or continue ``run_id``.

        ``params`` may be nested (flattened to dotted keys). With ``run_id`` (a resumed
        stage) the same run continues, so its history stays one series; its logged
        (key, step) pairs are read first and never sent again; params it already has
        keep their first value (a warning lists any that changed). A ``run_id`` the
        store no longer has starts a new run, with a warning.

        ``replay_file`` (e.g. ``.mlflow_pending/train_random.jsonl``): where unsent
        records are kept durably; records left there by an earlier process are sent
        first. Without it, unsent records live only in memory. After a failed send,
        new records wait ``retry_interval`` seconds before the next attempt.

        Raises :class:`TrackingError` when the store cannot be reached now.
        """
        http_fast_fail_defaults()
        check_reachable(uri)
        client = _client(uri)
        flat = {k: _param_value(v) for k, v in flatten(params or {}).items()}
        tag_values = {str(k): str(v) for k, v in (tags or {}).items() if v is not None}
        shown = _redact(uri)
        outbox = _Outbox(client, uri, Path(replay_file) if replay_file is not None else None, retry_interval)
        created = None
        try:
            experiment_id = _experiment_id(client, uri, experiment)
            run = _existing_run(client, run_id) if run_id else None
            if run_id and run is None:
                warnings.warn(
                    f"MLflow run {run_id} is not in {shown} (deleted?); starting a new run",
                    TrackingWarning,
                    stacklevel=2,
                )
            if run is not None:
                client.update_run(run.info.run_id, status="RUNNING")
                outbox.seed(run.info.run_id)
                old = run.data.params
                changed = sorted(k for k, v in flat.items() if k in old and old[k] != v)
                if changed:
                    warnings.warn(
                        f"MLflow run {run.info.run_id}: params changed since it started, first values kept: "
                        + ", ".join(changed),
                        TrackingWarning,
                        stacklevel=2,
                    )
                _params_batches(client, run.info.run_id, {k: v for k, v in flat.items() if k not in old}, tag_values)
            else:
                run = created = client.create_run(experiment_id, run_name=run_name, tags=tag_values)
                outbox.sent[run.info.run_id] = set()
                _params_batches(client, run.info.run_id, flat, {})
        except Exception as exc:
            if created is not None:  # e.g. a param the store refuses: do not leave a run RUNNING forever
                try:
                    client.set_terminated(created.info.run_id, "FAILED")
                except Exception:  # noqa: BLE001, S110 - best effort; the TrackingError below says why
                    pass
            if isinstance(exc, TrackingError):
                raise
            raise TrackingError(f"cannot start an MLflow run in {shown}: {_one_line(exc)}") from exc
        logger = cls(outbox, run.info.run_id)
        if outbox.pending:  # left by an earlier process; they go before anything new
            outbox.flush(retries=1)
        return logger

    def _check_open(self) -> None:
        if self._closed:
            raise TrackingError(f"MLflow run {self._run_id} is closed; nothing more can be logged")

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> bool:
        """Log ``metrics`` (nested allowed; None values skipped) at ``step``.

        Returns True when the store has everything so far, False when records wait.
        """
        self._check_open()
        values: dict[str, float] = {}
        for key, value in flatten(metrics).items():
            if value is None:
                continue
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise TrackingError(f"metric {key}: {value!r} is not a number") from None
        if not values:
            return self._outbox.drain()
        record = {
            "kind": "metrics",
            "run_id": self._run_id,
            "step": int(step),
            "timestamp": _now_ms(),
            "metrics": {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()},
        }
        return self._outbox.submit(record)

    def log_artifacts(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> bool:
        """Log a file or a folder's contents under ``artifact_path``.

        If the store is down the *path* is queued: it is read when finally sent, so it
        must still exist then.
        """
        self._check_open()
        path = Path(local_path).absolute()
        if not path.exists():
            raise TrackingError(f"{local_path}: no such file or folder to log to MLflow")
        record = {"kind": "artifact", "run_id": self._run_id, "path": str(path), "artifact_path": artifact_path}
        return self._outbox.submit(record)

    def log_text(self, text: str, artifact_file: str) -> bool:
        """Log ``text`` as the artifact ``artifact_file`` (e.g. ``"notes/summary.md"``)."""
        self._check_open()
        name = Path(artifact_file)
        if name.is_absolute() or ".." in name.parts or not name.name:
            raise TrackingError(f"artifact file {artifact_file!r}: must be a relative path")
        try:
            folder = self._outbox.staging_dir()
            (folder / name.name).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise TrackingError(f"artifact {artifact_file}: cannot stage a copy: {exc.strerror or exc}") from None
        parent = name.parent.as_posix()
        record = {
            "kind": "artifact",
            "run_id": self._run_id,
            "path": str((folder / name.name).absolute()),
            "artifact_path": None if parent in ("", ".") else parent,
            "staged": True,  # our copy: removed once sent
        }
        return self._outbox.submit(record)

    def log_dict(self, obj: Any, artifact_file: str) -> bool:
        """Log ``obj`` as JSON artifact ``artifact_file``."""
        try:
            text = json.dumps(obj, indent=2, default=str)
        except (TypeError, ValueError) as exc:
            raise TrackingError(f"artifact {artifact_file}: cannot write as JSON: {exc}") from None
        return self.log_text(text + "\n", artifact_file)

    def flush(self, retries: int = 3, delay: float = 1.0) -> bool:
        """Send every queued record now (``retries`` attempts); True when none is left."""
        return self._outbox.flush(retries, delay)

    def close(self, status: str = "FINISHED", retries: int = 3, delay: float = 1.0) -> bool:
        """Flush, then end the run with ``status``; never raises for an unreachable store.

        What still cannot be sent (the run's end included) stays in the replay file,
        with a warning naming it; send it later with :func:`replay`. Returns True when
        the store has everything.
        """
        if self._closed:
            return not self._outbox.pending
        if status not in _RUN_STATUSES:
            raise TrackingError(f"run status {status!r}: expected one of {', '.join(_RUN_STATUSES)}")
        self._closed = True
        record = {"kind": "terminate", "run_id": self._run_id, "status": status, "end_time": _now_ms()}
        self._outbox.pending.append(record)
        try:
            done = self._outbox.flush(retries, delay)
        except TrackingError as exc:  # the store rejected something: keep it, do not fail the stage
            warnings.warn(str(exc), TrackingWarning, stacklevel=2)
            return False
        if not done:
            n = len(self._outbox.pending)
            if self._outbox.file is not None:
                where = f"kept in {self._outbox.file}; send with tripletml.tracking.replay()"
            else:
                where = "lost (no replay file)"
            warnings.warn(
                f"MLflow store {_redact(self._outbox.uri)} unreachable: {n} record(s) of run {self._run_id} {where}",
                TrackingWarning,
                stacklevel=2,
            )
        return done

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


def _existing_run(client: Any, run_id: str) -> Any | None:
    """The run, or None when the store does not have it (or it was deleted)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if exc.get_http_status_code() == 404 or "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            return None
        raise
    return None if run.info.lifecycle_stage == "deleted" else run


# ----------------------------------------------------------------------------- later / one-shot


def replay(path: str | os.PathLike, uri: str | None = None, retries: int = 3, delay: float = 1.0) -> int:
    """Send the records of a replay file to ``uri`` (default: :func:`default_tracking_uri`).

    Metric steps the run already has are skipped. The file is removed when everything
    went; otherwise it is kept (rewritten with what is left) and TrackingError is
    raised. Returns the number of records the file held (0: no file).
    """
    path = Path(path)
    if not path.exists():
        return 0
    uri = uri or default_tracking_uri()
    http_fast_fail_defaults()
    check_reachable(uri)
    outbox = _Outbox(_client(uri), uri, path, retry_interval=0.0)
    total = len(outbox.pending)
    if not outbox.flush(retries, delay):
        raise TrackingError(
            f"{path}: {len(outbox.pending)} of {total} record(s) could not be sent to {_redact(uri)}; file kept"
        )
    return total


def log_evaluation(
    uri: str,
    tags: Mapping[str, Any],
    metrics: Mapping[str, Any],
    artifacts: Iterable[str | os.PathLike] = (),
    run_name: str = "evaluate",
    params: Mapping[str, Any] | None = None,
    replay_file: str | os.PathLike | None = None,
    *,
    experiment: str = EXPERIMENT,
) -> str:
    """One finished run for an evaluate/report stage: metrics (nested allowed) at step 0
    and the given files/folders as artifacts. Tag it with the same ``pipeline`` as the
    training runs. Returns the run id."""
    logger = RunLogger.start(uri, run_name, tags, params, replay_file=replay_file, experiment=experiment)
    with logger:
        logger.log_metrics(metrics, step=0)
        for artifact in artifacts:
            logger.log_artifacts(artifact)
    return logger.run_id


__all__ = [
    "EXPERIMENT",
    "HTTP_FAST_FAIL_ENV",
    "RunLogger",
    "TrackingWarning",
    "check_reachable",
    "default_tracking_uri",
    "flatten",
    "git_commit",
    "http_fast_fail_defaults",
    "log_evaluation",
    "pipeline_tag",
    "replay",
    "repo_root",
]


def main(argv: list[str] | None = None) -> int:
    """``python -m tripletml.tracking replay FILE...``: send what an outage left behind."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tripletml.tracking", description=main.__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="send replay files (e.g. .mlflow_pending/*.jsonl) to the tracking store")
    rp.add_argument("files", nargs="+", type=Path)
    rp.add_argument("--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI, else the repo's mlflow.db)")
    args = ap.parse_args(argv)
    try:
        for path in args.files:
            print(f"{path}: {replay(path, args.uri)} record(s) sent")
    except TrackingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

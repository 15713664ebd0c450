"""A finished run kept as files: ``runs/<profile>/``, so anyone can read, compare or re-score it.

    python profiles/keep.py <profile> [--from WORKSPACE] [--wall-seconds S]   # (profiles/run.py does it)
    python -m tripletml.runs score runs/<profile> [--lake data/raw/all_runs.zip]

:func:`save_run` copies what a pipeline run wrote in a workspace (its params, the metrics and
histories, the report, the chosen models) into ``runs/<profile>/`` together with
``run.json``: the profile's overrides, the commit, the machine and the TensorFlow version
that made it, and the wall time when known. A run folder mirrors the workspace's layout::

    runs/<profile>/run.json, params.yaml
    runs/<profile>/metrics/{train,evaluate}/<strategy>.json, metrics/history/<strategy>.csv, metrics/summary.json
    runs/<profile>/reports/comparison.{csv,md}, tests.csv, *.png
    runs/<profile>/models/<strategy>/{embedding.keras, meta.json, mined.json}

so ``tripletml.load_embedder("runs/<profile>/models/hard")`` loads a model and ``dvc metrics
show runs/*/metrics/summary.json`` puts the profiles side by side. A run whose stages have not
all finished (hours on a CPU) is saved with what it has; ``run.json`` lists the strategies
present; the caller names the outputs that are not this run's (``exclude``: profiles/keep.py asks
``dvc status``). ``score`` re-scores every saved model on Lake et al.'s 20 runs in about a minute.
Nothing here imports TensorFlow except ``score``, nor DVC.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tripletml.atomic import write_json
from tripletml.errors import DataError
from tripletml.machine import machine_facts

__all__ = ["RUNS", "RunRecord", "save_run", "load_run", "load_runs", "score"]

RUNS = Path("runs")
RUN_FILE = "run.json"
# What a run folder copies from a workspace (patterns relative to both).
COPIED = (
    "params.yaml",
    "metrics/train/*.json",
    "metrics/evaluate/*.json",
    "metrics/history/*.csv",
    "metrics/summary.json",
    "reports/comparison.csv",
    "reports/comparison.md",
    "reports/tests.csv",
    "reports/*.png",
    "models/*/embedding.keras",
    "models/*/meta.json",
    "models/*/mined.json",
)


def _git(workspace: Path, *args: str) -> str | None:
    out = subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def _strategies(folder: Path) -> list[str]:
    """The strategies a folder holds a finished training of, in params order where known."""
    found = sorted(p.stem for p in (folder / "metrics" / "train").glob("*.json"))
    params = folder / "params.yaml"
    if params.is_file():
        raw = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
        order = ["random", "hard", *raw.get("extra_strategies", [])]
        found.sort(key=lambda s: order.index(s) if s in order else len(order))
    return found


def save_run(
    profile: str,
    workspace: str | os.PathLike = ".",
    dest: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    wall_seconds: float | None = None,
    command: str | None = None,
    exclude: Iterable[str] = (),
    note: str | None = None,
) -> Path:
    """Copy a workspace's finished outputs into ``dest`` (default ``<workspace>/runs/<profile>``)
    and write ``run.json``; what the folder held before is replaced as a whole. ``exclude``:
    outputs (files or folders, relative to the workspace) left by another run, not copied."""
    src = Path(workspace).resolve()
    dest = Path(dest) if dest is not None else src / RUNS / profile
    stale = [Path(e) for e in exclude]
    files = sorted({p for pattern in COPIED for p in src.glob(pattern) if p.is_file()
                    and not any(p.relative_to(src).is_relative_to(e) for e in stale)})
    if not any(p.parent == src / "metrics" / "train" for p in files):
        raise DataError(f"{src}: no finished training (metrics/train/*.json); nothing to save as run {profile!r}")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in files:
        target = tmp / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    strategies = _strategies(tmp)
    train = {s: json.loads((tmp / "metrics" / "train" / f"{s}.json").read_text()) for s in strategies}
    record = {
        "profile": profile,
        "overrides": overrides or {},
        "commit": _git(src, "rev-parse", "HEAD"),
        "code_changed": bool(_git(src, "status", "--porcelain", "--", "tripletml", "stages")),
        "command": command,
        "strategies": strategies,
        "evaluated": (tmp / "metrics" / "evaluate").is_dir(),
        "train_seconds": round(sum(t.get("train_seconds") or 0.0 for t in train.values()), 2),
        "wall_seconds": None if wall_seconds is None else round(float(wall_seconds), 1),
        "saved": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine_facts(),
        "note": note,  # what the figures cannot say themselves, e.g. cores shared with other work
    }
    write_json(tmp / RUN_FILE, record)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)  # the new folder appears whole; the old one goes only after
    shutil.rmtree(old, ignore_errors=True)
    return dest


# ----------------------------------------------------------------------------- reading


@dataclass
class RunRecord:
    """A saved run read back: ``run.json`` and its metrics, as the docs and comparisons use them."""

    folder: Path
    info: dict
    evaluate: dict[str, dict] = field(default_factory=dict)
    train: dict[str, dict] = field(default_factory=dict)
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.folder.name

    def table(self) -> pd.DataFrame | None:
        """``reports/comparison.csv`` (the report's table), or None if the run was not reported."""
        path = self.folder / "reports" / "comparison.csv"
        return pd.read_csv(path) if path.is_file() else None

    def tests(self) -> pd.DataFrame | None:
        """``reports/tests.csv`` (the paired tests), or None."""
        path = self.folder / "reports" / "tests.csv"
        return pd.read_csv(path) if path.is_file() else None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from exc


def load_run(folder: str | os.PathLike) -> RunRecord:
    """Read ``runs/<profile>/``: its ``run.json``, metrics and histories."""
    folder = Path(folder)
    if not (folder / RUN_FILE).is_file():
        raise DataError(f"{folder / RUN_FILE}: not found (save a run with `python -m tripletml.runs save <profile>`)")
    rec = RunRecord(folder, _json(folder / RUN_FILE))
    for s in rec.info.get("strategies", []):
        rec.train[s] = _json(folder / "metrics" / "train" / f"{s}.json")
        history = folder / "metrics" / "history" / f"{s}.csv"
        if history.is_file():
            rec.histories[s] = pd.read_csv(history)
    # The report's order: the strategies as trained, then the ensemble (and anything else).
    order = [*rec.info.get("strategies", []), "ensemble"]
    found = sorted((folder / "metrics" / "evaluate").glob("*.json"), key=lambda p: (order + [p.stem]).index(p.stem))
    for path in found:
        rec.evaluate[path.stem] = _json(path)
    if (folder / "metrics" / "summary.json").is_file():
        rec.summary = _json(folder / "metrics" / "summary.json")
    return rec


def load_runs(root: str | os.PathLike = RUNS) -> dict[str, RunRecord]:
    """Every saved run under ``root``, by profile name."""
    return {p.name: load_run(p) for p in sorted(Path(root).iterdir()) if (p / RUN_FILE).is_file()}


# ----------------------------------------------------------------------------- scoring


def score(folder: str | os.PathLike, lake_zip: str | os.PathLike) -> dict[str, float]:
    """Each saved model's accuracy % on Lake et al.'s 20 runs (nearest training image, as evaluate)."""
    from tripletml import lake_runs, tta
    from tripletml.embedder import load_embedder

    rec = load_run(folder)
    runs = lake_runs.read_lake_runs(lake_zip)
    shift = int((yaml.safe_load((rec.folder / "params.yaml").read_text()) or {}).get("evaluate", {}).get("tta_shift", 0))
    out = {}
    for s in rec.info["strategies"]:
        embedder = load_embedder(rec.folder / "models" / s)
        train, test = lake_runs.to_model_images(runs, embedder.image_size)
        embed = tta.shift_averaged(embedder.embed_prepared, shift, renormalize=embedder.unit_norm)
        out[s] = lake_runs.lake_figures(lake_runs.score_lake_runs(embed, train, test, runs.answer))["accuracy"]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tripletml.runs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    rescore = sub.add_parser("score", help="score a saved run's models on Lake et al.'s 20 runs")
    rescore.add_argument("folder")
    rescore.add_argument("--lake", default="data/raw/all_runs.zip")
    args = ap.parse_args(argv)
    try:
        for s, acc in score(args.folder, args.lake).items():
            print(f"{s}: {acc:.2f} % on Lake's 20 runs")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

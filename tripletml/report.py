"""The comparison report: tables, paired tests and Markdown from the pipeline's outputs
(its figures: :mod:`tripletml.figures`).

Everything here reads files other stages wrote (metrics JSON/CSV, the evaluation's
predictions, the hard strategy's mined triplets) and writes plain files atomically, so
the report can be rebuilt on its own without a model, a GPU or TensorFlow.

Accuracies are percents throughout (as in ``metrics/evaluate/<strategy>.json``); the statistics
come from :mod:`tripletml.oneshot` so the report and the evaluation agree exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tripletml.data import DataError
from tripletml.oneshot import mcnemar_exact, percent_correct

__all__ = [
    "TABLE_COLUMNS",
    "TEST_COLUMNS",
    "load_evaluate",
    "load_train_metrics",
    "load_histories",
    "load_predictions",
    "load_mined",
    "comparison_table",
    "factor_pairs",
    "paired_tests",
    "load_seed_runs",
    "seed_runs_of",
    "seed_spread",
    "spread_words",
    "finding",
    "verdict",
    "summary_metrics",
    "load_embeddings",
    "separation",
]

PathLike = str | os.PathLike

EVALUATE_COLUMNS = (
    "test_acc20",
    "test_acc20_ci95_low",
    "test_acc20_ci95_high",
    "test_acc20_250",
    "within_acc20",
    "within_acc20_ci95_low",
    "within_acc20_ci95_high",
    "lake20_acc",
)
TRAIN_COLUMNS = ("assignment_best_acc20", "best_loop", "best_val_acc20", "train_seconds", "seconds_per_step")
TABLE_COLUMNS = ("strategy", "sampler", "miner", *EVALUATE_COLUMNS, *TRAIN_COLUMNS)
TEST_COLUMNS = (
    "factor",
    "held",
    "strategy",
    "baseline",
    "task_set",
    "tasks",
    "acc",
    "baseline_acc",
    "b",
    "c",
    "p_value",
    "verdict",
)
# The course assignment's own results (GPU, 105 px, its schroff network): the best of ten
# per-loop accuracies on 250 fresh 20-way test tasks.
ASSIGNMENT = {"random": 64.4, "hard": 79.6}
# Published 20-way within-alphabet accuracy on Lake et al.'s 20 official runs.
LAKE_PUBLISHED = {
    "Humans (Lake et al. 2015)": 95.5,
    "Bayesian Program Learning (Lake et al. 2015)": 96.7,
    "Siamese network (Koch et al. 2015; a different split)": 92.0,
    "Deep ConvNet (Lake et al. 2015)": 86.5,
}
HISTORY_COLUMNS = ("loop", "loss", "val_acc20")

# (predictions key of the targets, prefix of each strategy's predictions) per task set.
TASK_SETS = {"across": ("target", "pred_"), "within": ("within_target", "within_pred_")}

ALPHA = 0.05


# ----------------------------------------------------------------------------- loading


def _missing(path: Path, stage: str) -> DataError:
    return DataError(f"{path}: file not found (run `dvc repro {stage}` first)")


def _read_json(path: PathLike, stage: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise _missing(path, stage)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def load_evaluate(folder: PathLike, strategies: Sequence[str]) -> dict[str, dict]:
    """``<folder>/<strategy>.json`` (``metrics/evaluate``) as {strategy: metrics}, for each of
    ``strategies`` and the ensemble, in that order."""
    out = {}
    for s in [*strategies, "ensemble"]:
        data = _read_json(Path(folder) / f"{s}.json", "evaluate")
        if not isinstance(data, dict):
            raise DataError(f"{Path(folder) / f'{s}.json'}: expected an object of {{metric: value}}")
        out[s] = data
    return out


def load_train_metrics(folder: PathLike, strategies: Sequence[str]) -> dict[str, dict]:
    """``<folder>/<strategy>.json`` for each strategy (``metrics/train``)."""
    out = {}
    for s in strategies:
        data = _read_json(Path(folder) / f"{s}.json", f"train@{s}")
        if not isinstance(data, dict):
            raise DataError(f"{Path(folder) / f'{s}.json'}: expected a JSON object")
        out[s] = data
    return out


def load_histories(folder: PathLike, strategies: Sequence[str]) -> dict[str, pd.DataFrame]:
    """``<folder>/<strategy>.csv`` per-loop histories (``metrics/history``)."""
    out = {}
    for s in strategies:
        path = Path(folder) / f"{s}.csv"
        if not path.is_file():
            raise _missing(path, f"train@{s}")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable CSV ({exc})") from exc
        absent = [c for c in HISTORY_COLUMNS if c not in df.columns]
        if absent:
            raise DataError(f"{path}: missing column(s) {', '.join(absent)}")
        out[s] = df
    return out


def load_predictions(path: PathLike) -> dict[str, np.ndarray]:
    """``data/evaluate/predictions.npz`` (or ``embeddings.npz``) read fully into a dict (so the file is closed)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "evaluate")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from exc


load_embeddings = load_predictions  # data/evaluate/embeddings.npz: {strategy: (characters, drawings, D)}


def separation(
    embeddings: Mapping[str, np.ndarray], c: Mapping[str, tuple[int, int]], n_pairs: int = 20000, seed: int = 0
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]]]:
    """Each strategy's pair distances (:func:`tripletml.separation.pair_distances`, the same pairs
    for every strategy) and their overlaps, same-character pairs against any two characters
    (``across``) and two of one alphabet (``within``), in percent."""
    from tripletml.separation import overlap, pair_distances

    distances = {s: pair_distances(E, c, n_pairs, np.random.default_rng(seed)) for s, E in embeddings.items()}
    overlaps = {s: {k: round(overlap(d["same"], d[k]), 2) for k in ("across", "within")} for s, d in distances.items()}
    return distances, overlaps


def load_mined(path: PathLike) -> dict:
    """``models/hard/mined.json``: {"first"/"last": {"loop", "classes", "drawings"}}."""
    data = _read_json(path, "train@hard")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------- tables


def _num(value: Any) -> float:
    """A metric as float; absent or null -> NaN so one missing number doesn't sink the table."""
    return float("nan") if value is None else float(value)


def comparison_table(
    evaluate: Mapping[str, Mapping], train: Mapping[str, Mapping], design: Mapping[str, tuple[str, str]]
) -> pd.DataFrame:
    """One row per strategy (in ``evaluate``'s order), columns :data:`TABLE_COLUMNS`.

    ``design`` gives each trained strategy's (sampler, miner), as its params say. Accuracies
    are percents as the metrics files hold them; a row without training metrics (the
    ensemble) gets NaN there rather than being dropped.
    """
    rows = []
    for strategy, ev in evaluate.items():
        tr = train.get(strategy, {})
        sampler, miner = design.get(strategy, ("", ""))
        row: dict[str, Any] = {"strategy": strategy, "sampler": sampler, "miner": miner}
        row.update({k: _num(ev.get(k)) for k in EVALUATE_COLUMNS})
        row.update({k: _num(tr.get(k)) for k in TRAIN_COLUMNS})
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    # A loop number is an integer; nullable Int64 keeps it one even with a gap.
    table["best_loop"] = table["best_loop"].astype("Int64")
    for col in ("strategy", "sampler", "miner"):
        table[col] = table[col].astype(object)
    return table


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


def verdict(strategy: str, baseline: str, b: int, c: int, p_value: float, alpha: float = ALPHA) -> str:
    """Plain-words outcome of a paired test, e.g. ``"hard beats random (p = 0.0012)"``."""
    if p_value < alpha and b != c:
        winner, loser = (strategy, baseline) if b > c else (baseline, strategy)
        return f"{winner} beats {loser} (p = {_fmt_p(p_value)})"
    return f"no significant difference at the {alpha:.0%} level (p = {_fmt_p(p_value)})"


def factor_pairs(table: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """The paired comparisons of the sampler x miner design: (factor, held, strategy, baseline).

    The miner (hard against random) within each sampler, then the sampler (classes
    against triplets) within each of those two miners; the first strategy of each cell.
    """
    cell = {}
    for r in table.itertuples():
        if r.sampler and r.miner:
            cell.setdefault((r.sampler, r.miner), r.strategy)
    pairs = []
    for sampler in ("triplets", "classes"):
        if (sampler, "hard") in cell and (sampler, "random") in cell:
            pairs.append(("miner", f"sampler {sampler}", cell[sampler, "hard"], cell[sampler, "random"]))
    for miner in ("random", "hard"):
        if ("classes", miner) in cell and ("triplets", miner) in cell:
            pairs.append(("sampler", f"miner {miner}", cell["classes", miner], cell["triplets", miner]))
    return pairs


def paired_tests(
    predictions: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str, str, str]],
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Exact McNemar test of each (factor, held, strategy, baseline) pair on the same tasks.

    One row per (pair, task set) with columns :data:`TEST_COLUMNS`; ``acc`` and
    ``baseline_acc`` are percents, ``b`` counts tasks only the strategy got right and
    ``c`` tasks only the baseline got right. A task set whose arrays are absent from
    ``predictions`` (e.g. no within-alphabet tasks) is skipped.
    """
    rows = []
    for factor, held, strategy, baseline in pairs:
        for task_set, (target_key, prefix) in TASK_SETS.items():
            if target_key not in predictions:
                continue
            target = np.asarray(predictions[target_key])
            keys = (f"{prefix}{strategy}", f"{prefix}{baseline}")
            for key in keys:
                if key not in predictions:
                    raise KeyError(f"predictions have no {key!r} (have: {', '.join(sorted(predictions))})")
            ours = np.asarray(predictions[keys[0]]) == target
            base = np.asarray(predictions[keys[1]]) == target
            test = mcnemar_exact(ours, base)
            rows.append(
                {
                    "factor": factor,
                    "held": held,
                    "strategy": strategy,
                    "baseline": baseline,
                    "task_set": task_set,
                    "tasks": int(target.size),
                    "acc": percent_correct(ours),
                    "baseline_acc": percent_correct(base),
                    "b": test["b"],
                    "c": test["c"],
                    "p_value": test["p_value"],
                    "verdict": verdict(strategy, baseline, test["b"], test["c"], test["p_value"], alpha),
                }
            )
    return pd.DataFrame(rows, columns=list(TEST_COLUMNS))


def summary_metrics(table: pd.DataFrame, tests: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """The headline figures, small enough for one screen of ``dvc exp show`` / ``dvc metrics diff``:
    each strategy's accuracy across alphabets, within one alphabet and on Lake's runs, and the
    assignment's question, hard minus random in triplet batches, on each task set."""

    def value(x: Any) -> float | None:
        return None if pd.isna(x) else round(float(x), 3)

    out: dict[str, dict[str, float | None]] = {
        r.strategy: {"across": value(r.test_acc20), "within": value(r.within_acc20), "lake": value(r.lake20_acc)}
        for r in table.itertuples()
    }
    pair = tests[(tests["factor"] == "miner") & (tests["held"] == "sampler triplets")]
    if len(pair):
        out["hard_minus_random"] = {r.task_set: round(r.acc - r.baseline_acc, 3) for r in pair.itertuples()}
    return out


def load_seed_runs(path: PathLike) -> pd.DataFrame:
    """``docs/seed_runs.csv``: one row per (run, strategy) of full default runs: the same params at
    other training seeds, and at one seed on other machines (an optional ``machine`` column)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "report")
    try:
        runs = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from exc
    absent = [c for c in ("seed", "strategy", "test_acc20") if c not in runs.columns]
    if absent:
        raise DataError(f"{path}: missing column(s) {', '.join(absent)}")
    if "machine" not in runs.columns:
        runs["machine"] = ""
    runs["machine"] = runs["machine"].fillna("").astype(str)
    return runs


def _run_keys(runs: pd.DataFrame) -> list[str]:
    return ["seed", "machine"] if "machine" in runs.columns else ["seed"]


def seed_runs_of(runs: pd.DataFrame, table: pd.DataFrame, seed: int, tolerance: float = 0.05) -> pd.DataFrame | None:
    """``runs`` if they were made with this run's configuration, else None.

    The seed runs are one configuration run at several seeds (and machines); they include this
    very run (its ``seed``) only if that configuration is this one, so every strategy one run at
    this seed shares with the table must give the same ``test_acc20``. A profile or an edited
    ``params.yaml`` fails this and is not given another configuration's spread."""
    ours = table.set_index("strategy")["test_acc20"]
    for _, own in runs[runs["seed"] == seed].groupby(_run_keys(runs)[1:] or (lambda _: 0)):
        own = own.set_index("strategy")["test_acc20"]
        shared = own.index.intersection(ours.index)
        if len(shared) and ((own[shared] - ours[shared]).abs() <= tolerance).all():
            return runs
    return None


def seed_spread(runs: pd.DataFrame, strategy: str, baseline: str, column: str = "test_acc20") -> tuple[float, float, int] | None:
    """(min, max, runs) of ``strategy - baseline`` in ``column`` over the runs (seed, machine) that had both."""
    wide = runs.pivot_table(index=_run_keys(runs), columns="strategy", values=column, aggfunc="first")
    if strategy not in wide or baseline not in wide:
        return None
    diff = (wide[strategy] - wide[baseline]).dropna()
    return (float(diff.min()), float(diff.max()), int(len(diff))) if len(diff) else None


def spread_words(runs: pd.DataFrame, strategy: str, baseline: str) -> str:
    """The runs that had both strategies, in words: ``"3 seeds"``, or ``"4 runs: 3 seeds, 2 machines"``."""
    both = runs[runs["strategy"].isin([strategy, baseline])].groupby(_run_keys(runs))["strategy"].nunique()
    keys = both[both == 2].index.to_frame(index=False)
    seeds = keys["seed"].nunique()
    machines = keys["machine"].replace("", pd.NA).nunique() if "machine" in keys else 0
    if machines < 2 and len(keys) == seeds:
        return f"{seeds} seed{'s' * (seeds != 1)}"
    return f"{len(keys)} runs: {seeds} seed{'s' * (seeds != 1)}, {machines} machines"


def finding(tests: pd.DataFrame, seeds: pd.DataFrame | None = None, alpha: float = ALPHA) -> str:
    """The run's answer in plain words: each factor's effect across alphabets, its McNemar p,
    and, where seed runs exist, the range the same difference took over seeds."""
    across = tests[tests["task_set"] == "across"]
    if not len(across):
        return "No paired comparison in this run."
    parts = []
    for r in across.itertuples():
        delta = r.acc - r.baseline_acc
        what = "the hard miner" if r.factor == "miner" else "class batches"
        held = r.held.split()[-1]
        where = ({"triplets": "with triplet batches", "classes": "in class batches"}.get(held, f"with sampler {held}")
                 if r.factor == "miner" else f"for the {held} miner")
        beyond = "beyond noise" if r.p_value < alpha else "within noise"
        text = f"{what} {where}: {delta:+.1f} points ({r.strategy} {r.acc:.1f} % vs {r.baseline} {r.baseline_acc:.1f} %, p = {_fmt_p(r.p_value)}, {beyond}"
        spread = seed_spread(seeds, r.strategy, r.baseline) if seeds is not None and len(seeds) else None
        if spread:
            text += f"; {spread[0]:+.1f} to {spread[1]:+.1f} over {spread_words(seeds, r.strategy, r.baseline)}"
        parts.append(text + ")")
    return "What moved 20-way accuracy across alphabets in this run: " + "; ".join(parts) + "."

"""The comparison report: tables, paired tests, Markdown and figures from the pipeline's outputs.

Everything here reads files other stages wrote (metrics JSON/CSV, the evaluation's
predictions, the hard strategy's mined triplets) and writes plain files atomically, so
the report can be rebuilt on its own without a model, a GPU or TensorFlow.

Accuracies are percents throughout (as in ``metrics/evaluate.json``); the statistics
come from :mod:`tripletml.oneshot` so the report and the evaluation agree exactly.

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly rather than
through ``pyplot``: no global backend is switched and no figure is left registered, so
importing this module is harmless in a notebook or a long-running process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from tripletml.atomic import atomic_path, write_text
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
    "seed_spread",
    "finding",
    "verdict",
    "comparison_markdown",
    "class_image",
    "plot_accuracy",
    "plot_tasks",
    "plot_hard_triplets",
    "write_report",
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
DPI = 110
TRUE_COLOUR = "#1a9641"  # green: the true match / a correct pick
WRONG_COLOUR = "#d7191c"  # red: a wrong pick
CELL_IN = 0.55  # inches per image cell in the image grids: small but legible


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


def load_evaluate(path: PathLike) -> dict[str, dict]:
    """``metrics/evaluate.json`` as {strategy: metrics}, in the file's (pipeline) order."""
    data = _read_json(path, "evaluate")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected an object of {{strategy: {{metric: value}}}}")
    return data


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
    """``data/evaluate/predictions.npz`` read fully into a dict (so the file is closed)."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, "evaluate")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from exc


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


def comparison_table(evaluate: Mapping[str, Mapping], train: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per strategy (in ``evaluate``'s order), columns :data:`TABLE_COLUMNS`.

    Accuracies are percents as the metrics files hold them; a row without training
    metrics (the ensemble) gets NaN there rather than being dropped.
    """
    rows = []
    for strategy, ev in evaluate.items():
        tr = train.get(strategy, {})
        row: dict[str, Any] = {"strategy": strategy, "sampler": tr.get("sampler", ""), "miner": tr.get("miner", "")}
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


def load_seed_runs(path: PathLike) -> pd.DataFrame:
    """``docs/seed_runs.csv``: one row per (seed, strategy) of full default runs at other seeds."""
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
    return runs


def seed_spread(runs: pd.DataFrame, strategy: str, baseline: str, column: str = "test_acc20") -> tuple[float, float, int] | None:
    """(min, max, seeds) of ``strategy - baseline`` in ``column`` over the seeds that ran both."""
    wide = runs.pivot_table(index="seed", columns="strategy", values=column, aggfunc="first")
    if strategy not in wide or baseline not in wide:
        return None
    diff = (wide[strategy] - wide[baseline]).dropna()
    return (float(diff.min()), float(diff.max()), int(len(diff))) if len(diff) else None


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
            text += f"; {spread[0]:+.1f} to {spread[1]:+.1f} over {spread[2]} seeds"
        parts.append(text + ")")
    return "What moved 20-way accuracy across alphabets in this run: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------- Markdown


def _pct(x: Any) -> str:
    return "–" if x is None or pd.isna(x) else f"{float(x):.1f}"


def _pct_ci(x: Any, low: Any, high: Any) -> str:
    if pd.isna(low) or pd.isna(high):
        return _pct(x)
    return f"{_pct(x)} [{_pct(low)}, {_pct(high)}]"


def _duration(seconds: Any) -> str:
    if seconds is None or pd.isna(seconds):
        return "–"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _sig(x: Any, digits: int = 3) -> str:
    return "–" if x is None or pd.isna(x) else f"{float(x):.{digits}g}"


def _markdown_table(df: pd.DataFrame, text: Sequence[str] = ("strategy",)) -> str:
    """A pipe table of already-formatted strings; tabulate's when it is importable.

    The ``text`` columns are left-aligned, the others (numbers) right-aligned.
    """
    align = ["left" if col in text else "right" for col in df.columns]
    try:
        import tabulate  # noqa: F401
    except ImportError:
        head = "| " + " | ".join(df.columns) + " |"
        rule = "|" + "|".join(":---" if a == "left" else "---:" for a in align) + "|"
        body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
        return "\n".join([head, rule, *body])
    # disable_numparse: the cells are formatted already and must stay as written.
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


def _context_line(context: Mapping[str, Any]) -> str:
    return " · ".join(f"**{str(k).replace('_', ' ')}**: {v}" for k, v in context.items())


def comparison_markdown(
    table: pd.DataFrame,
    tests: pd.DataFrame,
    context: Mapping[str, Any] | None = None,
    figures: Mapping[str, str] | None = None,
    summary: str = "",
    title: str = "Hard vs random triplets: 20-way one-shot comparison on Omniglot",
) -> str:
    """The report as Markdown: the sampler x miner table with both figures of each strategy,
    the run's finding, the paired tests, Lake's runs beside the published marks, figures.

    ``figures`` maps a caption to an image path (relative to where the Markdown goes).
    """
    validated = bool(table["best_val_acc20"].notna().any())
    honest = "test acc % [95% CI], chosen on validation" if validated else "test acc % [95% CI], last loop's model"
    shown = pd.DataFrame(
        {
            "strategy": table["strategy"].astype(str),
            "sampler": table["sampler"].fillna("").astype(str),
            "miner": table["miner"].fillna("").astype(str),
            honest: [
                _pct_ci(r.test_acc20, r.test_acc20_ci95_low, r.test_acc20_ci95_high) for r in table.itertuples()
            ],
            "assignment's best acc % (chosen on test: optimistic)": table["assignment_best_acc20"].map(_pct),
            "within-alphabet acc % [95% CI]": [
                _pct_ci(r.within_acc20, r.within_acc20_ci95_low, r.within_acc20_ci95_high) for r in table.itertuples()
            ],
            "Lake's 20 runs %": table["lake20_acc"].map(_pct),
            "best loop": table["best_loop"].map(lambda v: "–" if pd.isna(v) else str(int(v))),
            "train time": table["train_seconds"].map(_duration),
            "s / step": table["seconds_per_step"].map(_sig),
        }
    )
    tasks = f"{context.get('tasks', '')} " if context else ""
    parts = [f"# {title}", ""]
    if context:
        parts += [_context_line(context), ""]
    chosen = (
        "the model chosen on the validation alphabets"
        if validated
        else "the last loop's model: no validation alphabets were held out (`data.validation_alphabets: 0`, "
        "the assignment's split), so no validation-chosen figure exists"
    )
    parts += [
        "## Accuracy",
        "",
        f"Two figures per strategy. **Test acc** is {chosen}, "
        f"scored once on {tasks}test tasks over the 20 evaluation alphabets, "
        "with a 95% Wilson interval. **Assignment's best acc** is the course assignment's own "
        "figure: the best of the per-loop accuracies on 250 test tasks drawn afresh each loop. "
        "It picks its loop on test data, so it is optimistic; it is here to read against the "
        f"assignment's {ASSIGNMENT['random']} % (random) and {ASSIGNMENT['hard']} % (hard), "
        "measured on a GPU with 105-px images and its own network. The `ensemble` row "
        "concatenates every strategy's embedding.",
        "",
        _markdown_table(shown, text=("strategy", "sampler", "miner")),
        "",
    ]
    if summary:
        parts += [summary, ""]
    parts += ["## Paired tests", ""]
    if len(tests):
        parts += [
            "Exact McNemar tests on the very same tasks: the miner (hard against random) within "
            "each sampler, and the sampler (class batches against triplet batches) within each "
            "miner; *b* = tasks only the first strategy got right, *c* = tasks only the second did.",
            "",
            _markdown_table(
                pd.DataFrame(
                    {
                        "factor": tests["factor"].astype(str),
                        "held fixed": tests["held"].astype(str),
                        "strategy": tests["strategy"].astype(str),
                        "vs": tests["baseline"].astype(str),
                        "tasks": [f"{n} ({s})" for n, s in zip(tests["tasks"], tests["task_set"])],
                        "acc %": tests["acc"].map(_pct),
                        "vs acc %": tests["baseline_acc"].map(_pct),
                        "b": tests["b"].astype(str),
                        "c": tests["c"].astype(str),
                        "p": tests["p_value"].map(lambda p: _sig(p, 2)),
                        "verdict": tests["verdict"].astype(str),
                    }
                ),
                text=("factor", "held fixed", "strategy", "vs", "verdict"),
            ),
            "",
        ]
    else:
        parts += ["No pair of strategies that differ in one factor only.", ""]
    lake = table.dropna(subset=["lake20_acc"])
    if len(lake):
        marks = [(name, acc) for name, acc in LAKE_PUBLISHED.items()]
        marks += [(f"this run: {r.strategy}", r.lake20_acc) for r in lake.itertuples()]
        marks.sort(key=lambda m: -m[1])
        parts += [
            "## Lake et al.'s 20 official one-shot runs",
            "",
            "Within-alphabet 20-way runs (each test drawing against one drawing of each of 20 "
            "characters of one alphabet, by other drawers), scored as Lake's demo does: nearest "
            "training image, mean over the 20 runs. Used to score only, never to choose.",
            "",
            _markdown_table(
                pd.DataFrame({"model": [m[0] for m in marks], "accuracy %": [_pct(m[1]) for m in marks]}), text=("model",)
            ),
            "",
        ]
    if figures:
        parts += ["## Figures", ""]
        for caption, rel in figures.items():
            parts += [f"![{caption}]({Path(rel).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(parts).rstrip() + "\n"


# ----------------------------------------------------------------------------- figures


def _save(fig: Figure, path: PathLike) -> Path:
    # The temp name ends in .tmp, so the format must be given explicitly.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _image(X: np.ndarray, char: int, drawing: int) -> np.ndarray:
    img = np.asarray(X[char, drawing])
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def class_image(X: np.ndarray, c: int, d: int) -> np.ndarray:
    """Drawing ``d`` of class ``c`` of ``X`` (n_chars, 20, S, S[, 1]), rotation-augmented classes included.

    Class ``c >= n_chars`` is character ``c % n_chars`` turned by ``c // n_chars`` quarter
    turns (``np.rot90``), the training set's augmentation.
    """
    n = int(X.shape[0])
    c, d = int(c), int(d)
    if c < 0 or not 0 <= d < X.shape[1]:
        raise IndexError(f"class {c}, drawing {d} outside a set of {n} characters x {X.shape[1]} drawings")
    return np.rot90(_image(X, c % n, d), c // n)


def _show(ax, img: np.ndarray, x: float, y: float) -> None:
    """Place one image with its top-left corner at data (x, y); ink dark on white."""
    h, w = img.shape
    ax.imshow(img, cmap="gray_r", vmin=0.0, vmax=1.0, extent=(x, x + w, y + h, y), interpolation="nearest")


def _frame(ax, x: float, y: float, size: float, colour: str, lw: float, ls: str = "-", pad: float = 0.0) -> None:
    ax.add_patch(
        Rectangle((x - pad, y - pad), size + 2 * pad, size + 2 * pad, fill=False, ec=colour, lw=lw, ls=ls)
    )


def plot_accuracy(
    histories: Mapping[str, pd.DataFrame], path: PathLike, n_way: int = 20, margins: Mapping[str, float] | None = None
) -> Path:
    """Two panels per loop, one colour per strategy: accuracy (validation solid, the loop's
    fresh test tasks dashed) and the training loss as a fraction of the strategy's margin.

    The right panel answers the assignment's Task 2.2: a loss that falls below the margin
    (1 on this scale) means the network separates triplets rather than collapsing every
    embedding onto one point, where the hinge loss sits exactly at the margin.
    """
    fig = Figure(figsize=(12.0, 4.6), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    handles = []
    for i, (strategy, h) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        h = h.sort_values("loop")
        val = h.dropna(subset=["val_acc20"])
        acc_ax.plot(val["loop"], val["val_acc20"], color=colour, ls="-", lw=1.6, marker="o", ms=2.5)
        if "test_acc20_250" in h and h["test_acc20_250"].notna().any():
            test = h.dropna(subset=["test_acc20_250"])
            acc_ax.plot(test["loop"], test["test_acc20_250"], color=colour, ls="--", lw=1.3)
        margin = (margins or {}).get(strategy)
        if margin is not None and margin > 0:  # the soft margin has none: no curve to scale
            loss_ax.plot(h["loop"], h["loss"] / margin, color=colour, lw=1.6, marker="o", ms=2.5)
        handles.append(Line2D([], [], color=colour, lw=2, label=strategy))
    acc_ax.axhline(100.0 / n_way, color="0.4", ls=":", lw=1)
    loss_ax.axhline(1.0, color="0.4", ls=":", lw=1)
    handles += [
        Line2D([], [], color="k", ls="-", label="validation (chooses)"),
        Line2D([], [], color="k", ls="--", label="test, fresh tasks each loop"),
        Line2D([], [], color="0.4", ls=":", label=f"chance ({100 / n_way:g}%) / the margin"),
    ]
    # Outside the axes: inside, it would hide whichever curve happens to run under it.
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    for ax in (acc_ax, loss_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training loop")
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel(f"{n_way}-way one-shot accuracy (%)")
    acc_ax.set_title(f"{n_way}-way one-shot accuracy per loop")
    acc_ax.set_ylim(0, 100)
    loss_ax.set_ylabel("mean training loss / margin")
    loss_ax.set_title("Loss per loop against the margin (collapse sits at 1)")
    loss_ax.set_ylim(bottom=0)
    return _save(fig, path)


def _pick_tasks(predictions: Mapping[str, np.ndarray], strategies: Sequence[str], n_tasks: int) -> list[int]:
    """Tasks where the strategies disagree first (the instructive ones), then the rest, in order."""
    target = np.asarray(predictions["target"])
    correct = np.stack([np.asarray(predictions[f"pred_{s}"]) == target for s in strategies])
    split = correct.any(axis=0) & ~correct.all(axis=0)
    order = np.concatenate([np.flatnonzero(split), np.flatnonzero(~split)])
    return [int(t) for t in order[:n_tasks]]


def plot_tasks(
    X_test: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    strategies: Sequence[str],
    path: PathLike,
    n_tasks: int = 4,
    tasks: Sequence[int] | None = None,
) -> Path:
    """A few across-alphabet test tasks: query, then the support set with each strategy's pick.

    The true match is framed green; under every picked image each strategy that picked it
    is named with ✓/✗, and a wrong pick is framed dashed red. By default the tasks where
    the strategies disagree are shown first.
    """
    strategies = list(strategies)
    tasks = list(tasks) if tasks is not None else _pick_tasks(predictions, strategies, n_tasks)
    qc, qd = np.asarray(predictions["query_char"]), np.asarray(predictions["query_drawing"])
    sc, sd = np.asarray(predictions["support_chars"]), np.asarray(predictions["support_drawings"])
    target = np.asarray(predictions["target"])
    n_way = int(sc.shape[1])
    S = int(_image(X_test, 0, 0).shape[0])

    # Layout in pixel units of the images: a cell is an image plus a gap; the query sits apart.
    gap = S * 0.25
    cell = S + gap
    x0 = cell + S * 0.5  # supports start after the query and a wider gap
    width = x0 + n_way * cell
    label_h = S * 0.42  # one line of "strategy ✓" under an image
    row_h = S + gap + label_h * max(1, len(strategies))
    fig_w = width / S * CELL_IN
    fig_h = max(1, len(tasks)) * (row_h / S * CELL_IN + 0.3)
    fig = Figure(figsize=(fig_w, fig_h), layout="constrained")
    axes = fig.subplots(max(1, len(tasks)), 1, squeeze=False)[:, 0]
    font = 7.5

    for ax, t in zip(axes, tasks):
        ax.set_xlim(-gap, width)
        ax.set_ylim(row_h, -gap)  # y grows downwards, like the images
        ax.set_aspect("equal")
        ax.axis("off")
        _show(ax, _image(X_test, qc[t], qd[t]), 0, 0)
        _frame(ax, 0, 0, S, "0.2", 1.2, pad=1)
        ax.text(S / 2, S + gap * 0.5, "query", ha="center", va="top", fontsize=font)
        picks: dict[int, list[str]] = {}
        summary = []
        for s in strategies:
            p = int(np.asarray(predictions[f"pred_{s}"])[t])
            picks.setdefault(p, []).append(s)
            summary.append(f"{s} {'✓' if p == target[t] else '✗'}")
        for j in range(n_way):
            x = x0 + j * cell
            _show(ax, _image(X_test, sc[t, j], sd[t, j]), x, 0)
            if j == target[t]:
                _frame(ax, x, 0, S, TRUE_COLOUR, 2.6, pad=1.5)
            elif j in picks:
                _frame(ax, x, 0, S, WRONG_COLOUR, 1.8, ls="--", pad=1.5)
            else:
                _frame(ax, x, 0, S, "0.8", 0.5)
            for k, s in enumerate(picks.get(j, [])):
                ok = j == target[t]
                ax.text(
                    x + S / 2,
                    S + gap * 0.5 + k * label_h,
                    f"{s} {'✓' if ok else '✗'}",
                    ha="center",
                    va="top",
                    fontsize=font,
                    color=TRUE_COLOUR if ok else WRONG_COLOUR,
                    fontweight="bold",
                )
        ax.set_title(
            f"task {t}: " + ", ".join(summary),
            loc="left",
            fontsize=9,
        )
    for ax in axes[len(tasks) :]:
        ax.axis("off")
    fig.suptitle(
        f"{n_way}-way one-shot test tasks: query, then the support set "
        "(true match framed green, a wrong pick dashed red)",
        fontsize=11,
    )
    return _save(fig, path)


def _rotation_label(c: int, n: int) -> str:
    turns = (int(c) // n) % 4
    return f"char {int(c) % n}" + (f", {90 * turns}°" if turns else "")


def plot_hard_triplets(
    X_train: np.ndarray, mined: Mapping[str, Mapping], path: PathLike, n: int = 8, title: str = "Triplets mined by the hard strategy"
) -> Path:
    """Triplets a strategy mined at its first and last loop, anchor | positive | negative.

    Each image is labelled with its character and rotation, so a negative that is a rotated
    copy of the anchor's own character is visible as such.
    """
    n_chars = int(X_train.shape[0])
    S = int(_image(X_train, 0, 0).shape[0])
    gap = S * 0.2
    label_h = S * 0.38
    cell_w, cell_h = S + gap, S + label_h + gap * 0.5
    panels = [("first", "first loop"), ("last", "last loop")]
    rows = max(1, min(n, max((len(mined.get(k, {}).get("classes", [])) for k, _ in panels), default=0)))
    fig = Figure(figsize=(2 * 3 * cell_w / S * CELL_IN * 1.35 + 0.4, rows * cell_h / S * CELL_IN * 1.35 + 0.8),
                 layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (key, name) in zip(axes, panels):
        ax.set_xlim(-gap, 3 * cell_w)
        ax.set_ylim(rows * cell_h, -S * 0.45)
        ax.set_aspect("equal")
        ax.axis("off")
        entry = mined.get(key)
        if not entry:
            ax.set_title(f"{name}: none recorded", fontsize=10)
            continue
        classes = np.asarray(entry.get("classes", []), dtype=int).reshape(-1, 3)[:n]
        drawings = np.asarray(entry.get("drawings", []), dtype=int).reshape(-1, 3)[:n]
        loop = entry.get("loop")
        ax.set_title(f"{name}" + (f" (loop {loop})" if loop is not None else ""), fontsize=10)
        for col, head in enumerate(("anchor", "positive", "negative")):
            ax.text(col * cell_w + S / 2, -S * 0.12, head, ha="center", va="bottom", fontsize=8, fontweight="bold")
        for r, (cls, drw) in enumerate(zip(classes, drawings)):
            y = r * cell_h
            for col in range(3):
                x = col * cell_w
                _show(ax, class_image(X_train, cls[col], drw[col]), x, y)
                _frame(ax, x, y, S, WRONG_COLOUR if col == 2 else "0.75", 0.8 if col < 2 else 1.2)
                ax.text(x + S / 2, y + S + 1, _rotation_label(cls[col], n_chars), ha="center", va="top", fontsize=6)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# ----------------------------------------------------------------------------- writing


def write_report(
    out_dir: PathLike,
    table: pd.DataFrame,
    tests: pd.DataFrame,
    context: Mapping[str, Any] | None = None,
    figures: Mapping[str, PathLike] | None = None,
    summary: str = "",
) -> dict[str, Path]:
    """Write ``comparison.csv`` (the table, no index) and ``comparison.md``, atomically.

    ``figures`` maps captions to already written images; the Markdown links them by a
    path relative to ``out_dir``. Returns {"csv": path, "md": path}.
    """
    out = Path(out_dir)
    csv_path, md_path = out / "comparison.csv", out / "comparison.md"
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    links = {cap: os.path.relpath(Path(p), out) for cap, p in (figures or {}).items()}
    write_text(md_path, comparison_markdown(table, tests, context, links, summary))
    return {"csv": csv_path, "md": md_path}

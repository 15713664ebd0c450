"""The report in words: ``comparison.md`` (and ``comparison.csv`` beside it) from the
comparison table, the paired tests and the figures :mod:`tripletml.report` and
:mod:`tripletml.figures` make."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from tripletml.atomic import atomic_path, write_text
from tripletml.report import ASSIGNMENT, LAKE_PUBLISHED

__all__ = ["comparison_markdown", "write_report"]

PathLike = str | os.PathLike


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
    if "overlap_across" in table:  # report.separation: chance a different-character pair is the closer
        shown.insert(7, "overlap % (any / same alphabet)", [
            "–" if pd.isna(a) else f"{a:.1f} / {w:.1f}" for a, w in zip(table["overlap_across"], table["overlap_within"])])
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
        "concatenates every strategy's embedding. **Overlap** is the chance that a random pair of "
        "drawings of two different characters (any two, or two of one alphabet) lies closer than a "
        "random pair of one character's drawings: lower separates better.",
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

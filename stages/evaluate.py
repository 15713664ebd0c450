"""Stage `evaluate`: score every strategy's chosen model on the same 20-way test tasks.

Writes metrics/evaluate.json (accuracy with 95% Wilson intervals, across alphabets,
within alphabets, and the assignment's 250-task figure) and
data/evaluate/predictions.npz (every task and each model's pick, for the paired tests).
"""

from __future__ import annotations

from pathlib import Path

import common
import numpy as np

from tripletml import oneshot, tracking, tta
from tripletml.atomic import atomic_path, ensure_writable, write_json
from tripletml.data import DataError, load_prepared

PREDICTIONS = Path("data/evaluate/predictions.npz")


def main() -> None:
    p = common.params()
    e = p.evaluate
    names = common.strategies(p)
    test = load_prepared(Path(p.data.prepared_dir) / "test.npz")
    model_dirs = {s: Path("models") / s for s in names}
    for s, d in model_dirs.items():
        if not (d / "embedding.keras").is_file():
            raise DataError(f"{d}/embedding.keras: missing (run `dvc repro train_{s}`)")
    ensure_writable("metrics", PREDICTIONS.parent)
    uri = tracking.default_tracking_uri()
    tracking.check_reachable(uri)

    from tripletml.embedder import load_embedder

    n = test.n_characters
    task_sets = {
        "test_acc20": oneshot.sample_tasks(test.c, n, e.n_way, e.tasks, np.random.default_rng([e.seed, 0])),
        "within_acc20": oneshot.sample_tasks(
            test.c, n, e.n_way, e.tasks, np.random.default_rng([e.seed, 1]), within_alphabet=True
        ),
        "test_acc20_250": oneshot.sample_tasks(test.c, n, e.n_way, e.assignment_tasks, np.random.default_rng([e.seed, 2])),
    }
    # predictions.npz keys: the across-alphabet tasks bare, the within-alphabet ones prefixed
    saved = {"test_acc20": "", "within_acc20": "within_"}
    fields = ("query_char", "query_drawing", "support_chars", "support_drawings", "target")
    arrays = {f"{prefix}{f}": getattr(task_sets[key], f) for key, prefix in saved.items() for f in fields}
    metrics = {}
    for s in names:
        embedder = load_embedder(model_dirs[s])
        embed = tta.shift_averaged(embedder.embed_prepared, e.tta_shift, renormalize=embedder.unit_norm)
        table = oneshot.embed_set(embed, test.X)  # every test image once
        row = {}
        for key, tasks in task_sets.items():
            pred = oneshot.predict_tasks(table, tasks)
            correct = pred == tasks.target
            row[key] = oneshot.percent_correct(correct)
            if key != "test_acc20_250":
                low, high = oneshot.wilson_interval(int(correct.sum()), len(correct))
                row[f"{key}_ci95_low"], row[f"{key}_ci95_high"] = round(100 * low, 3), round(100 * high, 3)
                arrays[f"{saved[key]}pred_{s}"] = pred
        row["tasks"] = e.tasks
        metrics[s] = row
        print(f"{s}: test_acc20 {row['test_acc20']:.1f} within_acc20 {row['within_acc20']:.1f} test_acc20_250 {row['test_acc20_250']:.1f}")
    with atomic_path(PREDICTIONS) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    write_json("metrics/evaluate.json", metrics)
    tracking.log_evaluation(
        uri,
        run_name="evaluate",
        tags={"dvc_stage": "evaluate", "pipeline": common.pipeline_tag(), "git_commit": tracking.git_commit(".") or "unknown"},
        metrics={f"{s}_{k}": v for s, row in metrics.items() for k, v in row.items()},
        artifacts=["metrics/evaluate.json"],
    )


if __name__ == "__main__":
    common.run(main)

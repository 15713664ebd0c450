"""Stage `evaluate`: score every strategy's chosen model on the same 20-way test tasks.

Writes metrics/evaluate/<strategy>.json (accuracy with 95% Wilson intervals, across
alphabets, within alphabets, on 250 tasks, and on Lake et al.'s 20 official runs) for each
strategy and for their ``ensemble`` (the strategies' embeddings concatenated), and
data/evaluate/predictions.npz (every task and each model's pick, for the paired tests) and
data/evaluate/embeddings.npz (each strategy's embedding of every test drawing, as scored: the
report's maps and distance figures are drawn from it, with no model loaded again).
"""

from __future__ import annotations

from pathlib import Path

import common
import numpy as np

from tripletml import lake_runs, oneshot, tracking, tta
from tripletml.atomic import atomic_path, ensure_writable, write_json
from tripletml.data import DataError, load_prepared

PREDICTIONS = Path("data/evaluate/predictions.npz")
EMBEDDINGS = Path("data/evaluate/embeddings.npz")  # <strategy>: (characters, drawings, D) float32
METRICS = Path("metrics/evaluate")  # <strategy>.json: one row each in `dvc metrics show`


def main() -> None:
    p = common.params()
    e = p.evaluate
    names = common.strategies(p)
    test = load_prepared(Path(p.data.prepared_dir) / "test.npz")
    model_dirs = {s: Path("models") / s for s in names}
    for s, d in model_dirs.items():
        if not (d / "embedding.keras").is_file():
            raise DataError(f"{d}/embedding.keras: missing (run `dvc repro train_{s}`)")
    runs = lake_runs.read_lake_runs(Path(p.data.raw_dir) / "all_runs.zip")  # test data: scored, never used to choose
    ensure_writable(METRICS, PREDICTIONS.parent)

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
    metrics, tables, embeds = {}, {}, {}
    for s in names:
        embedder = load_embedder(model_dirs[s])
        embeds[s] = tta.shift_averaged(embedder.embed_prepared, e.tta_shift, renormalize=embedder.unit_norm)
        tables[s] = oneshot.embed_set(embeds[s], test.X)  # every test image once
    lake_train, lake_test = lake_runs.to_model_images(runs, p.data.image_size)
    # The ensemble: every strategy's (unit) embedding side by side, so its squared distance is their sum.
    tables["ensemble"] = np.concatenate([tables[s] for s in names], axis=-1)
    embeds["ensemble"] = lambda x: np.concatenate([embeds[s](x) for s in names], axis=-1)
    for s, table in tables.items():
        row = {}
        for key, tasks in task_sets.items():
            pred = oneshot.predict_tasks(table, tasks)
            correct = pred == tasks.target
            row[key] = oneshot.percent_correct(correct)
            if key != "test_acc20_250":
                low, high = oneshot.wilson_interval(int(correct.sum()), len(correct))
                row[f"{key}_ci95_low"], row[f"{key}_ci95_high"] = round(100 * low, 3), round(100 * high, 3)
                arrays[f"{saved[key]}pred_{s}"] = pred
        right = lake_runs.score_lake_runs(embeds[s], lake_train, lake_test, runs.answer)
        row["lake20_acc"] = round(lake_runs.lake_figures(right)["accuracy"], 3)
        arrays[f"lake_right_{s}"] = right
        metrics[s] = row
        print(
            f"{s}: test_acc20 {row['test_acc20']:.1f} within_acc20 {row['within_acc20']:.1f} "
            f"test_acc20_250 {row['test_acc20_250']:.1f} lake20_acc {row['lake20_acc']:.1f}"
        )
    for path, content in ((PREDICTIONS, arrays), (EMBEDDINGS, {s: tables[s] for s in names})):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **content)
    for s, row in metrics.items():
        write_json(METRICS / f"{s}.json", row)
    tracking.LiveRun("evaluate").finish()  # an observer: a lost MLflow store costs a warning, never the stage


if __name__ == "__main__":
    common.run(main)

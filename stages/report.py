"""Stage `report`: the comparison table, the paired tests and the pictures.

Writes reports/{comparison.csv, comparison.md, tests.csv, accuracy.png, tasks.png,
hard_triplets.png} and metrics/summary.json (the headline figures: `dvc exp show`, `dvc
metrics diff`), and logs them to MLflow with the pipeline's tag.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import common

from tripletml import figures, markdown, report, tracking
from tripletml.atomic import atomic_path, ensure_writable, write_json
from tripletml.data import load_prepared

OUT = Path("reports")
SUMMARY = Path("metrics/summary.json")
SEED_RUNS = Path("docs/seed_runs.csv")  # the default run at other seeds (benchmarks/seeds.py)


def main() -> None:
    p = common.params()
    names = common.strategies(p)
    evaluate = report.load_evaluate("metrics/evaluate", names)
    train = report.load_train_metrics("metrics/train", names)
    histories = report.load_histories("metrics/history", names)
    predictions = report.load_predictions("data/evaluate/predictions.npz")
    mined = report.load_mined("models/hard/mined.json")
    seeds = report.load_seed_runs(SEED_RUNS)
    prepared = Path(p.data.prepared_dir)
    ensure_writable(OUT, SUMMARY.parent)

    settings = {s: p.strategy(s) for s in names}
    table = report.comparison_table(evaluate, train, {s: (v.sampler, v.miner) for s, v in settings.items()})
    tests = report.paired_tests(predictions, report.factor_pairs(table))
    seeds = report.seed_runs_of(seeds, table, p.train.seed)  # another configuration's seeds say nothing of this one
    hard = settings["hard"]
    pictures = {
        "Accuracy and loss per loop": figures.plot_accuracy(
            histories, OUT / "accuracy.png", p.evaluate.n_way, {s: v.margin for s, v in settings.items()}
        ),
        "Test tasks and each strategy's pick": figures.plot_tasks(
            load_prepared(prepared / "test.npz").X, predictions, names, OUT / "tasks.png"
        ),
        "Triplets mined by the hard strategy": figures.plot_hard_triplets(
            load_prepared(prepared / "train.npz").X, mined, OUT / "hard_triplets.png",
            title=f"Triplets mined by the hard strategy ({hard.sampler} sampler, {hard.miner} miner)",
        ),
    }
    context = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "image size": f"{p.data.image_size} px",
        "model": p.model.arch,
        "training time": f"{sum(t['train_seconds'] for t in train.values()):.0f} s",
        "samplers": f"triplets = {p.train.batch_size} random anchor-positive pairs a step; "
        f"classes = P classes x every drawing, every anchor-positive pair a triplet",
        "tasks": f"{p.evaluate.tasks} x {p.evaluate.n_way}-way",
        "test-time shifts": f"up to {p.evaluate.tta_shift} px" if p.evaluate.tta_shift else "none",
    }
    written = markdown.write_report(OUT, table, tests, context, pictures, report.finding(tests, seeds))
    with atomic_path(OUT / "tests.csv") as tmp:
        tests.to_csv(tmp, index=False)
    write_json(SUMMARY, report.summary_metrics(table, tests))
    print(written["md"].read_text())
    tracking.LiveRun("report").finish()  # an observer: a lost MLflow store costs a warning, never the stage


if __name__ == "__main__":
    common.run(main)

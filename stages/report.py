"""Stage `report`: the comparison table, the paired tests and the pictures.

Writes reports/{comparison.csv, comparison.md, tests.csv, accuracy.png, tasks.png,
hard_triplets.png, embedding_map.png, distances.png, mistakes.png} and metrics/summary.json (the headline figures: `dvc exp show`, `dvc
metrics diff`), and logs them to MLflow with the pipeline's tag.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import common

import numpy as np

from tripletml import figures, markdown, report, separation, tracking
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
    embeddings = report.load_embeddings("data/evaluate/embeddings.npz")
    seeds = report.load_seed_runs(SEED_RUNS)
    prepared = Path(p.data.prepared_dir)
    ensure_writable(OUT, SUMMARY.parent)

    settings = {s: p.strategy(s) for s in names}
    table = report.comparison_table(evaluate, train, {s: (v.sampler, v.miner) for s, v in settings.items()})
    tests = report.paired_tests(predictions, report.factor_pairs(table))
    test_set = load_prepared(prepared / "test.npz")
    distances, overlaps = report.separation(embeddings, test_set.c)
    table["overlap_across"] = table["strategy"].map(lambda s: overlaps.get(s, {}).get("across"))
    table["overlap_within"] = table["strategy"].map(lambda s: overlaps.get(s, {}).get("within"))
    best = table.loc[table["within_acc20"].idxmax(), "strategy"]  # the best model's mistakes, ensemble included
    shown = separation.map_characters(test_set.c)
    chars = np.concatenate(list(shown.values()))
    n_drawings = test_set.X.shape[1]
    seeds = report.seed_runs_of(seeds, table, p.train.seed)  # another configuration's seeds say nothing of this one
    hard = settings["hard"]
    pictures = {
        "Accuracy and loss per loop": figures.plot_accuracy(
            histories, OUT / "accuracy.png", p.evaluate.n_way, {s: v.margin for s, v in settings.items()}
        ),
        "Test tasks and each strategy's pick": figures.plot_tasks(test_set.X, predictions, names, OUT / "tasks.png"),
        "Triplets mined by the hard strategy": figures.plot_hard_triplets(
            load_prepared(prepared / "train.npz").X, mined, OUT / "hard_triplets.png",
            title=f"Triplets mined by the hard strategy ({hard.sampler} sampler, {hard.miner} miner)",
        ),
        "Test embeddings of a few evaluation alphabets in 2-D": figures.plot_embedding_maps(
            {s: separation.embedding_map(embeddings[s], chars) for s in names}, shown, n_drawings, OUT / "embedding_map.png"
        ),
        "Distances of same- and different-character pairs, with the margin": figures.plot_distances(
            distances, {s: v.margin for s, v in settings.items() if not v.soft_margin}, overlaps, OUT / "distances.png"
        ),
        f"Within-alphabet test tasks the best model ({best}) got wrong": figures.plot_mistakes(
            test_set.X, predictions, best, OUT / "mistakes.png", alphabet_of=_alphabet_of(test_set.c)
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


def _alphabet_of(c: dict[str, tuple[int, int]]) -> list[str]:
    """Each test character's alphabet, by character index."""
    return [name for name, (lo, hi) in sorted(c.items(), key=lambda kv: kv[1]) for _ in range(lo, hi)]


if __name__ == "__main__":
    common.run(main)

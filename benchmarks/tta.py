"""Evaluation-time levers, measured on the validation alphabets only.

    python benchmarks/tta.py models/random models/hard [--radii 0 1 2] [--centre] [--ensemble] [--tasks 4000]

Scores each saved model on the same 20-way tasks drawn from ``val.npz`` (across and
within alphabets) with its embeddings averaged over shifts of up to r pixels
(``tripletml.tta``), for every r in ``--radii``, and with ``--centre`` also about each
task's mean candidate (``oneshot.centre_on_candidates``), and with ``--ensemble`` also the
models' embeddings side by side (as evaluate's ensemble). The evaluation alphabets are not
loaded: this is how ``evaluate.tta_shift`` and ``evaluate.centre`` were chosen.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tripletml import oneshot, tta  # noqa: E402
from tripletml.data import load_prepared  # noqa: E402


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="saved model folders (models/<strategy>)")
    ap.add_argument("--prepared", default="data/prepared/val.npz")
    ap.add_argument("--radii", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--centre", action="store_true", help="also score about each task's mean candidate")
    ap.add_argument("--ensemble", action="store_true", help="also score the models' embeddings concatenated")
    ap.add_argument("--tasks", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    from tripletml.embedder import load_embedder

    val = load_prepared(args.prepared)
    rng = lambda i: np.random.default_rng([args.seed, i])  # noqa: E731
    task_sets = {
        "val_acc20": oneshot.sample_tasks(val.c, val.n_characters, 20, args.tasks, rng(0)),
        "val_within_acc20": oneshot.sample_tasks(val.c, val.n_characters, 20, args.tasks, rng(1), within_alphabet=True),
    }
    tables = {}  # (model, radius) -> (n, drawings, D)
    for folder in args.models:
        embedder = load_embedder(folder)
        for r in args.radii:
            tables[folder, r] = oneshot.embed_set(tta.shift_averaged(embedder.embed_prepared, r, renormalize=embedder.unit_norm), val.X)
    if args.ensemble:
        for r in args.radii:
            tables["ensemble", r] = np.concatenate([tables[m, r] for m in args.models], axis=-1)
    rows = []
    for (model, r), table in tables.items():
        for centre in (False, True) if args.centre else (False,):
            row = {"model": model, "tta_shift": r, "centre": centre}
            row.update({k: round(100 * oneshot.evaluate_tasks(table, t, centre).mean(), 2) for k, t in task_sets.items()})
            rows.append(row)
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    return df


if __name__ == "__main__":
    main()

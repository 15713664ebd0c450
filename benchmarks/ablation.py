"""Ablation runs: one training run per lever, scored on the validation alphabets only.

    python benchmarks/ablation.py --strategy hard --label "margin 0.5" -S train.margin=0.5

Starts from ``params.yaml`` (or ``--params``), applies each ``-S dotted.key=value``
(YAML values, as ``dvc exp run -S`` takes them), validates the result with the same
schema as the pipeline, trains one strategy on the prepared training alphabets and
scores 20-way tasks on the validation alphabets after every loop (and, for the chosen
model, as many tasks within single validation alphabets). The evaluation
alphabets are not loaded: nothing here can be tuned on them.

Appends one row to ``--out`` (default ``docs/ablation.csv``): the label, strategy,
overrides, best and last validation accuracy, the best loop, seconds per step and the
total training seconds, plus the git commit, so every figure in docs/results.md's
ablation table names the command that produced it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from tripletml.atomic import atomic_path  # noqa: E402
from tripletml.data import load_prepared  # noqa: E402
from tripletml.params import Params, ParamsError, apply_overrides, validate_params  # noqa: E402


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def within_accuracy(embedding, val_set, tasks: int, n_way: int, seed: int) -> float:
    """% of ``tasks`` within-alphabet tasks on the validation alphabets the chosen model gets right."""
    import numpy as np

    from tripletml import course
    from tripletml.embedder import make_embed_fn

    # Seeded apart from training's validation tasks ([seed, 1]) and test tasks ([seed, 2]).
    rng = np.random.default_rng([seed, 3])
    return course.test_oneshot(make_embed_fn(embedding), val_set.X, n_way, tasks, c=val_set.c, within_alphabet=True, rng=rng)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--strategy", default="hard")
    ap.add_argument("--label", required=True)
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--val-tasks", type=int, default=1000, help="20-way validation tasks per loop (default 1000)")
    ap.add_argument("--out", default="docs/ablation.csv")
    ap.add_argument("--save", metavar="DIR", help="also save the chosen model there (models/<strategy> layout)")
    args = ap.parse_args()

    raw = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
    pairs = [item.partition("=") for item in args.overrides]
    bad = [key for key, sep, _ in pairs if not sep]
    if bad:
        raise ParamsError(f"-S {bad[0]!r}: expected dotted.key=value")
    raw = apply_overrides(raw, {key: yaml.safe_load(value) for key, _, value in pairs} | {"train.val_tasks": args.val_tasks})
    params: Params = validate_params(raw, f"{args.params} with {' '.join(args.overrides) or 'no overrides'}")
    settings = params.strategy(args.strategy)
    prepared = Path(params.data.prepared_dir)
    train_set, val_set = (load_prepared(prepared / f"{s}.npz") for s in ("train", "val"))
    if train_set.X.shape[-1] != params.data.image_size:
        raise ParamsError(
            f"{prepared}/train.npz holds {train_set.X.shape[-1]} px images but data.image_size = {params.data.image_size}: "
            "run `dvc repro prepare` with that size first"
        )

    from tripletml.training import train

    def on_loop(r) -> None:
        print(f"{args.label}: loop {r.loop} loss {r.loss:.4f} val_acc20 {r.val_acc20:.1f} ({r.loop_seconds:.0f} s)", flush=True)

    result = train(settings, params.model, train_set, val_set, None, on_loop=on_loop)
    within = within_accuracy(result.embedding, val_set, args.val_tasks, settings.n_way, settings.seed)
    if args.save:
        from tripletml.embedder import save_embedder

        save_embedder(args.save, result.embedding, {"image_size": params.data.image_size, "label": args.label})
    row = {
        "label": args.label,
        "strategy": args.strategy,
        "overrides": " ".join(([f"--params {args.params}"] if args.params != "params.yaml" else []) + args.overrides),
        "best_val_acc20": round(result.best_val_acc20, 2),
        "last_val_acc20": round(result.history[-1].val_acc20, 2),
        "best_val_within20": round(within, 2),
        "best_loop": result.best_loop,
        "loops": settings.loops,
        "steps": result.steps,
        "seconds_per_step": round(result.seconds_per_step, 4),
        "train_seconds": round(result.train_seconds, 1),
        "val_tasks": args.val_tasks,
        "commit": git_commit(),
    }
    out = Path(args.out)
    table = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    print(
        f"{args.label}: best val_acc20 {row['best_val_acc20']} (loop {row['best_loop']}), within alphabets "
        f"{row['best_val_within20']}, {row['seconds_per_step']} s/step"
    )


if __name__ == "__main__":
    try:
        main()
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

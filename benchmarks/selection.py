"""Benchmark: seconds per training step of each strategy (sampler x miner), side by side.

    python benchmarks/selection.py [--params params.yaml] [--profile NAME] [-S key=value ...]
                                   [--repeats 5] [--steps 20] [--strategies random hard ...]

Every strategy trains from params.yaml's settings (with ``profiles/<NAME>.yaml`` and then
each ``-S`` applied on top) on ``<prepared_dir>/train.npz``, which must hold images of
``data.image_size`` (``dvc repro prepare``, or ``stages/prepare.py`` with those params). A timed step is what ``Trainer.run`` does per step: draw the
batch (for hard in triplet batches, one batched inference-mode pass over the anchors and
every drawing of each negative class, then the miner), then the compiled train step; the
loss is read back each step so no work is left queued. The strategies are timed
interleaved, in a rotating order, within every repeat, so the machine's drift hits them
alike; each figure is the median over repeats. ``--assignment`` also times the course's
own hard mining (one ``model.predict`` per triplet on its anchor and the 20 drawings of
its negative class) for a few steps.

The last lines print hard/random step-time ratios within each sampler; ``--out`` also writes
the table and the ratios as CSV (``docs/benchmarks/selection.csv``, shown in docs/results.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", help="apply profiles/<PROFILE>.yaml on top of the params")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strategies", nargs="*", help="default: every strategy the pipeline trains")
    ap.add_argument("--out", help="also write the table as CSV here (e.g. docs/benchmarks/selection.csv)")
    ap.add_argument("--assignment", type=int, default=0, metavar="STEPS", help="also time the course's per-triplet predict for STEPS steps")
    args = ap.parse_args()

    import yaml

    from tripletml.data import load_prepared
    from tripletml.params import apply_overrides, validate_params
    from tripletml.training import Trainer

    raw = yaml.safe_load(open(args.params, encoding="utf-8"))
    if args.profile:
        raw = apply_overrides(raw, yaml.safe_load(open(f"profiles/{args.profile}.yaml", encoding="utf-8")))
    raw = apply_overrides(raw, {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.overrides)})
    p = validate_params(raw, args.params, use_prepared=False)
    names = args.strategies or p.trained()
    sets = [load_prepared(f"{p.data.prepared_dir}/{s}.npz") for s in ("train", "val")]
    if sets[0].X.shape[-1] != p.data.image_size:
        raise SystemExit(f"error: {p.data.prepared_dir}/train.npz holds {sets[0].X.shape[-1]} px images, not data.image_size = {p.data.image_size}")
    trainers = {n: Trainer(p.strategy(n), p.model, *sets) for n in names}
    print(f"data: {sets[0].X.shape[0]} characters x {sets[0].X.shape[1]} x {sets[0].X.shape[2]} px; model {p.model.arch}, "
          f"precision {p.train.precision}, triplets sampler: {p.train.batch_size} triplets a step")
    for t in trainers.values():  # trace every graph before timing
        for _ in range(3):
            float(t.train_step()[0])
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]
        for n in order:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                float(trainers[n].train_step()[0])
            times[n].append((time.perf_counter() - t0) / args.steps)
    if args.assignment:
        times["hard, per-triplet predict"] = [_assignment_step(trainers["hard"], args.assignment)]
    print(f"\nrepeats: {args.repeats} (median), steps per repeat: {args.steps}\n")
    print(f"{'strategy':28s} {'sampler':9s} {'miner':10s} {'s/step':>8s} {'min':>8s} {'max':>8s}")
    for n, ts in times.items():
        sampler, miner = (p.strategy(n).sampler, p.strategy(n).miner) if n in p.strategies else ("triplets", "hard")
        print(f"{n:28s} {sampler:9s} {miner:10s} {statistics.median(ts):8.4f} {min(ts):8.4f} {max(ts):8.4f}")
    med = {n: statistics.median(ts) for n, ts in times.items()}
    cells = {(p.strategy(n).sampler, p.strategy(n).miner): n for n in names}
    over = {}  # each strategy's step time over its sampler's random strategy's, measured side by side
    for sampler in ("triplets", "classes"):
        if (sampler, "hard") in cells and (sampler, "random") in cells:
            h, r = cells[sampler, "hard"], cells[sampler, "random"]
            over[h] = med[h] / med[r]
            print(f"hard/random step time, {sampler} sampler: {over[h]:.2f} ({h} / {r})")
    if "hard, per-triplet predict" in med and "random" in med:
        over["hard, per-triplet predict"] = med["hard, per-triplet predict"] / med["random"]
        print(f"assignment's per-triplet predict / random: {over['hard, per-triplet predict']:.1f}")
    if args.out:
        from benchmarks_out import write_table

        rows = [{"strategy": n, "s_per_step": round(m, 5), "min": round(min(times[n]), 5), "max": round(max(times[n]), 5),
                 "x_random_same_batches": round(over[n], 2) if n in over else None} for n, m in med.items()]
        write_table(args.out, rows, profile=args.profile or "default", repeats=args.repeats, steps=args.steps,
                    precision=p.train.precision, image_size=p.data.image_size)


def _assignment_step(trainer, steps: int) -> float:
    """The course's hard mining: per triplet, one predict on the anchor and the candidates."""
    import numpy as np

    X, model = trainer.X, trainer.embedding
    t0 = time.perf_counter()
    for _ in range(steps):
        pairs = trainer.sampler.pairs()
        negatives = []
        for ac, ad, nc in zip(pairs.anchor_cls, pairs.anchor_drawing, pairs.negative_cls):
            e = model.predict(np.concatenate([X[ac, ad][None], X[nc]])[..., None], verbose=0)
            negatives.append(int(np.argmin(((e[1:] - e[0]) ** 2).sum(1))))
        float(trainer._stepper(trainer.sampler.batch(pairs, np.array(negatives))))
    return (time.perf_counter() - t0) / steps


if __name__ == "__main__":
    main()

"""Benchmark: seconds per training step of the triplet selection strategies.

    python benchmarks/selection.py [--params params.yaml] [--repeats 5] [--steps 20]

At params.yaml's settings (model, batch size, precision; the ``hard`` strategy's
effective settings are shared by every mode so that only the selection differs), on
``<prepared_dir>/train.npz`` if present, else synthetic data of ``data.image_size``
with 800 characters x 20 drawings. Modes, timed side by side (interleaved, in a
rotating order, within every repeat) and reported as the median over repeats:

* ``random``       Trainer with RandomTriplets: ``strategy.sample()`` + the compiled step;
* ``hard exact``   HardTriplets, refresh_every=0: one batched forward pass per step mines;
* ``hard refresh`` HardTriplets mining from a table rebuilt every k steps (k from
                   params, 100 if it is 0); the table rebuild is timed on its own and
                   amortised over k steps;
* ``assignment``   the course's hard mining: per triplet, one ``model.predict`` on the
                   anchor and the 20 drawings of its negative class, then the same step;
                   slow, so it runs only ``--baseline-steps`` steps per repeat;
* ``bare step``    the compiled step alone, on one batch already in memory as tensors:
                   the floor that shows the input pipeline's overhead;
* ``random classes`` / ``hard classes``  the assignment's rules in class batches
                   (``train.batches: classes``): P classes x all their drawings a step,
                   every anchor-positive pair a triplet (losses.RandomClassTripletLoss).

The triplet modes use ``batch_size`` triplets whatever ``train.batches`` says; the
class modes use ``classes_per_batch``.

Warm-up calls trace every graph before timing. The last line printed is
``hard/random step time: X.XX`` for the batch form and hard mode params.yaml uses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tripletml.data import OmniglotSet, load_prepared  # noqa: E402
from tripletml.params import load_params  # noqa: E402

DEFAULT_REFRESH = 100


def load_sets(prepared_dir: Path, image_size: int) -> tuple[OmniglotSet, OmniglotSet, str]:
    """Prepared train/val sets if present, else synthetic ones of the same image size."""
    train_file, val_file = prepared_dir / "train.npz", prepared_dir / "val.npz"
    if train_file.is_file():
        train = load_prepared(train_file)
        val = load_prepared(val_file) if val_file.is_file() else train
        return train, val, f"prepared {train_file}: {train.X.shape[0]} characters x {train.X.shape[1]} x {train.X.shape[2]}px"

    def synthetic(n: int, seed: int) -> OmniglotSet:
        # Sparse ink like Omniglot; the values do not change the cost of a step.
        rng = np.random.default_rng(seed)
        X = (rng.random((n, 20, image_size, image_size), dtype=np.float32) < 0.15).astype(np.float32)
        return OmniglotSet(X, {"synthetic": (0, n)})

    return synthetic(800, 0), synthetic(100, 1), f"synthetic 800 characters x 20 x {image_size}px ({train_file} not found)"


def make_trainer(settings: dict, model_params: dict, train: OmniglotSet, val: OmniglotSet):
    from tripletml.training import Trainer

    return Trainer(settings, model_params, train, val)


def course_hard_sample(trainer) -> Callable:
    """The assignment's hard mining: one ``model.predict`` per triplet (anchor + 20 candidates)."""
    strategy, model = trainer.strategy, trainer.embedding

    def sample():
        anchor_cls, neg_cls, a_draw, p_draw = strategy._classes_and_drawings()
        n_draw = np.empty(len(anchor_cls), dtype=np.int64)
        for b in range(len(anchor_cls)):
            images = np.concatenate([strategy.X[anchor_cls[b], a_draw[b]][None], strategy.X[neg_cls[b]]])
            emb = model.predict(images[..., None], verbose=0)
            n_draw[b] = int(np.argmin(np.sum((emb[1:] - emb[0]) ** 2, axis=1)))
        return strategy._batch(anchor_cls, neg_cls, a_draw, p_draw, n_draw)

    return sample


def time_loop(step: Callable, steps: int) -> float:
    """Seconds per step of Trainer.run's inner loop (Trainer.train_step), then read the losses."""
    t0 = time.perf_counter()
    losses = [step() for _ in range(steps)]
    float(np.mean([float(v) for v in losses]))  # waits for the last step, as run() does
    return (time.perf_counter() - t0) / steps


def time_bare(stepper, x, y, steps: int) -> float:
    """Seconds per step of the compiled step alone, on tensors already in memory."""
    t0 = time.perf_counter()
    losses = [stepper._step(x, y)[0] for _ in range(steps)]
    float(np.mean([float(v) for v in losses]))
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode and repeat")
    ap.add_argument("--baseline-steps", type=int, default=2, help="steps per repeat of the slow assignment baseline")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.steps < 1 or args.baseline_steps < 1:
        ap.error("--repeats, --steps and --baseline-steps must be >= 1")

    params = load_params(args.params)
    train, val, source = load_sets(Path(params.data.prepared_dir), params.data.image_size)
    model_params = params.model.model_dump()
    base = params.strategy("hard")  # shared model, batch size, precision and augmentation
    params_batches = base["batches"]
    base.update(warmup_loops=0, n_way=min(base["n_way"], val.n_characters), val_tasks=1, batches="triplets")
    classes = {**base, "batches": "classes"}
    params_refresh = base["refresh_every"]
    k = params_refresh or DEFAULT_REFRESH

    import tensorflow as tf

    # One Trainer per mode: the same seed gives each the same model and initial weights.
    trainers = {
        "random": make_trainer({**base, "strategy": "random"}, model_params, train, val),
        "hard exact": make_trainer({**base, "refresh_every": 0}, model_params, train, val),
        "hard refresh": make_trainer({**base, "refresh_every": k}, model_params, train, val),
        "assignment": make_trainer({**base, "refresh_every": 0}, model_params, train, val),
        "random classes": make_trainer({**classes, "strategy": "random"}, model_params, train, val),
        "hard classes": make_trainer(classes, model_params, train, val),
    }
    course_sample = course_hard_sample(trainers["assignment"])
    steps_of = {name: (lambda t=t: t.train_step(t.strategy)[0]) for name, t in trainers.items()}
    a = trainers["assignment"]
    steps_of["assignment"] = lambda: a.train_step(a.strategy, course_sample())[0]
    stepper = trainers["random"]._steppers["triplets"]
    refresher = trainers["hard refresh"].strategy
    fixed = trainers["random"].strategy.sample()  # the bare step's one batch, kept as tensors
    fx, fy = tf.constant(fixed.x, tf.float32), tf.constant(fixed.y, tf.int32)

    # Warm-up: trace every graph (steps, embed, predict) and build the refresh table.
    for name in trainers:
        time_loop(steps_of[name], 1)
    time_bare(stepper, fx, fy, 1)

    modes = ["random", "bare step", "hard exact", "hard refresh", "assignment", "random classes", "hard classes"]
    times: dict[str, list[float]] = {m: [] for m in modes}
    refresh_times: list[float] = []
    for r in range(args.repeats):
        for m in modes[r % len(modes) :] + modes[: r % len(modes)]:  # rotate: no mode always runs first
            if m == "bare step":
                times[m].append(time_bare(stepper, fx, fy, args.steps))
            elif m == "hard refresh":
                t0 = time.perf_counter()
                refresher.refresh()
                refresh_times.append(time.perf_counter() - t0)
                refresher._steps = 1  # mid-period: the timed steps mine from the table just built
                refresh_every, refresher.refresh_every = refresher.refresh_every, 10**12
                steps_time = time_loop(steps_of[m], args.steps)
                refresher.refresh_every = refresh_every
                times[m].append(steps_time + refresh_times[-1] / k)  # the rebuild, amortised
            elif m == "assignment":
                times[m].append(time_loop(steps_of[m], args.baseline_steps))
            else:
                times[m].append(time_loop(steps_of[m], args.steps))

    med = {m: statistics.median(v) for m, v in times.items()}
    n_imgs = train.X.shape[0] * train.X.shape[1] * (4 if base["augment"]["rotations"] else 1)
    print(f"data: {source}")
    print(
        f"model: {model_params['arch']} (filters {model_params['filters']}, blocks {model_params['blocks']}, "
        f"embedding {model_params['embedding_dim']}), batch {base['batch_size']} triplets "
        f"(class batches: {classes['classes_per_batch']} classes x {train.X.shape[1]}), precision {base['precision']}"
    )
    print(f"repeats: {args.repeats} (median), steps per repeat: {args.steps} (assignment: {args.baseline_steps})")
    print()
    print(f"{'mode':<28}{'s/step':>10}{'min':>10}{'max':>10}{'x random':>10}")
    labels = {
        "random": "random (Trainer loop)",
        "bare step": "bare compiled step",
        "hard exact": "hard exact (refresh 0)",
        "hard refresh": f"hard refresh (every {k})",
        "assignment": "assignment (predict/triplet)",
        "random classes": "random, class batches",
        "hard classes": "hard, class batches",
    }
    for m in modes:
        v = times[m]
        print(f"{labels[m]:<28}{med[m]:>10.4f}{min(v):>10.4f}{max(v):>10.4f}{med[m] / med['random']:>10.2f}")
    print()
    print(
        f"hard refresh: table rebuild of {n_imgs} images takes {statistics.median(refresh_times):.3f} s "
        f"(median), {statistics.median(refresh_times) / k:.4f} s/step amortised over {k} steps"
    )
    overhead = 100.0 * (med["random"] - med["bare step"]) / med["bare step"]
    print(f"input pipeline overhead (random Trainer loop vs bare step): {overhead:+.1f}%")
    if params_batches == "classes":
        hard, random = "hard classes", "random classes"
    else:
        hard, random = ("hard refresh" if params_refresh else "hard exact"), "random"
    print(f"hard mode in {args.params}: {labels[hard]}")
    print(f"hard/random step time: {med[hard] / med[random]:.2f}")


if __name__ == "__main__":
    main()

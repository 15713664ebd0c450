"""Benchmark: vectorised one-shot evaluation vs the course's per-task way.

    python benchmarks/oneshot.py [--prepared data/prepared/test.npz] \
                                 [--model models/random/embedding.keras]

Both ways score the same 250 20-way tasks with the same model:

* vectorised: embed each distinct image the tasks use once (``embed_set`` with the
  library's compiled embed function), then score every task by indexing (``evaluate_tasks``);
* course: per task, two ``model.predict`` calls of N images each (query repeated N
  times, then the N support images), like ``model.predict([test_images, support_set])``.

Fallbacks (printed when taken): without the prepared file, a synthetic set of 100
characters x 20 drawings x 28x28 random images; without a loadable model, a freshly
initialised small conv net (4 x [Conv 64 3x3 same, BN, ReLU, MaxPool], Dense 128, L2
normalised) for the data's image size. Untrained weights cost exactly as much as trained
ones, so the timings are representative; the accuracies are not meaningful.

Both paths are warmed up first so graph tracing is not timed. The last line printed is
``speedup: XX.X``: the median course time over the median vectorised time, from
``--repeats`` side-by-side repeats (default 5). ``--out`` also writes both ways' figures as
CSV (``docs/benchmarks/oneshot.csv``, shown in docs/results.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from tripletml.course import evaluate_tasks_reference  # noqa: E402
from tripletml.oneshot import embed_set, evaluate_tasks, sample_tasks  # noqa: E402


def load_images(path: Path) -> tuple[np.ndarray, str]:
    """``X`` (n, 20, S, S) float32 in [0, 1] from a prepared npz, else a synthetic set."""
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            X = f["X"]
        X = X.astype(np.float32) / 255.0 if X.dtype == np.uint8 else X.astype(np.float32, copy=False)
        if X.ndim == 5:  # (n, 20, S, S, 1)
            X = X[..., 0]
        return np.ascontiguousarray(X), f"prepared {path}"
    rng = np.random.default_rng(0)
    X = (rng.random((100, 20, 28, 28), dtype=np.float32) < 0.15).astype(np.float32)
    return X, f"synthetic 100 x 20 x 28x28 ({path} not found)"


def small_model(size: int):
    """The library's default CPU network, untrained (same architecture as the default profile)."""
    from tripletml.models import build_embedding

    return build_embedding("convnet", size)


def load_model(path: Path, size: int):
    import keras

    if path.is_file():
        try:
            import tripletml.embedder  # noqa: F401  registers the library's custom layers
        except Exception:  # noqa: BLE001 - optional module
            pass
        try:
            return keras.saving.load_model(path, compile=False, safe_mode=False), f"loaded {path}"
        except Exception as e:  # noqa: BLE001 - fall back, but say why
            reason = f"could not load {path}: {type(e).__name__}: {e}"
    else:
        reason = f"{path} not found"
    return small_model(size), f"fresh small conv net ({reason})"


def predictor(model, batch_size: int):
    """embed(images (n, S, S)) -> (n, D) via model.predict, adding a channel axis if needed."""
    try:
        wants_channel = len(model.inputs[0].shape) == 4
    except (AttributeError, IndexError, TypeError):  # e.g. a reloaded, unbuilt Sequential
        wants_channel = True  # Keras convolutions need the channel axis

    def embed(images: np.ndarray) -> np.ndarray:
        x = images[..., None] if wants_channel and images.ndim == 3 else images
        return model.predict(x, batch_size=batch_size, verbose=0)

    return embed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared/test.npz"))
    ap.add_argument("--model", type=Path, default=Path("models/random/embedding.keras"))
    ap.add_argument("--tasks", type=int, default=250)
    ap.add_argument("--N", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each way; medians are reported")
    ap.add_argument("--out", help="also write the figures as CSV here (e.g. docs/benchmarks/oneshot.csv)")
    args = ap.parse_args()

    X, data_note = load_images(args.prepared)
    model, model_note = load_model(args.model, X.shape[-1])
    print(f"data:  {data_note}: X {X.shape}")
    print(f"model: {model_note}")

    tasks = sample_tasks(None, X.shape[0], args.N, args.tasks, args.seed, n_drawings=X.shape[1])
    n_used = len(tasks.used_pairs(X.shape[1]))
    from tripletml.embedder import make_embed_fn

    fast_embed = make_embed_fn(model, args.batch_size)  # what evaluation uses: one compiled graph
    course_embed = predictor(model, args.N)  # course: model.predict on the N-image arrays

    # Warm-up: trace predict for every batch shape either path will use.
    course_embed(X[0, : args.N])
    for n in {min(args.batch_size, n_used), n_used % args.batch_size} - {0}:
        fast_embed(X.reshape((-1,) + X.shape[2:])[:n])

    # Side by side in every repeat; the machine is noisy, so the figures are medians.
    t_fast, t_slow = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = evaluate_tasks(embed_set(fast_embed, X, args.batch_size, used=tasks), tasks)
        t_fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        slow = evaluate_tasks_reference(course_embed, X, tasks)
        t_slow.append(time.perf_counter() - t0)
    ratios = sorted(s / f for s, f in zip(t_slow, t_fast))
    t_fast, t_slow = statistics.median(t_fast), statistics.median(t_slow)
    print(f"tasks: {args.tasks} x {args.N}-way; images embedded: vectorised {n_used}, "
          f"course {2 * args.N * args.tasks} in {2 * args.tasks} predict calls")
    print(f"vectorised: {t_fast:8.3f} s   accuracy {100 * fast.mean():5.1f}%")
    print(f"course:     {t_slow:8.3f} s   accuracy {100 * slow.mean():5.1f}%")
    print(f"per-task agreement: {100 * np.mean(fast == slow):.1f}%")
    print(f"per-repeat speedups: {', '.join(f'{r:.1f}' for r in ratios)}")
    print(f"speedup: {t_slow / t_fast:.1f}")
    if args.out:
        from benchmarks_out import write_table

        rows = [{"way": "vectorised", "seconds": round(t_fast, 4), "images_embedded": n_used, "x_vectorised": 1.0,
                 "accuracy": round(100 * fast.mean(), 2)},
                {"way": "course (predict per task)", "seconds": round(t_slow, 4), "images_embedded": 2 * args.N * args.tasks,
                 "x_vectorised": round(t_slow / t_fast, 1), "accuracy": round(100 * slow.mean(), 2)}]
        write_table(args.out, rows, tasks=args.tasks, n_way=args.N, repeats=args.repeats, data=data_note, model=model_note)


if __name__ == "__main__":
    main()

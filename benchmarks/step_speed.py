"""Benchmark: seconds per training step of the default convnet under compute settings.

    python benchmarks/step_speed.py [--images 160] [--repeats 3] [--steps 30]
                                    [--arch convnet --size 28] [--settings bf16 float32 ...]

Times one compiled train step (forward, backward, Adam update) on ``--images`` random
28x28 images (160 = the default class batch of 8 x 20; 192 = a step of 64 triplets) for
each setting, each in its own process so that precision policies and TensorFlow's
threading do not leak between them:

* bf16: mixed_bfloat16 (the default, with the fused BatchNorm), graph mode
* bf16, Keras's BatchNorm: ``keras.layers.BatchNormalization`` in its place
* bf16, no BatchNorm: the four BatchNorm layers left out (a different network; shows their cost)
* float32: float32, graph mode
* bf16 + XLA: mixed_bfloat16, ``jit_compile=True``
* bf16, 1 inter-op thread: ``tf.config.threading.set_inter_op_parallelism_threads(1)``
* float32, oneDNN off: ``TF_ENABLE_ONEDNN_OPTS=0`` (Eigen's kernels, built into TensorFlow, in
  place of oneDNN's, which are chosen at run time by the CPU's features)

Prints the median of ``--repeats`` timings of ``--steps`` steps each, after a warm-up, and
with ``--out`` writes the table (with the machine it ran on) as CSV, e.g.
``docs/benchmarks/step_speed.csv``, which docs/results.md shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {
    "bf16": ({"precision": "mixed_bfloat16"}, {}),
    "bf16, Keras's BatchNorm": ({"precision": "mixed_bfloat16", "bn": "keras"}, {}),
    "bf16, no BatchNorm": ({"precision": "mixed_bfloat16", "bn": "none"}, {}),
    "float32": ({"precision": "float32"}, {}),
    "bf16 + XLA": ({"precision": "mixed_bfloat16", "jit": True}, {}),
    "bf16, 1 inter-op thread": ({"precision": "mixed_bfloat16", "inter_op": 1}, {}),
    "float32, oneDNN off": ({"precision": "float32"}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
}


def time_one(setting: dict, images: int, repeats: int, steps: int, arch: str = "convnet", size: int = 28) -> float:
    """Median seconds per step for one setting, in this process."""
    import numpy as np
    import tensorflow as tf

    if setting.get("inter_op"):
        tf.config.threading.set_inter_op_parallelism_threads(setting["inter_op"])
    import keras

    from tripletml import models

    if setting.get("bn"):  # swap the layer the builder makes for "bn" specs
        models.FusedBatchNormalization = (
            keras.layers.BatchNormalization if setting["bn"] == "keras" else lambda **kw: keras.layers.Identity(name=kw["name"])
        )
    keras.mixed_precision.set_global_policy(setting["precision"])
    options = dict(filters=64, blocks=4, pool_padding="same") if arch == "convnet" else {}
    model = models.build_embedding(arch, size, 128 if arch == "convnet" else None, **options)
    optimizer = keras.optimizers.Adam(1e-3)
    x = tf.constant(np.random.default_rng(0).random((images, size, size, 1), dtype=np.float32))

    @tf.function(jit_compile=bool(setting.get("jit")))
    def step(x):
        with tf.GradientTape() as tape:
            e = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(tf.square(e[: images // 2] - e[images // 2 :]))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(2 if size > 64 else 5):
        step(x).numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x).numpy()
        times.append((time.perf_counter() - t0) / steps)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--arch", default="convnet", help="a network of tripletml.architectures (default convnet)")
    ap.add_argument("--size", type=int, default=28, help="image size in pixels (default 28)")
    ap.add_argument("--settings", nargs="*", help=f"a subset of: {', '.join(SETTINGS)}")
    ap.add_argument("--out", help="also write the table as CSV here (e.g. docs/benchmarks/step_speed.csv)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: time one setting and print JSON
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(time_one(json.loads(args.one), args.images, args.repeats, args.steps, args.arch, args.size)))
        return
    base, rows = None, []
    print(f"{'setting':28s} {'s/step':>8s} {'x bf16':>7s}")
    for name in args.settings or SETTINGS:
        setting, env = SETTINGS[name]
        cmd = [sys.executable, __file__, "--images", str(args.images), "--repeats", str(args.repeats), "--steps", str(args.steps),
               "--arch", args.arch, "--size", str(args.size), "--one", json.dumps(setting)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}  # tripletml: pip-installed
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.strip().splitlines()[-1]
        seconds = float(out)
        base = base or seconds
        print(f"{name:28s} {seconds:8.4f} {seconds / base:7.2f}", flush=True)
        rows.append({"setting": name, "s_per_step": round(seconds, 5), "x_first": round(seconds / base, 2)})
    if args.out:
        from benchmarks_out import write_table

        write_table(args.out, rows, images=args.images, repeats=args.repeats, steps=args.steps, arch=args.arch, size=args.size)


if __name__ == "__main__":
    main()

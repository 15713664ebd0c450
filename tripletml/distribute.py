"""Training on several devices or workers with ``tf.distribute`` (``train.distribute``).

* ``none``: one device, no strategy.
* ``mirrored``: ``MirroredStrategy`` over every local GPU, or, on a machine without
  one, over ``cpu_replicas`` logical CPU devices (useful to test, rarely faster).
* ``multi_worker``: ``MultiWorkerMirroredStrategy``; the cluster and this process's
  place in it come from the standard ``TF_CONFIG`` variable.

How batches meet replicas: every worker draws the *same global batch* from the same
seeded generator (selection, hard mining included, runs unchanged and identically on
every worker, from the same weights), and replica ``r`` of ``R`` trains on the r-th
contiguous slice of it: whole triplets for triplet batches, whole classes of a P x K
batch for class batches (with the rows of the batch's random draws). In-batch miners therefore mine inside each replica's
P/R classes (per-device P x K batches, as in Hermans et al.), with no gather of
embeddings before the loss; gradients are summed across replicas with the loss scaled
by 1/R, so one step equals a single-device step on the global batch, and BatchNorm is
synchronised so its statistics are the global batch's too.

Keras 3's ``model.fit`` under ``MultiWorkerMirroredStrategy`` fails on this stack
(keras-team/keras#20585), so training uses its own step run with ``strategy.run``,
with the optimizer built inside ``strategy.scope()`` before the first step.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

KINDS = ("none", "mirrored", "multi_worker")


def make_distribution(kind: str, cpu_replicas: int = 2) -> tf.distribute.Strategy | None:
    """The ``tf.distribute`` strategy for ``kind``; create it before any other TensorFlow work."""
    if kind == "none":
        return None
    if kind == "mirrored":
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        cpu = tf.config.list_physical_devices("CPU")[0]
        if len(tf.config.get_logical_device_configuration(cpu) or []) != cpu_replicas:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)])
    if kind == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("train.distribute = 'multi_worker' needs the TF_CONFIG environment variable (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown train.distribute {kind!r}; valid: {', '.join(KINDS)}")


def is_chief(env: dict[str, str] | None = None) -> bool:
    """Whether this process writes outputs: no cluster, the ``chief`` task, or worker 0 without one."""
    raw = (os.environ if env is None else env).get("TF_CONFIG")
    if not raw:
        return True
    config = json.loads(raw)
    task = config.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if "chief" in config.get("cluster", {}):
        return kind == "chief"
    return kind == "worker" and index == 0


def replicas(distribution: tf.distribute.Strategy | None) -> int:
    return 1 if distribution is None else int(distribution.num_replicas_in_sync)


def split_batch(distribution: tf.distribute.Strategy, *arrays: np.ndarray):
    """Per-replica values: replica r of R gets the r-th contiguous 1/R of every array's rows."""
    n_rep = replicas(distribution)
    rows = len(arrays[0])
    if rows % n_rep:
        raise ValueError(f"a batch of {rows} rows does not split into {n_rep} equal replica batches")
    share = rows // n_rep

    def local(ctx: tf.distribute.experimental.ValueContext):
        r = ctx.replica_id_in_sync_group
        return tuple(tf.constant(a[r * share : (r + 1) * share]) for a in arrays)

    return distribution.experimental_distribute_values_from_function(local)

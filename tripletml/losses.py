"""The triplet margin loss over mined index tuples, and a collapse check.

One loss, one call shape (pytorch-metric-learning's): ``loss(embeddings, (a, p, n))``,
where the index tuple comes from a miner (:mod:`tripletml.miners`) and a reducer says how
the per-triplet values become the batch's loss: ``mean`` (the assignment's batch mean)
or ``mean_nonzero`` (the mean over triplets with a non-zero loss, Hermans et al.'s
"batch all +"). Each triplet's value is ``max(d(a,p) - d(a,n) + margin, 0)``, or the
soft-margin ``softplus(d(a,p) - d(a,n))`` (Hermans et al. 2017) with ``soft=True``.

:class:`TripletLoss` is the same loss as a Keras loss on the 3-branch network's
``concat(anchor, positive, negative)`` output, for ``model.compile``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tripletml.distances import _as_float_tensor, check_distance, paired_distances, pairwise_distances

REDUCERS = ("mean", "mean_nonzero")


def _check_margin(margin: float) -> float:
    margin = float(margin)
    if not (margin >= 0.0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    return margin


class TripletMarginLoss:
    """``loss(embeddings, (a, p, n)) -> scalar``; :meth:`compute` adds mining statistics."""

    def __init__(self, margin: float = 0.2, soft: bool = False, distance: str = "sqeuclidean", reducer: str = "mean"):
        if reducer not in REDUCERS:
            raise ValueError(f"reducer must be one of {', '.join(REDUCERS)}, got {reducer!r}")
        self.margin, self.soft = _check_margin(margin), bool(soft)
        self.distance, self.reducer = check_distance(distance), reducer

    def _values(self, diff: tf.Tensor) -> tf.Tensor:
        return tf.nn.softplus(diff) if self.soft else tf.nn.relu(diff + tf.cast(self.margin, diff.dtype))

    def per_triplet(self, anchor, positive, negative) -> tf.Tensor:
        """Per-triplet values of three (T, D) arrays of embeddings: (T,)."""
        return self._values(paired_distances(anchor, positive, self.distance) - paired_distances(anchor, negative, self.distance))

    def compute(self, embeddings, indices) -> dict[str, tf.Tensor]:
        """``loss``, ``fraction_active`` (share of triplets with a non-zero loss) and ``triplets``.

        No triplet gives a loss of 0 with a zero gradient.
        """
        # One (n, n) distance matrix, then a scalar gather per triplet: batch-all's thousands of
        # triplets cost no more than a handful, and every distance's gradient flows through it.
        d = pairwise_distances(_as_float_tensor(embeddings), kind=self.distance)
        a, p, n = (tf.cast(i, tf.int32) for i in indices)
        values = self._values(tf.gather_nd(d, tf.stack([a, p], 1)) - tf.gather_nd(d, tf.stack([a, n], 1)))
        active = tf.cast(values > 0, values.dtype)
        count = tf.reduce_sum(active) if self.reducer == "mean_nonzero" else tf.cast(tf.size(values), values.dtype)
        return {
            "loss": tf.math.divide_no_nan(tf.reduce_sum(values), count),
            "fraction_active": tf.math.divide_no_nan(tf.reduce_sum(active), tf.cast(tf.size(values), values.dtype)),
            "triplets": tf.size(values),
        }

    def __call__(self, embeddings, indices) -> tf.Tensor:
        return self.compute(embeddings, indices)["loss"]

    def get_config(self) -> dict:
        return {"margin": self.margin, "soft": self.soft, "distance": self.distance, "reducer": self.reducer}

    def __repr__(self) -> str:
        return f"TripletMarginLoss({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


@keras.saving.register_keras_serializable(package="tripletml")
class TripletLoss(keras.losses.Loss):
    """:class:`TripletMarginLoss` on the 3-branch network's output, as a Keras loss.

    ``y_pred`` is (batch, 3*D) = concat(anchor, positive, negative); ``y_true`` is ignored
    (pass zeros to ``fit``). Keras's own reduction takes the batch mean.
    """

    def __init__(self, margin: float = 0.2, soft: bool = False, distance: str = "sqeuclidean", name: str = "triplet_loss", reduction: str = "sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.triplet = TripletMarginLoss(margin, soft, distance)
        self.margin, self.soft, self.distance = self.triplet.margin, self.triplet.soft, self.triplet.distance

    def call(self, y_true, y_pred):
        del y_true  # the triplet structure is in y_pred
        return self.triplet.per_triplet(*tf.split(y_pred, 3, axis=-1))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(margin=self.margin, soft=self.soft, distance=self.distance)
        return config


# --------------------------------------------------------------------------------
# Collapse check.


def collapse_reason(
    embeddings,
    loss: float | None = None,
    margin: float | None = None,
    tol: float = 1e-4,
    stuck_tol: float = 1e-2,
    loss_tol: float = 1e-3,
    soft: bool = False,
) -> str | None:
    """Why the embeddings look collapsed, or None if they don't.

    The spread is the RMS distance of the embeddings to their centroid relative to
    their RMS norm (scale-free; about 1 for random unit vectors, 0 when every row is
    the same point). Collapsed when

    * an embedding is NaN/inf, or all embeddings are (numerically) zero;
    * the spread is below ``tol``; or
    * the loss is stuck at the margin (``|loss - margin| < loss_tol``), which is
      what d_ap = d_an gives, and the spread is below the looser ``stuck_tol``.
      With ``soft=True`` the stuck value is softplus(0) = ln 2 (margin unused).

    Random unit vectors (and random-init convnet/schroff embeddings) have spreads
    of 0.3-1. The sigmoid-headed archs (hoffer, custom) *start* in the stuck regime
    (spread ~1e-3, loss = margin), so check them after some training, not at init.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x.reshape(len(x), -1)
    if len(x) < 2:
        return None  # nothing to compare
    if not np.all(np.isfinite(x)):
        return "non-finite embeddings"
    scale = np.sqrt(np.mean(np.sum(x * x, axis=1)))
    if scale < 1e-12:
        return "all embeddings are zero"
    spread = np.sqrt(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1))) / scale
    if spread < tol:
        return f"all embeddings within {spread:.2e} (relative) of one point"
    stuck_at = math.log(2.0) if soft else margin
    if (
        loss is not None
        and stuck_at is not None
        and abs(float(loss) - float(stuck_at)) < loss_tol
        and spread < stuck_tol
    ):
        what = "softplus(0) = ln 2" if soft else "the margin"
        return (
            f"loss {float(loss):.4g} stuck at {what} {float(stuck_at):.4g} "
            f"with relative spread {spread:.2e}"
        )
    return None

"""Triplet losses and a collapse check.

Two call shapes:

* The course assignment's loss, :class:`TripletLoss`, a Keras loss on the output of
  :func:`tripletml.models.build_triplet_network`: ``y_pred`` is (batch, 3*D) =
  concat(anchor, positive, negative); ``y_true`` is ignored.
* Batch (online-mining) losses, in the style of pytorch-metric-learning:
  ``loss(embeddings, labels) -> scalar``. Each mines its triplets inside the batch
  from ONE pairwise distance matrix and boolean masks (no Python loops), so the
  (a, p, n) cube costs O(batch^3) memory: fine for batches of a few hundred.

Every loss has a hinge form ``max(d_ap - d_an + margin, 0)`` and a soft-margin form
``softplus(d_ap - d_an)`` (Hermans et al. 2017), selected by ``soft=True``; the
margin is ignored in the soft form.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from tripletml.distances import (
    _as_float_tensor,
    check_distance,
    paired_distances,
    pairwise_distances,
)


def _hinge(diff: tf.Tensor, margin: float, soft: bool) -> tf.Tensor:
    """Per-triplet loss from diff = d_ap - d_an."""
    if soft:
        return tf.nn.softplus(diff)
    return tf.nn.relu(diff + tf.cast(margin, diff.dtype))


def _check_margin(margin: float) -> float:
    margin = float(margin)
    if not (margin >= 0.0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    return margin


def triplet_margin_loss(
    anchor,
    positive,
    negative,
    margin: float = 0.2,
    soft: bool = False,
    distance: str = "sqeuclidean",
    reduction: str = "mean",
) -> tf.Tensor:
    """Loss of explicit triplets: rows of three (n, D) arrays.

    ``max(d(a,p) - d(a,n) + margin, 0)`` (or ``softplus(d(a,p) - d(a,n))`` if
    ``soft``) per row; ``reduction="mean"`` gives a scalar, ``"none"`` the (n,)
    per-triplet values.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    margin = _check_margin(margin)
    d_ap = paired_distances(anchor, positive, distance)
    d_an = paired_distances(anchor, negative, distance)
    per = _hinge(d_ap - d_an, margin, soft)
    return per if reduction == "none" else tf.reduce_mean(per)


@keras.saving.register_keras_serializable(package="tripletml")
class TripletLoss(keras.losses.Loss):
    """The assignment's loss on concat(anchor, positive, negative) embeddings.

    ``y_pred`` is (batch, 3*D); the loss is the batch mean of
    ``max(|a-p|^2 - |a-n|^2 + margin, 0)`` (squared L2 by default). ``y_true`` is
    ignored (pass zeros to ``fit``).
    """

    def __init__(
        self,
        margin: float = 0.2,
        soft: bool = False,
        distance: str = "sqeuclidean",
        name: str = "triplet_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.margin = _check_margin(margin)
        self.soft = bool(soft)
        self.distance = check_distance(distance)

    def call(self, y_true, y_pred):
        del y_true  # triplet structure is in y_pred
        anchor, positive, negative = tf.split(y_pred, 3, axis=-1)
        return triplet_margin_loss(
            anchor, positive, negative, self.margin, self.soft, self.distance, "none"
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(margin=self.margin, soft=self.soft, distance=self.distance)
        return config


# --------------------------------------------------------------------------------
# Batch losses: loss(embeddings, labels) -> scalar.


def _label_masks(labels, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(positive, negative) (n, n) bool masks: same label and a != p; other label."""
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    same = tf.equal(labels[:, None], labels[None, :])
    not_self = tf.logical_not(tf.eye(n, dtype=tf.bool))
    return tf.logical_and(same, not_self), tf.logical_not(same)


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` where ``mask``; 0 (with zero gradient) where mask is empty."""
    total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))
    count = tf.reduce_sum(tf.cast(mask, values.dtype))
    return tf.math.divide_no_nan(total, count)


def _fraction(mask: tf.Tensor, of: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(
        tf.reduce_sum(tf.cast(mask, tf.float32)), tf.reduce_sum(tf.cast(of, tf.float32))
    )


class BatchTripletLoss:
    """Base of the batch losses: ``loss(embeddings, labels) -> scalar tensor``.

    ``compute`` returns the loss together with mining statistics (as tensors):
    ``loss``, ``fraction_active`` (of the valid triplets / anchors / pairs the loss
    averages over, the share with a non-zero loss) and ``num_valid``.
    """

    name: str = ""

    def __init__(self, margin: float = 0.2, soft: bool = False, distance: str = "sqeuclidean"):
        self.margin = _check_margin(margin)
        self.soft = bool(soft)
        self.distance = check_distance(distance)

    def __call__(self, embeddings, labels) -> tf.Tensor:
        return self.compute(embeddings, labels)["loss"]

    def compute(self, embeddings, labels) -> dict[str, tf.Tensor]:
        x = _as_float_tensor(embeddings)
        d = pairwise_distances(x, kind=self.distance)
        pos, neg = _label_masks(labels, tf.shape(x)[0])
        return self._from_distances(d, pos, neg)

    def _from_distances(self, d, pos, neg) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"margin": self.margin, "soft": self.soft, "distance": self.distance}

    @classmethod
    def from_config(cls, config: dict) -> "BatchTripletLoss":
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class BatchAllTripletLoss(BatchTripletLoss):
    """All valid triplets of the batch, averaged over the *active* ones (BA+).

    Valid: a != p with the same label, n with a different label. Averaging only
    over triplets with loss > 0 (Hermans et al. 2017, "batch all +") keeps the
    gradient from vanishing as easy triplets pile up. 0 if no triplet is active.
    In the soft form every valid triplet is active (softplus > 0).
    """

    name = "batch_all"

    def _from_distances(self, d, pos, neg):
        valid = tf.logical_and(pos[:, :, None], neg[:, None, :])  # [a, p, n]
        losses = _hinge(d[:, :, None] - d[:, None, :], self.margin, self.soft)
        active = tf.logical_and(valid, losses > 0)
        return {
            "loss": _masked_mean(losses, active),
            "fraction_active": _fraction(active, valid),
            "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32)),
        }


class BatchHardTripletLoss(BatchTripletLoss):
    """Per anchor, its hardest positive (largest d) and hardest negative (smallest d).

    Averaged over anchors that have at least one positive and one negative.
    """

    name = "batch_hard"

    def _from_distances(self, d, pos, neg):
        # Finite fill values (not +-inf) so masked-out entries can't make inf - inf.
        big = tf.stop_gradient(tf.reduce_max(d)) + 1.0
        hardest_pos = tf.reduce_max(tf.where(pos, d, -big), axis=1)
        hardest_neg = tf.reduce_min(tf.where(neg, d, big), axis=1)
        valid = tf.logical_and(tf.reduce_any(pos, axis=1), tf.reduce_any(neg, axis=1))
        losses = _hinge(hardest_pos - hardest_neg, self.margin, self.soft)
        return {
            "loss": _masked_mean(losses, valid),
            "fraction_active": _fraction(tf.logical_and(valid, losses > 0), valid),
            "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32)),
        }


class SemiHardTripletLoss(BatchTripletLoss):
    """FaceNet semi-hard mining (Schroff et al. 2015), averaged over positive pairs.

    For each valid (a, p) pair the negative is the closest one *farther* than the
    positive, d(a,n) > d(a,p). If there is none, we follow tfa's
    ``triplet_semihard_loss`` and take the anchor's negative with the largest
    d(a,n): the easiest of the (all too hard) negatives, which gives the mildest
    gradient instead of pushing on the hardest, possibly mislabelled, one. Pairs
    whose anchor has no negative in the batch are skipped.
    """

    name = "semi_hard"

    def _from_distances(self, d, pos, neg):
        big = tf.stop_gradient(tf.reduce_max(d)) + 1.0
        d_ap = d[:, :, None]  # [a, p, 1]
        d_an = d[:, None, :]  # [a, 1, n]; tf.where and > broadcast to [a, p, n]
        farther = tf.logical_and(neg[:, None, :], d_an > d_ap)  # [a, p, n]
        has_farther = tf.reduce_any(farther, axis=2)
        closest_farther = tf.reduce_min(tf.where(farther, d_an, big), axis=2)
        easiest = tf.reduce_max(tf.where(neg, d, -big), axis=1, keepdims=True)  # [a, 1]
        d_neg = tf.where(has_farther, closest_farther, easiest)
        valid = tf.logical_and(pos, tf.reduce_any(neg, axis=1, keepdims=True))
        losses = _hinge(d - d_neg, self.margin, self.soft)
        return {
            "loss": _masked_mean(losses, valid),
            "fraction_active": _fraction(tf.logical_and(valid, losses > 0), valid),
            "fraction_semihard": _fraction(tf.logical_and(valid, has_farther), valid),
            "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32)),
        }


LOSSES: dict[str, type[BatchTripletLoss]] = {
    cls.name: cls for cls in (BatchAllTripletLoss, BatchHardTripletLoss, SemiHardTripletLoss)
}


def get_loss(name: str, **kwargs) -> BatchTripletLoss:
    """Batch loss by name ("batch_all", "batch_hard", "semi_hard"), e.g.
    ``get_loss("batch_hard", margin=0.5, distance="euclidean")``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)


@keras.saving.register_keras_serializable(package="tripletml")
class KerasBatchTripletLoss(keras.losses.Loss):
    """A batch loss as a Keras loss, for ``embedding_model.fit(images, labels)``.

    Keras passes ``(y_true, y_pred)`` = (labels, embeddings); the whole batch is
    one mining pool, so the result is already the batch's scalar loss.
    """

    def __init__(
        self,
        loss: str = "batch_hard",
        margin: float = 0.2,
        soft: bool = False,
        distance: str = "sqeuclidean",
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name or loss, reduction=reduction, dtype=dtype)
        self.batch_loss = get_loss(loss, margin=margin, soft=soft, distance=distance)

    def call(self, y_true, y_pred):
        return self.batch_loss(y_pred, tf.reshape(y_true, [-1]))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(loss=self.batch_loss.name, **self.batch_loss.get_config())
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


def is_collapsed(
    embeddings,
    loss: float | None = None,
    margin: float | None = None,
    tol: float = 1e-4,
    stuck_tol: float = 1e-2,
    loss_tol: float = 1e-3,
    soft: bool = False,
) -> bool:
    """True when the embeddings have collapsed; see :func:`collapse_reason`."""
    reason = collapse_reason(embeddings, loss, margin, tol, stuck_tol, loss_tol, soft)
    return reason is not None

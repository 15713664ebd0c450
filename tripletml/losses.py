"""Triplet losses and a collapse check.

Two call shapes:

* The course assignment's loss, :class:`TripletLoss`, a Keras loss on the output of
  :func:`tripletml.models.build_triplet_network`: ``y_pred`` is (batch, 3*D) =
  concat(anchor, positive, negative); ``y_true`` is ignored.
* Batch (online-mining) losses, in the style of pytorch-metric-learning:
  ``loss(embeddings, labels) -> scalar``. Each mines its triplets inside the batch
  from ONE pairwise distance matrix and boolean masks (no Python loops); batch-all and
  semi-hard build the (a, p, n) cube, O(batch^3) memory: fine for batches of a few
  hundred. The assignment's random and hard rules in a batch take the random numbers
  of their choices as a third argument, ``loss(embeddings, labels, draws)``, and need
  only O(batch^2).

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


class RandomClassTripletLoss(BatchTripletLoss):
    """The assignment's triplets inside a batch: every anchor-positive pair of the batch,
    with its negative taken from one random *other class of the batch*.

    Subclasses say which drawing of that class: :class:`InBatchRandomTripletLoss` a
    random one (the assignment's random triplets), :class:`InBatchHardTripletLoss` the
    one nearest the anchor (its hard triplets). The batch's classes are a uniform
    sample, so the negative class is a uniformly random other class, as in the
    assignment; with every drawing of each class in the batch, "nearest" is the
    nearest of all the class's drawings, as the assignment mines it, under the
    network of this very step. Each image is embedded once however many triplets
    use it: a batch of P classes x K drawings holds P*K*(K-1) triplets.

    ``draws`` (optional) are the random numbers in [0, 1): shape (n, m, 2), where
    ``draws[a, r, 0]`` picks the negative class of anchor ``a``'s r-th positive (in
    batch order; m >= the largest class count - 1) and ``draws[a, r, 1]`` the
    drawing (random rule only). Training passes them from the strategy's seeded
    NumPy generator, so runs repeat and resume exactly; without them they are drawn
    with ``tf.random``. The loss is the mean over all anchor-positive pairs that
    have another class in the batch, like the assignment's batch mean.
    """

    def compute(self, embeddings, labels, draws=None) -> dict[str, tf.Tensor]:
        x = _as_float_tensor(embeddings)
        d = pairwise_distances(x, kind=self.distance)
        labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
        n = tf.shape(x)[0]
        pos, _ = _label_masks(labels, n)
        classes, cls_of = tf.unique(labels)  # cls_of: each image's class as 0..C-1
        n_cls = tf.shape(classes)[0]
        # Rank of each positive among its anchor's positives selects the anchor's draw.
        rank = tf.cumsum(tf.cast(pos, tf.int32), axis=1) - 1
        if draws is None:
            u = tf.random.uniform(tf.stack([n, n, 2]), dtype=d.dtype)
        else:
            draws = tf.cast(draws, d.dtype)
            # Every anchor needs a draw per positive (a too-narrow array would gather zeros on GPUs).
            tf.debugging.assert_greater_equal(
                tf.shape(draws)[1], tf.reduce_max(tf.reduce_sum(tf.cast(pos, tf.int32), axis=1)),
                message="draws must hold a pair of numbers for each positive of every anchor",
            )
            u = tf.gather(draws, tf.maximum(rank, 0), axis=1, batch_dims=1)  # (n, n, 2)
        # A uniformly random class among the C - 1 others: 0..C-2, skipping the anchor's own.
        others = tf.cast(tf.maximum(n_cls - 1, 1), d.dtype)
        pick = tf.minimum(tf.cast(tf.floor(u[..., 0] * others), tf.int32), tf.maximum(n_cls - 2, 0))
        neg_cls = pick + tf.cast(pick >= cls_of[:, None], tf.int32)  # (n, n): class of each pair's negative
        neg_cls = tf.minimum(neg_cls, n_cls - 1)  # one-class batches: no valid pair, but keep indices in range
        d_an = self._negative_distance(d, cls_of, n_cls, neg_cls, u[..., 1])
        valid = tf.logical_and(pos, n_cls > 1)
        losses = _hinge(d - d_an, self.margin, self.soft)
        return {
            "loss": _masked_mean(losses, valid),
            "fraction_active": _fraction(tf.logical_and(valid, losses > 0), valid),
            "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32)),
        }

    def __call__(self, embeddings, labels, draws=None) -> tf.Tensor:
        return self.compute(embeddings, labels, draws)["loss"]

    def _negative_distance(self, d, cls_of, n_cls, neg_cls, u) -> tf.Tensor:
        """d(anchor, negative) for every pair: (n, n)."""
        raise NotImplementedError


class InBatchHardTripletLoss(RandomClassTripletLoss):
    """The assignment's hard triplets in a batch: the negative class's drawing nearest the anchor."""

    name = "hard"

    def _negative_distance(self, d, cls_of, n_cls, neg_cls, u):
        nearest = tf.transpose(tf.math.unsorted_segment_min(tf.transpose(d), cls_of, n_cls))  # (n, C)
        return tf.gather(nearest, neg_cls, batch_dims=1)


class InBatchRandomTripletLoss(RandomClassTripletLoss):
    """The assignment's random triplets in a batch: a random drawing of the negative class."""

    name = "random"

    def _negative_distance(self, d, cls_of, n_cls, neg_cls, u):
        n = tf.shape(d)[0]
        same = tf.equal(cls_of[:, None], cls_of[None, :])
        earlier = tf.linalg.band_part(tf.ones((n, n), tf.int32), -1, 0) - tf.eye(n, dtype=tf.int32)  # i > j
        slot = tf.reduce_sum(tf.cast(same, tf.int32) * earlier, axis=1)  # each image's place in its class
        members = tf.scatter_nd(tf.stack([cls_of, slot], axis=1), tf.range(n), tf.stack([n_cls, n]))  # (C, n)
        count = tf.math.bincount(cls_of, minlength=n_cls, maxlength=n_cls)
        k = tf.gather(count, neg_cls)
        which = tf.minimum(tf.cast(tf.floor(u * tf.cast(k, u.dtype)), tf.int32), k - 1)
        j = tf.gather_nd(members, tf.stack([neg_cls, which], axis=-1))  # (n, n): the negative image
        return tf.gather(d, j, batch_dims=1)


LOSSES: dict[str, type[BatchTripletLoss]] = {
    cls.name: cls
    for cls in (BatchAllTripletLoss, BatchHardTripletLoss, SemiHardTripletLoss, InBatchRandomTripletLoss, InBatchHardTripletLoss)
}


def get_loss(name: str, **kwargs) -> BatchTripletLoss:
    """Batch loss by name ("batch_all", "batch_hard", "semi_hard", and the assignment's
    "random" and "hard" rules inside a batch), e.g.
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

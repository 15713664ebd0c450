"""Miners: which triplets of a batch the loss trains on.

Two call shapes, as in pytorch-metric-learning, all returning batch indices (no Python
loops, no gradients through the choice):

* Negative miners, for the assignment's rules: each anchor-positive pair already has a
  negative *class* (drawn by the sampler); the miner picks which of its candidate
  drawings is the negative: ``miner(embeddings, anchors, candidates, u) -> negatives``.
  ``random``: a uniformly random one (``u`` in [0, 1) picks it); ``hard``: the one nearest
  the anchor. The same two rules serve both samplers: the triplet sampler's candidates
  are the negative class's drawings in the training set, the class sampler's are its
  drawings in the batch (:func:`pairs_with_negative_class`).
* Online miners, inside a P x K batch: ``miner(embeddings, labels) -> (a, p, n)``:
  ``batch_all`` (every valid triplet), ``batch_hard`` (per anchor its farthest positive
  and nearest negative), ``semi_hard`` (per pair the nearest negative farther than the
  positive, FaceNet's rule).
"""

from __future__ import annotations

import tensorflow as tf

from tripletml.distances import _as_float_tensor, check_distance, pairwise_distances

NEGATIVE_MINERS = ("random", "hard")
ONLINE_MINERS = ("batch_all", "batch_hard", "semi_hard")
MINERS = NEGATIVE_MINERS + ONLINE_MINERS


def pairs_with_negative_class(labels, draws) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Every anchor-positive pair of a class batch, with a random other class of the batch.

    ``labels`` (n,): every class of the batch must hold the same number K of images (the
    class sampler's P x K). ``draws`` (n, >= K-1, 2): pair number r of anchor a (its
    positives in batch order) uses ``draws[a, r]``: ``[0]`` picks one of the batch's
    other classes uniformly, ``[1]`` is the random miner's ``u``. Returns (anchors,
    positives, candidates, u): (pairs,), (pairs,), (pairs, K) batch indices of the
    negative class's images in batch order, (pairs,). Pairs are in row-major order.
    """
    labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
    draws = tf.cast(draws, tf.float32)
    n = tf.shape(labels)[0]
    _, cls_of = tf.unique(labels)  # classes numbered by first appearance
    n_cls = tf.reduce_max(cls_of) + 1
    same = tf.equal(cls_of[:, None], cls_of[None, :])
    pos = tf.logical_and(tf.logical_and(same, tf.logical_not(tf.eye(n, dtype=tf.bool))), n_cls > 1)
    ap = tf.cast(tf.where(pos), tf.int32)
    anchors, positives = ap[:, 0], ap[:, 1]
    rank = tf.gather_nd(tf.cumsum(tf.cast(pos, tf.int32), axis=1) - 1, ap)  # which positive of its anchor
    u = tf.gather_nd(draws, tf.stack([anchors, rank], axis=1))  # (pairs, 2)
    # A uniformly random class among the C - 1 others: 0..C-2, skipping the anchor's own.
    others = tf.maximum(n_cls - 1, 1)
    pick = tf.minimum(tf.cast(tf.floor(u[:, 0] * tf.cast(others, u.dtype)), tf.int32), others - 1)
    neg_cls = pick + tf.cast(pick >= tf.gather(cls_of, anchors), tf.int32)
    members = tf.reshape(tf.argsort(cls_of, stable=True), tf.stack([n_cls, n // n_cls]))  # (C, K), batch order
    return anchors, positives, tf.gather(members, neg_cls), u[:, 1]


class RandomNegativeMiner:
    """The assignment's random triplets: a uniformly random drawing of the negative class."""

    name = "random"
    needs_embeddings = False

    def __init__(self, distance: str = "sqeuclidean"):
        self.distance = check_distance(distance)

    def __call__(self, embeddings, anchors, candidates, u) -> tf.Tensor:
        del embeddings, anchors  # the choice ignores the network
        candidates = tf.convert_to_tensor(candidates)
        k = tf.shape(candidates)[1]
        u = tf.cast(u, tf.float32)  # float32 everywhere, so an eager pick equals the compiled step's
        col = tf.minimum(tf.cast(tf.floor(u * tf.cast(k, tf.float32)), tf.int32), k - 1)
        return tf.gather(candidates, col, batch_dims=1)


class HardNegativeMiner:
    """The assignment's hard triplets: the drawing of the negative class nearest the anchor.

    The caller passes embeddings of the network as it is at this step, in inference mode
    (the assignment's ``model.predict``); ties go to the first candidate.
    """

    name = "hard"
    needs_embeddings = True

    def __init__(self, distance: str = "sqeuclidean"):
        self.distance = check_distance(distance)

    def __call__(self, embeddings, anchors, candidates, u=None) -> tf.Tensor:
        del u
        d = tf.stop_gradient(pairwise_distances(embeddings, kind=self.distance))  # one (n, n) matrix
        d_ac = tf.gather(tf.gather(d, anchors), candidates, batch_dims=1)  # (pairs, K)
        col = tf.argmin(d_ac, axis=1, output_type=tf.int32)
        return tf.gather(candidates, col, batch_dims=1)


class OnlineMiner:
    """Base of the in-batch miners: ``miner(embeddings, labels) -> (a, p, n)``."""

    name = ""
    reducer = "mean"

    def __init__(self, distance: str = "sqeuclidean"):
        self.distance = check_distance(distance)

    def __call__(self, embeddings, labels) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        x = _as_float_tensor(embeddings)
        labels = tf.reshape(tf.convert_to_tensor(labels), [-1])
        same = tf.equal(labels[:, None], labels[None, :])
        pos = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
        d = tf.stop_gradient(pairwise_distances(x, kind=self.distance))
        return self._mine(d, pos, tf.logical_not(same))

    def _mine(self, d, pos, neg):
        raise NotImplementedError


class BatchAllMiner(OnlineMiner):
    """Every valid triplet: a != p of one class, n of another. Averaged over the active
    (non-zero) ones, Hermans et al.'s "batch all +", so easy triplets don't dilute the gradient."""

    name = "batch_all"
    reducer = "mean_nonzero"

    def _mine(self, d, pos, neg):
        idx = tf.cast(tf.where(tf.logical_and(pos[:, :, None], neg[:, None, :])), tf.int32)
        return idx[:, 0], idx[:, 1], idx[:, 2]


class BatchHardMiner(OnlineMiner):
    """Per anchor with a positive and a negative: its farthest positive and nearest negative."""

    name = "batch_hard"

    def _mine(self, d, pos, neg):
        big = tf.reduce_max(d) + 1.0  # finite fill values keep argmax/argmin on real entries
        hardest_p = tf.argmax(tf.where(pos, d, -big), axis=1, output_type=tf.int32)
        hardest_n = tf.argmin(tf.where(neg, d, big), axis=1, output_type=tf.int32)
        a = tf.reshape(tf.cast(tf.where(tf.logical_and(tf.reduce_any(pos, 1), tf.reduce_any(neg, 1))), tf.int32), [-1])
        return a, tf.gather(hardest_p, a), tf.gather(hardest_n, a)


class SemiHardMiner(OnlineMiner):
    """FaceNet's semi-hard rule (Schroff et al. 2015): per anchor-positive pair, the nearest
    negative farther than the positive; with none, the anchor's farthest negative (the
    mildest of the too-hard ones, as tfa's ``triplet_semihard_loss``)."""

    name = "semi_hard"

    def _mine(self, d, pos, neg):
        big = tf.reduce_max(d) + 1.0
        farther = tf.logical_and(neg[:, None, :], d[:, None, :] > d[:, :, None])  # [a, p, n]
        nearest_farther = tf.argmin(tf.where(farther, d[:, None, :], big), axis=2, output_type=tf.int32)
        farthest = tf.argmax(tf.where(neg, d, -big), axis=1, output_type=tf.int32)  # [a]
        choice = tf.where(tf.reduce_any(farther, axis=2), nearest_farther, farthest[:, None])
        ap = tf.cast(tf.where(tf.logical_and(pos, tf.reduce_any(neg, axis=1, keepdims=True))), tf.int32)
        return ap[:, 0], ap[:, 1], tf.gather_nd(choice, ap)


_MINERS = {m.name: m for m in (RandomNegativeMiner, HardNegativeMiner, BatchAllMiner, BatchHardMiner, SemiHardMiner)}


def get_miner(name: str, distance: str = "sqeuclidean"):
    """A miner by name: one of :data:`MINERS`."""
    if name not in _MINERS:
        raise ValueError(f"unknown miner {name!r}; expected one of {', '.join(MINERS)}")
    return _MINERS[name](distance)

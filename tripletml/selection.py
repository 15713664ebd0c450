"""Triplet selection strategies ("miners"): turn a training set into training batches.

Every strategy has one call shape, ``strategy.sample() -> Batch``, and says which
model it trains (the 3-branch triplet network, or the embedding itself with a batch
loss). They draw from their own ``numpy.random.Generator``, so the same seed gives
the same batches.

* ``RandomTriplets``: the assignment's random triplets.
* ``HardTriplets``: the assignment's hard triplets - the negative is the drawing of a
  random other class *nearest* the anchor. Exact mode embeds the anchors and every
  candidate drawing in one batched forward pass per step; ``refresh_every=k`` mines
  from a table of training-set embeddings refreshed every k steps instead.
* ``ClassBalancedBatches``: P classes x K drawings for the batch losses, which mine
  inside the batch: batch-all, batch-hard, semi-hard, and the assignment's random and
  hard rules themselves (``train.batches: classes``), for which the batch also carries
  the random numbers that pick each pair's negative class (:func:`in_batch_triplets`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


EmbedFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Batch:
    """``x``: model inputs; ``y``: class labels of every image in ``x``.

    Triplet batches: x (B, 3, S, S, 1), y (B, 3) (anchor, positive, negative classes).
    Class-balanced batches: x (P*K, S, S, 1), y (P*K,).
    ``drawings`` holds the drawing index of every image (for triplets, (B, 3)).
    ``draws``: for the in-batch random/hard rules, (P*K, K-1, 2) uniform numbers that
    pick each anchor-positive pair's negative (see :func:`in_batch_triplets`).
    """

    x: np.ndarray
    y: np.ndarray
    drawings: np.ndarray | None = None
    draws: np.ndarray | None = None

    def arrays(self) -> tuple[np.ndarray, ...]:
        """What a train step takes: (x, y) or (x, y, draws), all split by rows across replicas."""
        x, y = np.asarray(self.x, np.float32), np.asarray(self.y, np.int32)
        return (x, y) if self.draws is None else (x, y, np.asarray(self.draws, np.float32))


def augment_rotations(X: np.ndarray) -> np.ndarray:
    """Add the 90/180/270-degree rotations of every character as new classes (Vinyals et al.).

    (n, 20, S, S) -> (4n, 20, S, S); rotated copies follow the originals, so class
    ``i`` keeps its index and ``i + k*n`` is it turned by k quarter turns.
    """
    return np.concatenate([np.rot90(X, k, axes=(2, 3)) for k in range(4)])


def augment_flips(X: np.ndarray) -> np.ndarray:
    """Add the left-right mirror image of every character as a new class.

    (n, 20, S, S) -> (2n, 20, S, S); class ``i + n`` is class ``i`` mirrored. A mirrored
    character is a plausible new character, as a rotated one is (:func:`augment_rotations`).
    """
    return np.concatenate([X, X[..., ::-1]])


def _two_distinct(rng: np.random.Generator, n: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of distinct integers in [0, high), uniformly (shift trick, no rejection loop)."""
    first = rng.integers(0, high, n)
    second = (first + rng.integers(1, high, n)) % high
    return first, second


class TripletStrategy:
    """Base of the assignment's triplet strategies: anchor class, positive, negative class."""

    uses_triplet_network = True
    name = "triplets"

    def __init__(self, X: np.ndarray, batch_size: int, rng: np.random.Generator):
        if X.shape[0] < 2 or X.shape[1] < 2:
            raise ValueError(f"need at least 2 classes with 2 drawings each, got {X.shape[:2]}")
        self.X = X
        self.batch_size = batch_size
        self.rng = rng

    def _classes_and_drawings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        n_cls, n_draw = self.X.shape[:2]
        anchor_cls, neg_cls = _two_distinct(self.rng, self.batch_size, n_cls)
        a_draw, p_draw = _two_distinct(self.rng, self.batch_size, n_draw)
        return anchor_cls, neg_cls, a_draw, p_draw

    def _batch(self, anchor_cls, neg_cls, a_draw, p_draw, n_draw) -> Batch:
        cls = np.stack([anchor_cls, anchor_cls, neg_cls], axis=1)
        drw = np.stack([a_draw, p_draw, n_draw], axis=1)
        return Batch(self.X[cls, drw][..., None], cls, drw)

    def sample(self) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError


class RandomTriplets(TripletStrategy):
    """The assignment's random triplets: everything drawn uniformly."""

    name = "random"

    def sample(self) -> Batch:
        anchor_cls, neg_cls, a_draw, p_draw = self._classes_and_drawings()
        n_draw = self.rng.integers(0, self.X.shape[1], self.batch_size)
        return self._batch(anchor_cls, neg_cls, a_draw, p_draw, n_draw)


class HardTriplets(TripletStrategy):
    """The assignment's hard triplets: the negative class's drawing nearest the anchor.

    ``embed`` maps model images (m, S, S, 1) to (m, D) under the *current* network.
    ``refresh_every=0`` mines exactly: one forward pass per step over the anchors and
    all drawings of each negative class. ``refresh_every=k`` mines from ``table``
    (n_classes, n_drawings, D), re-embedded every k steps; in between, the rows of
    the images each training step embeds anyway are overwritten with those fresh
    embeddings (:meth:`observe`), so the table drifts less for free.
    """

    name = "hard"

    def __init__(
        self,
        X: np.ndarray,
        batch_size: int,
        rng: np.random.Generator,
        embed: EmbedFn,
        refresh_every: int = 0,
    ):
        super().__init__(X, batch_size, rng)
        self.embed = embed
        self.refresh_every = refresh_every
        self.table: np.ndarray | None = None
        self._steps = 0

    def refresh(self) -> None:
        """Re-embed the whole training set into the mining table."""
        n_cls, n_draw = self.X.shape[:2]
        flat = self.X.reshape(n_cls * n_draw, *self.X.shape[2:], 1)
        self.table = self.embed(flat).reshape(n_cls, n_draw, -1)

    def sample(self) -> Batch:
        anchor_cls, neg_cls, a_draw, p_draw = self._classes_and_drawings()
        if self.refresh_every:
            if self.table is None or self._steps % self.refresh_every == 0:
                self.refresh()
            anchors = self.table[anchor_cls, a_draw]  # (B, D)
            candidates = self.table[neg_cls]  # (B, n_draw, D)
        else:
            b, n_draw = self.batch_size, self.X.shape[1]
            images = np.concatenate([self.X[anchor_cls, a_draw], self.X[neg_cls].reshape(b * n_draw, *self.X.shape[2:])])
            emb = self.embed(images[..., None])
            anchors, candidates = emb[:b], emb[b:].reshape(b, n_draw, -1)
        self._steps += 1
        n_draw = nearest_candidate(anchors, candidates)
        return self._batch(anchor_cls, neg_cls, a_draw, p_draw, n_draw)

    def observe(self, batch: Batch, embeddings: np.ndarray) -> None:
        """Write the training step's own embeddings (B, 3, D) of ``batch`` into the table."""
        if self.table is not None:
            self.table[batch.y, batch.drawings] = embeddings.reshape(*batch.y.shape, -1)


def nearest_candidate(anchors: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Index of the candidate nearest each anchor (squared L2): (B, D), (B, C, D) -> (B,)."""
    d = np.einsum("bcd,bcd->bc", candidates, candidates) - 2.0 * np.einsum("bcd,bd->bc", candidates, anchors)
    return np.argmin(d, axis=1)  # |anchor|^2 is the same for every candidate of a row


class ClassBalancedBatches:
    """P random classes x K random distinct drawings each, for the batch losses.

    ``draws=True`` (the in-batch random and hard rules) adds, per image, K-1 pairs of
    uniform numbers: the random choices of each of its anchor-positive pairs.
    """

    uses_triplet_network = False

    def __init__(
        self,
        X: np.ndarray,
        classes_per_batch: int,
        samples_per_class: int,
        rng: np.random.Generator,
        name: str = "batch_all",
        draws: bool = False,
    ):
        n_cls, n_draw = X.shape[:2]
        if classes_per_batch > n_cls:
            raise ValueError(f"classes_per_batch = {classes_per_batch} exceeds the {n_cls} training classes")
        if samples_per_class > n_draw:
            raise ValueError(f"samples_per_class = {samples_per_class} exceeds the {n_draw} drawings per class")
        self.X, self.P, self.K, self.rng, self.name = X, classes_per_batch, samples_per_class, rng, name
        self.draws = draws

    def sample(self) -> Batch:
        n_cls, n_draw = self.X.shape[:2]
        cls = self.rng.choice(n_cls, self.P, replace=False)
        # K distinct drawings per class: the first K of a random permutation of each row
        drw = np.argsort(self.rng.random((self.P, n_draw)), axis=1)[:, : self.K]
        cls = np.repeat(cls, self.K)
        drw = drw.reshape(-1)
        draws = self.rng.random((self.P * self.K, self.K - 1, 2)) if self.draws else None
        return Batch(self.X[cls, drw][..., None], cls, drw, draws)


def in_batch_triplets(
    embeddings: np.ndarray, labels: np.ndarray, draws: np.ndarray, rule: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (anchor, positive, negative) image indices the in-batch random/hard rules train on.

    Every anchor-positive pair (a != p, same label), in row-major order; pair number r
    of anchor a uses ``draws[a, r]``: ``[0]`` picks one of the batch's other classes
    (classes numbered in order of first appearance, the anchor's own skipped), ``[1]``
    a drawing of it in batch order (``rule="random"``), or ``rule="hard"`` takes its
    drawing nearest the anchor (squared L2). The NumPy twin of
    :class:`tripletml.losses.RandomClassTripletLoss`, which trains on the same
    triplets; used to show mined triplets and to test the loss.
    """
    if rule not in ("random", "hard"):
        raise ValueError(f"rule must be 'random' or 'hard', got {rule!r}")
    labels = np.asarray(labels).reshape(-1)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # sorted-label number -> first-appearance number
    cls_of = order[inverse]
    n_cls = len(first)
    same = labels[:, None] == labels[None, :]
    pos = same & ~np.eye(len(labels), dtype=bool)
    if n_cls < 2:
        empty = np.zeros(0, int)
        return empty, empty, empty
    a, p = np.nonzero(pos)
    rank = np.cumsum(pos, axis=1)[a, p] - 1
    u = np.asarray(draws)[a, rank]  # (pairs, 2)
    pick = np.minimum(np.floor(u[:, 0] * (n_cls - 1)).astype(int), n_cls - 2)
    neg_cls = pick + (pick >= cls_of[a])
    in_class = cls_of[None, :] == neg_cls[:, None]  # (pairs, n): the negative class's images
    if rule == "hard":
        emb = np.asarray(embeddings, np.float64)
        sq = (emb * emb).sum(1)
        d = sq[:, None] - 2.0 * emb @ emb.T + sq[None, :]  # (n, n), once; rows picked per pair
        n = np.argmin(np.where(in_class, d[a], np.inf), axis=1)
    else:
        count = in_class.sum(axis=1)
        which = np.minimum(np.floor(u[:, 1] * count).astype(int), count - 1)
        # the (which+1)-th image of the class in batch order
        n = np.argmax(np.cumsum(in_class, axis=1) == (which + 1)[:, None], axis=1)
    return a, p, n


def make_strategy(
    name: str,
    X: np.ndarray,
    settings: dict,
    rng: np.random.Generator,
    embed: EmbedFn | None = None,
):
    """Build a strategy by name from the effective settings of ``params.strategy(name)``."""
    n_draw = X.shape[1]
    if name in ("random", "hard") and settings.get("batches") == "classes":
        k = settings.get("samples_per_class") or n_draw
        if name == "hard" and k != n_draw:
            raise ValueError(
                f"strategies.hard.samples_per_class = {k}: hard takes the nearest of every drawing of the "
                f"negative class, so a class batch holds all {n_draw} drawings of each class; leave it unset"
            )
        return ClassBalancedBatches(X, settings["classes_per_batch"], k, rng, name, draws=True)
    if name == "random":
        return RandomTriplets(X, settings["batch_size"], rng)
    if name == "hard":
        if embed is None:
            raise ValueError("the hard strategy needs the current network's embed function")
        return HardTriplets(X, settings["batch_size"], rng, embed, settings.get("refresh_every", 0))
    if name in ("batch_all", "batch_hard", "semi_hard"):
        return ClassBalancedBatches(X, settings["classes_per_batch"], settings.get("samples_per_class") or 4, rng, name)
    raise ValueError(f"unknown strategy {name!r}")

"""Samplers: what one training step draws from the training set.

A strategy is a (sampler, miner) pair. The sampler decides which images a step sees and
draws every random number of the step from its own seeded ``numpy.random.Generator``
(so a seed repeats a run and a checkpoint resumes it exactly); the miner
(:mod:`tripletml.miners`) decides which triplets of them the loss trains on.

* :class:`TripletSampler` (``triplets``): the assignment's B random anchor-positive pairs,
  each with a random other class whose drawing the miner picks as the negative.
* :class:`ClassSampler` (``classes``): P random classes x K random drawings. With
  ``draws=True`` (the random and hard miners) it adds, per image, the uniform numbers that
  pick the negative class (and drawing) of each of its anchor-positive pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLERS = ("triplets", "classes")


@dataclass
class Batch:
    """``x``: model images; ``y``: class of every image; ``drawings``: drawing of every image.

    Triplet batches: x (B, 3, S, S, 1), y and drawings (B, 3) (anchor, positive, negative).
    Class batches: x (P*K, S, S, 1), y and drawings (P*K,); ``draws`` (P*K, K-1, 2) when
    the miner needs random numbers (:func:`tripletml.miners.pairs_with_negative_class`).
    """

    x: np.ndarray
    y: np.ndarray
    drawings: np.ndarray
    draws: np.ndarray | None = None

    def arrays(self) -> tuple[np.ndarray, ...]:
        """What a train step takes: (x, y) or (x, y, draws), all split by rows across replicas."""
        x, y = np.asarray(self.x, np.float32), np.asarray(self.y, np.int32)
        return (x, y) if self.draws is None else (x, y, np.asarray(self.draws, np.float32))


@dataclass
class TripletPairs:
    """The random part of a triplet batch, before the miner picks each negative drawing.

    (B,) arrays: anchor class and drawing, positive drawing, negative class, and ``u`` in
    [0, 1) for the random miner's pick among the negative class's drawings.
    """

    anchor_cls: np.ndarray
    anchor_drawing: np.ndarray
    positive_drawing: np.ndarray
    negative_cls: np.ndarray
    u: np.ndarray


def augment_rotations(X: np.ndarray) -> np.ndarray:
    """Add the 90/180/270-degree rotations of every character as new classes (Vinyals et al.).

    (n, 20, S, S) -> (4n, 20, S, S); class ``i + k*n`` is class ``i`` turned by k quarter turns.
    """
    return np.concatenate([np.rot90(X, k, axes=(2, 3)) for k in range(4)])


def augment_flips(X: np.ndarray) -> np.ndarray:
    """Add the left-right mirror image of every character as a new class: (n, ...) -> (2n, ...)."""
    return np.concatenate([X, X[..., ::-1]])


def _two_distinct(rng: np.random.Generator, n: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs of distinct integers in [0, high), uniformly (shift trick, no rejection loop)."""
    first = rng.integers(0, high, n)
    second = (first + rng.integers(1, high, n)) % high
    return first, second


class TripletSampler:
    """The assignment's batches: ``batch_size`` random anchor-positive pairs of random classes,
    each with a uniformly random other class for its negative."""

    name = "triplets"

    def __init__(self, X: np.ndarray, batch_size: int, rng: np.random.Generator):
        if X.shape[0] < 2 or X.shape[1] < 2:
            raise ValueError(f"need at least 2 classes with 2 drawings each, got {X.shape[:2]}")
        self.X, self.batch_size, self.rng = X, batch_size, rng

    def pairs(self) -> TripletPairs:
        n_cls, n_draw = self.X.shape[:2]
        anchor_cls, neg_cls = _two_distinct(self.rng, self.batch_size, n_cls)
        a_draw, p_draw = _two_distinct(self.rng, self.batch_size, n_draw)
        return TripletPairs(anchor_cls, a_draw, p_draw, neg_cls, self.rng.random(self.batch_size))

    def candidates(self, pairs: TripletPairs) -> np.ndarray:
        """Every drawing of each pair's negative class: (B, n_drawings, S, S, 1)."""
        return self.X[pairs.negative_cls][..., None]

    def batch(self, pairs: TripletPairs, negative_drawing: np.ndarray) -> Batch:
        cls = np.stack([pairs.anchor_cls, pairs.anchor_cls, pairs.negative_cls], axis=1)
        drw = np.stack([pairs.anchor_drawing, pairs.positive_drawing, np.asarray(negative_drawing)], axis=1)
        return Batch(self.X[cls, drw][..., None], cls, drw)


class ClassSampler:
    """P random classes x K random distinct drawings each (P x K batches, Hermans et al. 2017)."""

    name = "classes"

    def __init__(self, X: np.ndarray, classes_per_batch: int, samples_per_class: int, rng: np.random.Generator, draws: bool = False):
        n_cls, n_draw = X.shape[:2]
        if not 2 <= classes_per_batch <= n_cls:
            raise ValueError(f"classes_per_batch = {classes_per_batch}: must be 2..{n_cls} (the training classes)")
        if not 2 <= samples_per_class <= n_draw:
            raise ValueError(f"samples_per_class = {samples_per_class}: must be 2..{n_draw} (the drawings per class)")
        self.X, self.P, self.K, self.rng, self.draws = X, classes_per_batch, samples_per_class, rng, draws

    def sample(self) -> Batch:
        n_cls, n_draw = self.X.shape[:2]
        cls = self.rng.choice(n_cls, self.P, replace=False)
        # K distinct drawings per class: the first K of a random permutation of each row
        drw = np.argsort(self.rng.random((self.P, n_draw)), axis=1)[:, : self.K].reshape(-1)
        cls = np.repeat(cls, self.K)
        draws = self.rng.random((self.P * self.K, self.K - 1, 2)) if self.draws else None
        return Batch(self.X[cls, drw][..., None], cls, drw, draws)

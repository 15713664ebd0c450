"""Tests for tripletml.samplers: what a step draws, its invariants, and seeded repeatability."""

from __future__ import annotations

import numpy as np
import pytest

from tripletml.samplers import Batch, ClassSampler, TripletSampler, augment_flips, augment_rotations

N_CLS, N_DRAW, S = 12, 20, 6


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    """Every image is filled with its own id ``c * N_DRAW + d``: identity is readable from pixels."""
    ids = np.arange(N_CLS * N_DRAW, dtype=np.float32).reshape(N_CLS, N_DRAW)
    return np.broadcast_to(ids[:, :, None, None], (N_CLS, N_DRAW, S, S)).copy()


def test_triplet_pairs_invariants(X: np.ndarray) -> None:
    sampler = TripletSampler(X, 16, np.random.default_rng(0))
    seen_anchor, seen_negative = set(), set()
    for _ in range(200):
        pairs = sampler.pairs()
        assert np.all(pairs.anchor_cls != pairs.negative_cls)  # the negative is another class
        assert np.all(pairs.anchor_drawing != pairs.positive_drawing)  # two drawings of the anchor's class
        assert np.all((pairs.u >= 0) & (pairs.u < 1))
        seen_anchor.update(pairs.anchor_cls.tolist())
        seen_negative.update(pairs.negative_cls.tolist())
    assert seen_anchor == seen_negative == set(range(N_CLS))  # every class takes both roles


def test_triplet_batch_and_candidates(X: np.ndarray) -> None:
    sampler = TripletSampler(X, 8, np.random.default_rng(1))
    pairs = sampler.pairs()
    cand = sampler.candidates(pairs)
    assert cand.shape == (8, N_DRAW, S, S, 1)
    np.testing.assert_array_equal(cand[:, :, 0, 0, 0], pairs.negative_cls[:, None] * N_DRAW + np.arange(N_DRAW))
    negative = np.arange(8) % N_DRAW
    batch = sampler.batch(pairs, negative)
    assert batch.x.shape == (8, 3, S, S, 1) and batch.y.shape == batch.drawings.shape == (8, 3)
    np.testing.assert_array_equal(batch.x, X[batch.y, batch.drawings][..., None])
    assert np.all(batch.y[:, 0] == batch.y[:, 1]) and np.all(batch.y[:, 2] == pairs.negative_cls)
    assert batch.drawings[:, 2].tolist() == negative.tolist() and batch.draws is None


def test_triplet_sampler_needs_two_classes_and_drawings() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        TripletSampler(np.zeros((1, 20, 4, 4)), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2 classes"):
        TripletSampler(np.zeros((5, 1, 4, 4)), 4, np.random.default_rng(0))


def test_class_batches(X: np.ndarray) -> None:
    P, K = 5, 4
    sampler = ClassSampler(X, P, K, np.random.default_rng(6))
    for _ in range(50):
        batch = sampler.sample()
        assert batch.x.shape == (P * K, S, S, 1) and batch.y.shape == batch.drawings.shape == (P * K,)
        np.testing.assert_array_equal(batch.x, X[batch.y, batch.drawings][..., None])
        classes = batch.y.reshape(P, K)
        assert np.all(classes == classes[:, :1])  # K images per class, grouped
        assert len(set(classes[:, 0].tolist())) == P  # P distinct classes
        for row in batch.drawings.reshape(P, K):
            assert len(set(row.tolist())) == K  # K distinct drawings
        assert batch.draws is None and len(batch.arrays()) == 2


def test_class_batches_for_the_negative_miners_carry_their_draws(X: np.ndarray) -> None:
    batch = ClassSampler(X, 4, N_DRAW, np.random.default_rng(1), draws=True).sample()
    assert batch.draws.shape == (4 * N_DRAW, N_DRAW - 1, 2)  # a pair of numbers per anchor-positive pair
    assert np.all((batch.draws >= 0) & (batch.draws < 1))
    assert len(batch.arrays()) == 3 and batch.arrays()[2].dtype == np.float32


def test_class_batch_edge_sizes(X: np.ndarray) -> None:
    batch = ClassSampler(X, N_CLS, N_DRAW, np.random.default_rng(0)).sample()  # everything, once
    assert sorted(zip(batch.y.tolist(), batch.drawings.tolist())) == [(c, d) for c in range(N_CLS) for d in range(N_DRAW)]
    with pytest.raises(ValueError, match="classes_per_batch = 13"):
        ClassSampler(X, N_CLS + 1, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="samples_per_class = 21"):
        ClassSampler(X, 2, N_DRAW + 1, np.random.default_rng(0))


def test_augment_rotations() -> None:
    base = np.random.default_rng(8).random((3, 4, 5, 5)).astype(np.float32)  # non-symmetric images
    out = augment_rotations(base)
    assert out.shape == (12, 4, 5, 5)
    n = len(base)
    for i in range(n):
        for k in range(4):
            np.testing.assert_array_equal(out[i + k * n], np.rot90(base[i], k, axes=(1, 2)))
    assert not np.array_equal(out[n], out[0])  # a quarter turn really changes the image


def test_augment_flips() -> None:
    base = np.random.default_rng(9).random((3, 4, 5, 5)).astype(np.float32)
    out = augment_flips(augment_rotations(base))
    assert out.shape == (24, 4, 5, 5)
    np.testing.assert_array_equal(out[:12], augment_rotations(base))  # original classes keep their index
    for i in range(12):
        np.testing.assert_array_equal(out[12 + i], np.flip(out[i], axis=2))  # left-right: the column axis
    assert not np.array_equal(out[12], out[0])


def _batches(kind: str, X: np.ndarray, seed: int, steps: int = 5) -> list[Batch]:
    rng = np.random.default_rng(seed)
    if kind == "triplets":
        sampler = TripletSampler(X, 8, rng)
        return [sampler.batch(p, p.anchor_drawing) for p in (sampler.pairs() for _ in range(steps))]
    sampler = ClassSampler(X, 4, 3, rng, draws=True)
    return [sampler.sample() for _ in range(steps)]


@pytest.mark.parametrize("kind", ["triplets", "classes"])
def test_same_seed_same_batches(kind: str, X: np.ndarray) -> None:
    a, b, c = _batches(kind, X, 3), _batches(kind, X, 3), _batches(kind, X, 4)
    for x, y in zip(a, b):
        for f in ("x", "y", "drawings"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    assert any(not np.array_equal(x.y, z.y) for x, z in zip(a, c))

"""Tests for tripletml.selection: triplet invariants, exact/refresh hard mining, P x K batches."""

from __future__ import annotations

import numpy as np
import pytest

from tripletml.selection import (
    Batch,
    ClassBalancedBatches,
    HardTriplets,
    RandomTriplets,
    augment_flips,
    augment_rotations,
    in_batch_triplets,
    make_strategy,
    nearest_candidate,
)

N_CLS, N_DRAW, S, D = 12, 20, 6, 5


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    """Every image is filled with its own id ``c * N_DRAW + d``: identity is readable from pixels."""
    ids = np.arange(N_CLS * N_DRAW, dtype=np.float32).reshape(N_CLS, N_DRAW)
    return np.broadcast_to(ids[:, :, None, None], (N_CLS, N_DRAW, S, S)).copy()


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    """A known embedding per image id; continuous random values make distance ties impossible."""
    return np.random.default_rng(7).normal(size=(N_CLS * N_DRAW, D))


class LookupEmbed:
    """An ``embed`` whose output the test controls: image id -> row of ``table``; counts calls."""

    def __init__(self, table: np.ndarray):
        self.table = table
        self.calls: list[int] = []  # images per call

    def __call__(self, images: np.ndarray) -> np.ndarray:
        assert images.ndim == 4 and images.shape[-1] == 1, images.shape  # model images (m, S, S, 1)
        self.calls.append(len(images))
        ids = images[:, 0, 0, 0].astype(int)
        return self.table[ids]


def _brute_force_negatives(batch: Batch, table: np.ndarray) -> np.ndarray:
    """Drawing of the negative class nearest (squared L2) each anchor, by an explicit loop."""
    out = []
    for (ac, _, nc), (ad, _, _) in zip(batch.y, batch.drawings):
        anchor = table[ac * N_DRAW + ad]
        d = [np.sum((table[nc * N_DRAW + j] - anchor) ** 2) for j in range(N_DRAW)]
        out.append(int(np.argmin(d)))
    return np.array(out)


def _check_triplet_batch(batch: Batch, X: np.ndarray, batch_size: int) -> None:
    assert batch.x.shape == (batch_size, 3, S, S, 1)
    assert batch.y.shape == batch.drawings.shape == (batch_size, 3)
    np.testing.assert_array_equal(batch.x, X[batch.y, batch.drawings][..., None])
    assert np.all(batch.y[:, 0] == batch.y[:, 1])  # anchor and positive: one class
    assert np.all(batch.drawings[:, 0] != batch.drawings[:, 1])  # ... different drawings
    assert np.all(batch.y[:, 2] != batch.y[:, 0])  # negative: another class
    assert batch.y.min() >= 0 and batch.y.max() < N_CLS
    assert batch.drawings.min() >= 0 and batch.drawings.max() < N_DRAW


def test_random_triplets_invariants(X: np.ndarray) -> None:
    strategy = RandomTriplets(X, 16, np.random.default_rng(0))
    assert strategy.uses_triplet_network
    seen_cls, seen_neg_draw = set(), set()
    for _ in range(200):
        batch = strategy.sample()
        _check_triplet_batch(batch, X, 16)
        seen_cls.update(batch.y[:, 0].tolist())
        seen_neg_draw.update(batch.drawings[:, 2].tolist())
    # Uniform draws over 3200 triplets reach every class and every drawing.
    assert seen_cls == set(range(N_CLS))
    assert seen_neg_draw == set(range(N_DRAW))


def test_random_triplets_need_two_classes_and_drawings() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        RandomTriplets(np.zeros((1, 20, S, S), np.float32), 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2 classes"):
        RandomTriplets(np.zeros((5, 1, S, S), np.float32), 4, np.random.default_rng(0))


def test_hard_exact_picks_the_argmin(X: np.ndarray, table: np.ndarray) -> None:
    embed = LookupEmbed(table)
    strategy = HardTriplets(X, 16, np.random.default_rng(1), embed, refresh_every=0)
    for _ in range(30):
        batch = strategy.sample()
        _check_triplet_batch(batch, X, 16)
        np.testing.assert_array_equal(batch.drawings[:, 2], _brute_force_negatives(batch, table))
    # Exact mode: one batched forward pass per step over B anchors + B x 20 candidates.
    assert embed.calls == [16 + 16 * N_DRAW] * 30
    assert strategy.table is None


def test_hard_negative_is_not_random(X: np.ndarray, table: np.ndarray) -> None:
    """Guards the argmin test against a vacuous pass: random negatives would rarely match it."""
    batches = [RandomTriplets(X, 64, np.random.default_rng(2)).sample() for _ in range(3)]
    agree = np.mean([np.mean(b.drawings[:, 2] == _brute_force_negatives(b, table)) for b in batches])
    assert agree < 0.2  # chance level is 1/20


def test_hard_refresh_mines_from_its_table(X: np.ndarray, table: np.ndarray) -> None:
    k = 3
    embed = LookupEmbed(table)
    strategy = HardTriplets(X, 8, np.random.default_rng(3), embed, refresh_every=k)
    batch = strategy.sample()  # step 0 builds the table from embed
    assert embed.calls == [N_CLS * N_DRAW]
    np.testing.assert_allclose(strategy.table, table.reshape(N_CLS, N_DRAW, D))
    np.testing.assert_array_equal(batch.drawings[:, 2], _brute_force_negatives(batch, table))

    # A table the test sets is what steps 1..k-1 mine from (embed is not called again).
    other = np.random.default_rng(99).normal(size=table.shape)
    strategy.table = other.reshape(N_CLS, N_DRAW, D)
    for _ in range(k - 1):
        batch = strategy.sample()
        _check_triplet_batch(batch, X, 8)
        np.testing.assert_array_equal(batch.drawings[:, 2], _brute_force_negatives(batch, other))
    assert len(embed.calls) == 1

    batch = strategy.sample()  # step k: rebuilt from embed, replacing the test's table
    assert len(embed.calls) == 2
    np.testing.assert_array_equal(batch.drawings[:, 2], _brute_force_negatives(batch, table))


@pytest.mark.parametrize("k", [1, 4, 5])
def test_hard_refresh_rebuilds_exactly_every_k_steps(X: np.ndarray, table: np.ndarray, k: int) -> None:
    embed = LookupEmbed(table)
    strategy = HardTriplets(X, 4, np.random.default_rng(4), embed, refresh_every=k)
    counts = []
    for _ in range(20):
        strategy.sample()
        counts.append(len(embed.calls))
    # Refreshes before steps 0, k, 2k, ...: after step i there were i // k + 1 of them.
    assert counts == [i // k + 1 for i in range(20)]
    assert set(embed.calls) == {N_CLS * N_DRAW}  # always the whole training set


def test_nearest_candidate_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    # Candidates of very different norms: the |c|^2 term must not be dropped.
    anchors = rng.normal(size=(50, 7))
    candidates = rng.normal(size=(50, 13, 7)) * rng.uniform(0.1, 5.0, size=(50, 13, 1))
    brute = np.array([np.argmin([np.sum((c - a) ** 2) for c in cs]) for a, cs in zip(anchors, candidates)])
    got = nearest_candidate(anchors, candidates)
    assert got.shape == (50,)
    np.testing.assert_array_equal(got, brute)
    # An exact copy of the anchor among the candidates is always chosen.
    candidates[np.arange(50), 6] = anchors
    np.testing.assert_array_equal(nearest_candidate(anchors, candidates), np.full(50, 6))


def test_class_balanced_batches(X: np.ndarray) -> None:
    P, K = 5, 4
    strategy = ClassBalancedBatches(X, P, K, np.random.default_rng(6), name="batch_hard")
    assert not strategy.uses_triplet_network and strategy.name == "batch_hard"
    for _ in range(50):
        batch = strategy.sample()
        assert batch.x.shape == (P * K, S, S, 1) and batch.y.shape == batch.drawings.shape == (P * K,)
        np.testing.assert_array_equal(batch.x, X[batch.y, batch.drawings][..., None])
        classes = batch.y.reshape(P, K)
        assert np.all(classes == classes[:, :1])  # K images per class, grouped
        assert len(set(classes[:, 0].tolist())) == P  # P distinct classes
        for row in batch.drawings.reshape(P, K):
            assert len(set(row.tolist())) == K  # K distinct drawings


def test_class_balanced_batches_edge_sizes(X: np.ndarray) -> None:
    batch = ClassBalancedBatches(X, N_CLS, N_DRAW, np.random.default_rng(0)).sample()  # everything, once
    assert sorted(zip(batch.y.tolist(), batch.drawings.tolist())) == [(c, d) for c in range(N_CLS) for d in range(N_DRAW)]
    with pytest.raises(ValueError, match="classes_per_batch"):
        ClassBalancedBatches(X, N_CLS + 1, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="samples_per_class"):
        ClassBalancedBatches(X, 2, N_DRAW + 1, np.random.default_rng(0))


def test_class_batches_for_the_assignment_rules_carry_their_draws(X: np.ndarray) -> None:
    settings = {"batches": "classes", "classes_per_batch": 4, "samples_per_class": None, "batch_size": 8}
    for name in ("random", "hard"):
        strategy = make_strategy(name, X, settings, np.random.default_rng(1))
        assert isinstance(strategy, ClassBalancedBatches) and strategy.name == name
        assert (strategy.P, strategy.K) == (4, N_DRAW)  # every drawing of each class
        batch = strategy.sample()
        assert batch.x.shape == (4 * N_DRAW, S, S, 1)
        assert batch.draws.shape == (4 * N_DRAW, N_DRAW - 1, 2)  # one pair of numbers per anchor-positive pair
        assert np.all((batch.draws >= 0) & (batch.draws < 1))
        assert len(batch.arrays()) == 3 and batch.arrays()[2].dtype == np.float32
    # random may take fewer drawings; hard must see them all to find the nearest
    assert make_strategy("random", X, {**settings, "samples_per_class": 3}, np.random.default_rng(1)).K == 3
    with pytest.raises(ValueError, match="strategies.hard.samples_per_class = 3"):
        make_strategy("hard", X, {**settings, "samples_per_class": 3}, np.random.default_rng(1))
    # batch losses carry no draws; triplet batches stay the assignment's
    assert make_strategy("batch_all", X, settings, np.random.default_rng(1)).sample().draws is None
    assert isinstance(make_strategy("random", X, {**settings, "batches": "triplets"}, np.random.default_rng(1)), RandomTriplets)


def test_in_batch_triplets_follow_the_rules(table: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    labels = np.repeat(rng.permutation(N_CLS)[:6], 5)  # 6 classes x 5 drawings
    emb = rng.normal(size=(len(labels), D))
    draws = rng.random((len(labels), 4, 2))
    for rule in ("random", "hard"):
        a, p, n = in_batch_triplets(emb, labels, draws, rule)
        assert len(a) == 6 * 5 * 4  # every anchor-positive pair
        assert np.all(labels[a] == labels[p]) and np.all(a != p) and np.all(labels[n] != labels[a])
    a, p, n = in_batch_triplets(emb, labels, draws, "hard")
    for i in range(len(a)):  # nearest of its class, by brute force
        same = np.nonzero(labels == labels[n[i]])[0]
        assert n[i] == same[np.argmin(((emb[same] - emb[a[i]]) ** 2).sum(1))]
    # Over many draws the negative class is uniform over the other classes.
    counts = np.zeros(6)
    order = list(dict.fromkeys(labels.tolist()))
    for seed in range(40):
        draws = np.random.default_rng(seed).random((len(labels), 4, 2))
        a, _, n = in_batch_triplets(emb, labels, draws, "random")
        mine = labels[a] == order[0]
        counts += np.bincount([order.index(c) for c in labels[n][mine]], minlength=6)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()
    with pytest.raises(ValueError, match="rule"):
        in_batch_triplets(emb, labels, draws, "semi_hard")


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


def _sequence(name: str, X: np.ndarray, seed: int, embed=None, steps: int = 5) -> list[Batch]:
    settings = {"batch_size": 8, "refresh_every": 2, "classes_per_batch": 4, "samples_per_class": 3}
    strategy = make_strategy(name, X, settings, np.random.default_rng(seed), embed)
    return [strategy.sample() for _ in range(steps)]


@pytest.mark.parametrize("name", ["random", "hard", "batch_all"])
def test_same_seed_same_batches(name: str, X: np.ndarray, table: np.ndarray) -> None:
    def run(seed: int) -> list[Batch]:
        return _sequence(name, X, seed, LookupEmbed(table))

    a, b, c = run(11), run(11), run(12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.y, y.y)
        np.testing.assert_array_equal(x.drawings, y.drawings)
    assert any(not np.array_equal(x.drawings, z.drawings) or not np.array_equal(x.y, z.y) for x, z in zip(a, c))


def test_make_strategy_dispatch(X: np.ndarray, table: np.ndarray) -> None:
    settings = {"batch_size": 8, "refresh_every": 7, "classes_per_batch": 4, "samples_per_class": 3}
    rng = np.random.default_rng(0)
    assert isinstance(make_strategy("random", X, settings, rng), RandomTriplets)
    hard = make_strategy("hard", X, settings, rng, LookupEmbed(table))
    assert isinstance(hard, HardTriplets) and hard.refresh_every == 7
    for name in ("batch_all", "batch_hard", "semi_hard"):
        s = make_strategy(name, X, settings, rng)
        assert isinstance(s, ClassBalancedBatches) and (s.P, s.K, s.name) == (4, 3, name)
    with pytest.raises(ValueError, match="embed"):
        make_strategy("hard", X, settings, rng)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("nope", X, settings, rng)


def test_hard_refresh_table_takes_the_training_steps_own_embeddings() -> None:
    rng = np.random.default_rng(3)
    X = rng.random((300, 20, 2, 2)).astype(np.float32)
    strategy = HardTriplets(X, 5, np.random.default_rng(0), lambda x: np.zeros((len(x), 3), np.float32), refresh_every=50)
    batch = strategy.sample()  # builds the (all-zero) table
    pairs = {(c, d) for c, d in zip(batch.y.ravel(), batch.drawings.ravel())}
    assert len(pairs) == batch.y.size, "the seed gives 15 distinct images, so every write is checkable"
    fresh = rng.random((5, 3, 3)).astype(np.float32)
    strategy.observe(batch, fresh.reshape(5, 9))  # a triplet network's (B, 3*D) layout
    np.testing.assert_array_equal(strategy.table[batch.y, batch.drawings], fresh)
    untouched = np.ones(strategy.table.shape[:2], bool)
    untouched[batch.y, batch.drawings] = False
    assert not strategy.table[untouched].any(), "only the batch's rows change"

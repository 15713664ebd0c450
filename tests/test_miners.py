"""Tests for tripletml.miners: every miner against a float64 brute-force loop reference."""

import numpy as np
import pytest

from references import dist as _dist

from tripletml.distances import DISTANCES
from tripletml.miners import (
    MINERS,
    BatchAllMiner,
    BatchHardMiner,
    HardNegativeMiner,
    RandomNegativeMiner,
    SemiHardMiner,
    get_miner,
    pairs_with_negative_class,
)

KINDS = sorted(DISTANCES)


def _class_batch(seed, classes=4, k=5, dim=6):
    """A P x K batch in shuffled class order, continuous embeddings (no distance ties) and draws."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.choice(100, classes, replace=False), k)
    order = rng.permutation(len(labels))
    return rng.normal(size=(len(labels), dim)), labels[order], rng.random((len(labels), k - 1, 2))


def _reference_pairs(labels, draws):
    """(anchor, positive, candidates, u) per pair, by loops, in row-major order."""
    classes = list(dict.fromkeys(labels.tolist()))  # first appearance
    out = []
    for a in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        for r, p in enumerate(positives):
            others = [c for c in classes if c != labels[a]]
            pick = min(int(np.floor(np.float32(draws[a, r, 0]) * np.float32(len(others)))), len(others) - 1)
            candidates = [j for j in range(len(labels)) if labels[j] == others[pick]]
            out.append((a, p, candidates, np.float32(draws[a, r, 1])))
    return out


def test_pairs_with_negative_class_match_the_loop_reference():
    x, labels, draws = _class_batch(1)
    a, p, cand, u = (np.asarray(t) for t in pairs_with_negative_class(labels, draws))
    ref = _reference_pairs(labels, draws)
    assert len(a) == len(ref) == 4 * 5 * 4
    for i, (ra, rp, rc, ru) in enumerate(ref):
        assert (a[i], p[i]) == (ra, rp)
        assert cand[i].tolist() == rc
        assert u[i] == pytest.approx(ru)
    # every other class is drawn for some pair of each anchor's class (3 others, 20 pairs each)
    neg_labels = labels[cand[:, 0]]
    assert np.all(neg_labels != labels[a])
    assert len(set(neg_labels.tolist())) == 4


def test_pairs_need_two_classes():
    a, p, cand, _ = pairs_with_negative_class(np.zeros(5, int), np.zeros((5, 4, 2)))
    assert len(a) == len(p) == len(cand) == 0


def test_random_negative_picks_the_drawn_candidate():
    candidates = np.array([[10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33]])
    u = np.array([0.0, 0.49, 0.999999])
    got = np.asarray(RandomNegativeMiner()(None, np.zeros(3, int), candidates, u))
    assert got.tolist() == [10, 21, 33]
    assert not RandomNegativeMiner.needs_embeddings


def test_random_negative_is_uniform():
    u = np.random.default_rng(0).random(20000)
    got = np.asarray(RandomNegativeMiner()(None, np.zeros(len(u), int), np.tile(np.arange(20), (len(u), 1)), u))
    counts = np.bincount(got, minlength=20)
    assert counts.min() > 850 and counts.max() < 1150  # 1000 expected each


@pytest.mark.parametrize("kind", KINDS)
def test_hard_negative_is_the_nearest_candidate(kind):
    x, labels, draws = _class_batch(2)
    ref = _reference_pairs(labels, draws)
    a, p, cand, u = pairs_with_negative_class(labels, draws)
    got = np.asarray(HardNegativeMiner(kind)(x, a, cand, u))
    want = [c[int(np.argmin([_dist(x[ra], x[j], kind) for j in c]))] for ra, _, c, _ in ref]
    assert got.tolist() == want
    assert HardNegativeMiner.needs_embeddings


def test_hard_negative_differs_from_random():
    x, labels, draws = _class_batch(3)
    a, p, cand, u = pairs_with_negative_class(labels, draws)
    hard = np.asarray(HardNegativeMiner()(x, a, cand, u))
    rand = np.asarray(RandomNegativeMiner()(x, a, cand, u))
    assert (hard != rand).mean() > 0.5  # 4 of 5 random picks miss the nearest one


@pytest.mark.parametrize("kind", KINDS)
def test_batch_all_takes_every_valid_triplet(kind):
    x, labels, _ = _class_batch(4, classes=3, k=3)
    n = len(labels)
    want = {(a, p, q) for a in range(n) for p in range(n) for q in range(n) if a != p and labels[a] == labels[p] and labels[q] != labels[a]}
    got = set(zip(*(np.asarray(t).tolist() for t in BatchAllMiner(kind)(x, labels))))
    assert got == want and len(want) == 9 * 2 * 6
    assert BatchAllMiner.reducer == "mean_nonzero"


@pytest.mark.parametrize("kind", KINDS)
def test_batch_hard_takes_the_farthest_positive_and_nearest_negative(kind):
    x, labels, _ = _class_batch(5)
    n = len(labels)
    want = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [q for q in range(n) if labels[q] != labels[a]]
        want.append((a, max(pos, key=lambda j: _dist(x[a], x[j], kind)), min(neg, key=lambda j: _dist(x[a], x[j], kind))))
    got = list(zip(*(np.asarray(t).tolist() for t in BatchHardMiner(kind)(x, labels))))
    assert got == want


def test_batch_hard_skips_anchors_without_a_positive():
    x = np.random.default_rng(0).normal(size=(5, 3))
    a, p, n = BatchHardMiner()(x, np.array([0, 0, 1, 1, 2]))
    assert np.asarray(a).tolist() == [0, 1, 2, 3]  # image 4 is alone in its class


@pytest.mark.parametrize("kind", KINDS)
def test_semi_hard_reference(kind):
    x, labels, _ = _class_batch(6)
    n = len(labels)
    want = []
    for a in range(n):
        neg = [q for q in range(n) if labels[q] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            d_ap = _dist(x[a], x[p], kind)
            farther = [q for q in neg if _dist(x[a], x[q], kind) > d_ap]
            pick = min(farther, key=lambda j: _dist(x[a], x[j], kind)) if farther else max(neg, key=lambda j: _dist(x[a], x[j], kind))
            want.append((a, p, pick))
    got = list(zip(*(np.asarray(t).tolist() for t in SemiHardMiner(kind)(x, labels))))
    assert got == want


def test_semi_hard_falls_back_to_the_farthest_negative():
    # Both negatives are nearer the anchor than its positive: take the farther one (index 3).
    x = np.array([[0.0], [10.0], [1.0], [2.0]])
    a, p, n = SemiHardMiner()(x, np.array([0, 0, 1, 1]))
    assert dict(zip(np.asarray(a).tolist(), np.asarray(n).tolist()))[0] == 3


def test_registry():
    assert [get_miner(m).name for m in MINERS] == list(MINERS)
    with pytest.raises(ValueError, match="unknown miner 'nope'"):
        get_miner("nope")

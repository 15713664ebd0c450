import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tripletml.distances import DISTANCES
from tripletml.losses import (
    LOSSES,
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    InBatchHardTripletLoss,
    InBatchRandomTripletLoss,
    KerasBatchTripletLoss,
    SemiHardTripletLoss,
    TripletLoss,
    collapse_reason,
    get_loss,
    is_collapsed,
    triplet_margin_loss,
)
from tripletml.models import build_embedding, build_triplet_network

KINDS = sorted(DISTANCES)

# ---------------------------------------------------------------- float64 references


def _dist(u, v, kind):
    if kind == "cosine":
        return 1.0 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    sq = float((u - v) @ (u - v))
    return np.sqrt(sq) if kind == "euclidean" else sq


def _hinge(diff, margin, soft):
    return np.logaddexp(0.0, diff) if soft else max(diff + margin, 0.0)


def _ref_batch_all(x, y, margin, soft, kind):
    active, valid = [], 0
    for a, p, n in itertools.product(range(len(x)), repeat=3):
        if a != p and y[a] == y[p] and y[n] != y[a]:
            valid += 1
            value = _hinge(_dist(x[a], x[p], kind) - _dist(x[a], x[n], kind), margin, soft)
            if value > 0:
                active.append(value)
    return (np.mean(active) if active else 0.0), len(active) / max(valid, 1)


def _ref_batch_hard(x, y, margin, soft, kind):
    values = []
    for a in range(len(x)):
        pos = [_dist(x[a], x[p], kind) for p in range(len(x)) if p != a and y[p] == y[a]]
        neg = [_dist(x[a], x[n], kind) for n in range(len(x)) if y[n] != y[a]]
        if pos and neg:
            values.append(_hinge(max(pos) - min(neg), margin, soft))
    return np.mean(values) if values else 0.0


def _ref_semi_hard(x, y, margin, soft, kind):
    values = []
    for a, p in itertools.product(range(len(x)), repeat=2):
        if a == p or y[a] != y[p]:
            continue
        neg = [_dist(x[a], x[n], kind) for n in range(len(x)) if y[n] != y[a]]
        if not neg:
            continue
        d_ap = _dist(x[a], x[p], kind)
        farther = [d for d in neg if d > d_ap]
        d_an = min(farther) if farther else max(neg)  # tfa's fallback: easiest negative
        values.append(_hinge(d_ap - d_an, margin, soft))
    return np.mean(values) if values else 0.0




def _random_batch(seed, n=14, dim=4, classes=4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.integers(0, classes, size=n)


# ---------------------------------------------------------------- batch losses


# ------------------------------------------- the assignment's rules inside a batch


def _ref_in_batch(x, y, draws, rule, margin, soft, kind):
    """Loop reference: pair r of anchor a (row-major) draws a class among the others (in
    order of first appearance), then its drawing nearest a (hard) or its draws[..., 1]-th."""
    order = list(dict.fromkeys(y.tolist()))
    values = []
    for a in range(len(x)):
        positives = [p for p in range(len(x)) if p != a and y[p] == y[a]]
        others = [c for c in order if c != y[a]]
        for r, p in enumerate(positives):
            if not others:
                continue
            c = others[min(int(draws[a, r, 0] * len(others)), len(others) - 1)]
            members = [j for j in range(len(x)) if y[j] == c]
            if rule == "hard":
                n = min(members, key=lambda j: _dist(x[a], x[j], kind))
            else:
                n = members[min(int(draws[a, r, 1] * len(members)), len(members) - 1)]
            values.append(_hinge(_dist(x[a], x[p], kind) - _dist(x[a], x[n], kind), margin, soft))
    return np.mean(values) if values else 0.0


REFERENCES = {  # name -> reference(x, y, draws, margin, soft, kind); draws only for the in-batch rules
    "batch_all": lambda x, y, draws, *args: _ref_batch_all(x, y, *args)[0],
    "batch_hard": lambda x, y, draws, *args: _ref_batch_hard(x, y, *args),
    "semi_hard": lambda x, y, draws, *args: _ref_semi_hard(x, y, *args),
    "random": lambda *args: _ref_in_batch(*args[:3], "random", *args[3:]),
    "hard": lambda *args: _ref_in_batch(*args[:3], "hard", *args[3:]),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_batch_loss_matches_bruteforce(name, soft, kind):
    margin = 0.0 if soft else 0.3 if kind == "cosine" else 1.0
    loss = get_loss(name, margin=margin, soft=soft, distance=kind)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        y = rng.permutation(np.repeat([7, 3, 9, 1, 4], [4, 3, 5, 2, 4]))  # unequal classes, shuffled
        x = rng.normal(size=(len(y), 4))
        draws = rng.random((len(y), 4, 2))  # the in-batch rules' random choices
        got = float(loss(x.astype(np.float32), y, draws) if name in ("random", "hard") else loss(x.astype(np.float32), y))
        want = REFERENCES[name](x, y, draws, margin, soft, kind)
        assert want > 0
        assert got == pytest.approx(want, rel=1e-4, abs=1e-5), (seed, got, want)


@pytest.mark.parametrize("rule", ["random", "hard"])
def test_in_batch_loss_trains_on_the_triplets_its_numpy_twin_names(rule):
    """selection.in_batch_triplets (the report's examples) and the loss agree triplet for triplet."""
    from tripletml.selection import in_batch_triplets

    for seed in range(10):
        rng = np.random.default_rng(seed)
        y = rng.permutation(np.repeat(rng.permutation(20)[:6], rng.integers(2, 7, 6)))
        x = rng.normal(size=(len(y), 5)).astype(np.float32)
        draws = rng.random((len(y), 6, 2)).astype(np.float32)
        a, p, n = in_batch_triplets(x, y, draws, rule)
        per = triplet_margin_loss(x[a], x[p], x[n], margin=1.0, reduction="none")
        assert float(get_loss(rule, margin=1.0)(x, y, draws)) == pytest.approx(float(np.mean(per)), rel=1e-5)


def test_in_batch_rules_refuse_too_few_draws():
    y = np.repeat([0, 1], 4)
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="draws must hold"):
        get_loss("hard")(x, y, np.zeros((8, 2, 2), np.float32))  # 3 positives per anchor, 2 draws


def test_in_batch_hard_takes_the_drawn_class_nearest_drawing():
    # 1-D points: class 0 at 0 and 1, class 1 at 2 and 9, class 2 at 5 and 6.
    x = np.array([[0.0], [1.0], [2.0], [9.0], [5.0], [6.0]], np.float32)
    y = np.array([0, 0, 1, 1, 2, 2])
    draws = np.zeros((6, 1, 2))  # every pair draws the first class other than its own ...
    draws[1, 0, 0] = 0.9  # ... but anchor 1's pair draws the second (class 2)
    # (0,1) vs class 1's nearest (2): 1 - 4 + 10 = 7;  (1,0) vs class 2's nearest (5): 1 - 16 + 10 < 0
    # (2,9) vs class 0's nearest (1): 49 - 1 + 10 = 58; (9,2) vs 1: 49 - 64 + 10 < 0
    # (5,6) vs 1: 1 - 16 + 10 < 0;                     (6,5) vs 1: 1 - 25 + 10 < 0
    stats = InBatchHardTripletLoss(margin=10.0).compute(x, y, draws)
    assert float(stats["loss"]) == pytest.approx((7 + 58) / 6)
    assert float(stats["fraction_active"]) == pytest.approx(2 / 6)
    assert int(stats["num_valid"]) == 6


def test_in_batch_rules_without_draws_draw_with_tf_random():
    # Two classes of one and two drawings: nothing left to chance, the loss is exact.
    x = np.array([[0.0], [1.0], [3.0]], np.float32)
    y = np.array([0, 0, 1])
    for loss in (InBatchRandomTripletLoss(margin=5.0), InBatchHardTripletLoss(margin=5.0)):
        assert float(loss(x, y)) == pytest.approx(((1 - 9 + 5) * 0 + (1 - 4 + 5)) / 2)
    # Two drawings per class: the random drawing varies between calls, within the bounds
    # of always-nearest (hard, the largest loss) and always-farthest.
    x = np.array([[0.0], [1.0], [2.0], [4.0]], np.float32)
    y = np.array([0, 0, 1, 1])
    nearest, farthest = (17 + 20 + 23 + 15) / 4, (5 + 12 + 20 + 8) / 4  # margin 20
    assert float(InBatchHardTripletLoss(margin=20.0)(x, y)) == pytest.approx(nearest)
    values = {round(float(InBatchRandomTripletLoss(margin=20.0)(x, y)), 4) for _ in range(30)}
    assert len(values) > 1
    assert all(farthest - 1e-4 <= v <= nearest + 1e-4 for v in values)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_all_fraction_active(kind):
    x, y = _random_batch(5)
    stats = BatchAllTripletLoss(margin=0.3, distance=kind).compute(x.astype(np.float32), y)
    _, fraction = _ref_batch_all(x, y, 0.3, False, kind)
    assert 0 < fraction < 1
    assert float(stats["fraction_active"]) == pytest.approx(fraction, abs=1e-6)


def test_semi_hard_fallback_takes_easiest_negative():
    # 1-D points: anchor 0 and positive 10 (class 0), negatives at 1 and 3 (class 1).
    x = np.array([[0.0], [10.0], [1.0], [3.0]], np.float32)
    y = np.array([0, 0, 1, 1])
    # (0,10): no negative farther than 100 -> easiest, 9: 100 - 9 + .2 = 91.2
    # (10,0): none farther than 100 -> easiest, 81: 19.2; class-1 pairs have a
    # farther negative and satisfy the margin -> 0. Mean over the 4 pairs.
    stats = SemiHardTripletLoss(margin=0.2).compute(x, y)
    assert float(stats["loss"]) == pytest.approx((91.2 + 19.2) / 4, rel=1e-6)
    assert float(stats["fraction_semihard"]) == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("kind", KINDS)
def test_zero_when_margins_hold(name, kind):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 4)
    centres = 5.0 * np.eye(6)[labels]  # orthogonal: far apart for every kind
    x = (centres + 0.01 * rng.normal(size=centres.shape)).astype(np.float32)
    assert float(get_loss(name, margin=0.2, distance=kind)(x, labels)) == 0.0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_gradients_where_margin_violated(name, soft, kind):
    x, y = _random_batch(3)
    var = tf.Variable(x.astype(np.float32))
    loss = get_loss(name, margin=1.0, soft=soft, distance=kind)
    with tf.GradientTape() as tape:
        value = loss(var, y)
    grad = tape.gradient(value, var).numpy()
    assert float(value) > 0
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 1e-4


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("kind", KINDS)
def test_degenerate_batches_are_finite(name, kind):
    loss = get_loss(name, margin=0.2, distance=kind)
    # Collapsed embeddings (all distances 0): finite loss and gradient.
    var = tf.Variable(np.ones((6, 3), np.float32))
    with tf.GradientTape() as tape:
        value = loss(var, np.array([0, 0, 1, 1, 2, 2]))
    assert float(value) == pytest.approx(0.2, abs=1e-6)
    assert np.all(np.isfinite(tape.gradient(value, var).numpy()))
    # No valid triplet (one class, or all classes distinct): zero, not NaN.
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    assert float(loss(x, np.zeros(5, int))) == 0.0
    assert float(loss(x, np.arange(5))) == 0.0


def test_registry():
    assert set(LOSSES) == {"batch_all", "batch_hard", "semi_hard", "random", "hard"}
    loss = get_loss("batch_hard", margin=0.5, soft=True, distance="euclidean")
    assert isinstance(loss, BatchHardTripletLoss)
    assert (loss.margin, loss.soft, loss.distance) == (0.5, True, "euclidean")
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    with pytest.raises(ValueError, match="hardest"):
        get_loss("hardest")
    with pytest.raises(ValueError, match="chebyshev"):
        get_loss("batch_all", distance="chebyshev")
    with pytest.raises(ValueError, match="margin"):
        BatchAllTripletLoss(margin=-1)


def test_keras_batch_loss_wrapper():
    x, y = _random_batch(2)
    wrapped = KerasBatchTripletLoss("semi_hard", margin=0.7)
    direct = SemiHardTripletLoss(margin=0.7)(x.astype(np.float32), y)
    assert float(wrapped(y, x.astype(np.float32))) == pytest.approx(float(direct), rel=1e-6)
    clone = keras.losses.deserialize(keras.losses.serialize(wrapped))
    assert isinstance(clone, KerasBatchTripletLoss)
    assert clone.batch_loss.get_config() == wrapped.batch_loss.get_config()


# ---------------------------------------------------------------- assignment loss


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_triplet_loss_matches_bruteforce(soft, kind):
    rng = np.random.default_rng(7)
    a, p, n = rng.normal(size=(3, 10, 5))
    want = np.mean(
        [_hinge(_dist(a[i], p[i], kind) - _dist(a[i], n[i], kind), 0.4, soft) for i in range(10)]
    )
    y_pred = np.concatenate([a, p, n], axis=1).astype(np.float32)
    loss = TripletLoss(margin=0.4, soft=soft, distance=kind)
    assert float(loss(np.zeros((10, 1)), y_pred)) == pytest.approx(want, rel=1e-5)
    got = triplet_margin_loss(*(v.astype(np.float32) for v in (a, p, n)), 0.4, soft, kind)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_triplet_loss_default_is_squared_l2_hinge():
    a = np.array([[0.0, 0.0], [0.0, 0.0]], np.float32)
    p = np.array([[1.0, 0.0], [0.0, 0.1]], np.float32)
    n = np.array([[0.0, 2.0], [0.0, 0.2]], np.float32)
    # Row 0: 1 - 4 + .2 < 0 -> 0; row 1: .01 - .04 + .2 = .17.
    y_pred = np.concatenate([a, p, n], axis=1)
    assert float(TripletLoss()(np.zeros(2), y_pred)) == pytest.approx(0.17 / 2, rel=1e-5)
    value = TripletLoss(margin=0.2)
    var = tf.Variable(y_pred)
    with tf.GradientTape() as tape:
        out = value(np.zeros(2), var)
    grad = tape.gradient(out, var).numpy()
    assert np.all(grad[0] == 0) and np.abs(grad[1]).sum() > 0


def test_triplet_loss_serialises():
    loss = TripletLoss(margin=0.35, soft=False, distance="euclidean")
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, TripletLoss)
    assert (clone.margin, clone.soft, clone.distance) == (0.35, False, "euclidean")


# ---------------------------------------------------------------- training and collapse


def _blob_data(rng, classes=8, per_class=24, size=16):
    """Class prototypes: a shared coarse 4x4 pattern (so classes start out close)
    plus a class-specific binary one, blown up to size x size; samples add noise."""
    common = rng.random((4, 4))
    protos = 0.7 * common + 0.3 * (rng.random((classes, 4, 4)) < 0.5)
    protos = protos.repeat(size // 4, axis=1).repeat(size // 4, axis=2)
    labels = np.repeat(np.arange(classes), per_class)
    images = protos[labels] + 0.5 * rng.normal(size=(len(labels), size, size))
    return np.clip(images, 0, 1).astype(np.float32)[..., None], labels


def _triplets(rng, labels, count):
    a = rng.integers(0, len(labels), count)
    same = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    p = np.array([rng.choice(same[labels[i]]) for i in a])
    n = np.array([rng.choice(np.flatnonzero(labels != labels[i])) for i in a])
    return np.stack([a, p, n], axis=1)


def test_training_lowers_triplet_loss_without_collapse():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels = _blob_data(rng, per_class=72)
    held_out = np.arange(len(labels)) % 72 >= 64  # 8 unseen samples per class
    embed = build_embedding("convnet", 16, embedding_dim=16, filters=[8, 16])
    net = build_triplet_network(embed, 16)
    margin = 0.2
    net.compile(optimizer=keras.optimizers.Adam(3e-3), loss=TripletLoss(margin))

    test_x, test_y = images[held_out], labels[held_out]
    fresh = _triplets(rng, test_y, 400)
    before = float(net.evaluate(test_x[fresh], np.zeros(len(fresh)), verbose=0))
    train_x, train_y = images[~held_out], labels[~held_out]
    train = _triplets(rng, train_y, 32 * 300)  # 300 Adam steps
    net.fit(train_x[train], np.zeros(len(train)), batch_size=32, epochs=1, verbose=0)
    after = float(net.evaluate(test_x[fresh], np.zeros(len(fresh)), verbose=0))

    assert before > 0.5 * margin  # the task is not solved at init
    assert after < 0.5 * margin  # on unseen samples
    emb = embed.predict(images, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert not is_collapsed(emb, loss=after, margin=margin)


def test_collapse_flags():
    rng = np.random.default_rng(0)
    point = rng.normal(size=64)
    # All rows the same point.
    assert is_collapsed(np.tile(point, (50, 1)))
    assert is_collapsed(np.zeros((10, 8)))
    assert "one point" in collapse_reason(np.tile(point, (50, 1)) + 1e-9 * rng.normal(size=(50, 64)))
    # Small spread: fine on its own, collapsed once the loss sits at the margin.
    unit = point / np.linalg.norm(point)
    near = unit + 1e-3 * rng.normal(size=(50, 64))
    assert not is_collapsed(near)
    assert not is_collapsed(near, loss=0.05, margin=0.2)
    assert is_collapsed(near, loss=0.2, margin=0.2)
    assert "stuck" in collapse_reason(near, loss=0.2001, margin=0.2)
    assert is_collapsed(near, loss=np.log(2), soft=True)  # softplus(0)
    assert not is_collapsed(near, loss=0.2, margin=0.2, soft=True)
    # Non-finite embeddings.
    bad = rng.normal(size=(5, 4))
    bad[2, 1] = np.nan
    assert is_collapsed(bad)
    # A constant network (zero kernel): every image gets the same embedding.
    const = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, kernel_initializer="zeros", bias_initializer="ones")]
    )
    assert is_collapsed(const.predict(rng.normal(size=(20, 16)), verbose=0))


@pytest.mark.parametrize("dim", [64, 128])
def test_collapse_silent_on_random_unit_embeddings(dim):
    rng = np.random.default_rng(dim)
    emb = rng.normal(size=(200, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert collapse_reason(emb) is None
    # Even a loss right at the margin is no collapse while embeddings are spread.
    assert not is_collapsed(emb, loss=0.2, margin=0.2)


def test_collapse_silent_on_random_init_network():
    rng = np.random.default_rng(1)
    images, _ = _blob_data(rng, size=28)
    keras.utils.set_random_seed(1)
    emb = build_embedding("convnet", 28).predict(images, verbose=0)
    a, p, n = emb[0::3][:50], emb[1::3][:50], emb[2::3][:50]
    assert not is_collapsed(emb, loss=float(triplet_margin_loss(a, p, n)), margin=0.2)

"""Tests for tripletml.losses: the triplet margin loss over index tuples against a float64
brute force, its reducers, gradients, the Keras adaptor, and the collapse check."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from references import dist as _dist

from tripletml.distances import DISTANCES
from tripletml.losses import TripletLoss, TripletMarginLoss, collapse_reason
from tripletml.models import build_embedding, build_triplet_network

KINDS = sorted(DISTANCES)


def _hinge(diff, margin, soft):
    return np.logaddexp(0.0, diff) if soft else max(diff + margin, 0.0)


def _reference(x, triplets, margin, soft, kind, reducer):
    values = [_hinge(_dist(x[a], x[p], kind) - _dist(x[a], x[n], kind), margin, soft) for a, p, n in triplets]
    kept = [v for v in values if v > 0] if reducer == "mean_nonzero" else values
    return (float(np.mean(kept)) if kept else 0.0), sum(v > 0 for v in values) / len(values)


def _case(seed, n=12, dim=5, t=40):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    triplets = rng.integers(0, n, size=(t, 3))
    triplets[:, 1] = (triplets[:, 0] + 1 + rng.integers(0, n - 1, t)) % n  # p != a
    return x, triplets


@pytest.mark.parametrize("reducer", ["mean", "mean_nonzero"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_matches_bruteforce(reducer, soft, kind):
    x, triplets = _case(3)
    want, active = _reference(x, triplets, 0.7, soft, kind, reducer)
    loss = TripletMarginLoss(margin=0.7, soft=soft, distance=kind, reducer=reducer)
    got = loss.compute(x, tuple(triplets.T))
    assert float(got["loss"]) == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert float(got["fraction_active"]) == pytest.approx(active)
    assert int(got["triplets"]) == len(triplets)


def test_mean_nonzero_ignores_easy_triplets_mean_does_not():
    # Points on a line, squared L2, margin 4: (0, 1, 3) is easy (1 - 25 + 4 < 0), (0, 1, 2) gives 1 - 4 + 4 = 1.
    x = np.array([[0.0], [1.0], [2.0], [5.0]])
    easy, hard = (0, 1, 3), (0, 1, 2)  # sq distances: d_ap = 1; d_an = 25 (easy), 4 (hard)
    idx = tuple(np.array([easy, hard]).T)
    assert float(TripletMarginLoss(margin=4.0, reducer="mean")(x, idx)) == pytest.approx((0 + 1.0) / 2)
    assert float(TripletMarginLoss(margin=4.0, reducer="mean_nonzero")(x, idx)) == pytest.approx(1.0)


def test_no_triplets_gives_zero_with_zero_gradient():
    x = tf.Variable(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32))
    empty = (tf.zeros(0, tf.int32),) * 3
    with tf.GradientTape() as tape:
        value = TripletMarginLoss(reducer="mean_nonzero")(x, empty)
    assert float(value) == 0.0
    assert np.all(tape.gradient(value, x).numpy() == 0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_moves_only_the_violating_triplets_points(kind):
    # (0, 1, 2): the negative is nearer the anchor than the positive; (3, 4, 5) holds margin 0.5.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, 0.05], [0.0, -1.0]], np.float32)
    var = tf.Variable(x)
    with tf.GradientTape() as tape:
        value = TripletMarginLoss(margin=0.5, distance=kind)(var, ([0, 3], [1, 4], [2, 5]))
    grad = tape.gradient(value, var).numpy()
    assert float(value) > 0 and np.all(np.isfinite(grad))
    assert np.all(np.abs(grad[:3]).sum(axis=1) > 0)
    assert np.all(grad[3:] == 0)


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="margin"):
        TripletMarginLoss(margin=-1)
    with pytest.raises(ValueError, match="reducer"):
        TripletMarginLoss(reducer="sum")
    with pytest.raises(ValueError, match="distance"):
        TripletMarginLoss(distance="manhattan")


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_keras_adaptor_matches_bruteforce(soft, kind):
    rng = np.random.default_rng(7)
    a, p, n = rng.normal(size=(3, 10, 5))
    want = np.mean([_hinge(_dist(a[i], p[i], kind) - _dist(a[i], n[i], kind), 0.4, soft) for i in range(10)])
    y_pred = np.concatenate([a, p, n], axis=1).astype(np.float32)
    assert float(TripletLoss(margin=0.4, soft=soft, distance=kind)(np.zeros((10, 1)), y_pred)) == pytest.approx(want, rel=1e-5)


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
    assert collapse_reason(emb, loss=after, margin=margin) is None


def test_collapse_flags():
    rng = np.random.default_rng(0)
    point = rng.normal(size=64)
    # All rows the same point.
    assert collapse_reason(np.tile(point, (50, 1))) is not None
    assert collapse_reason(np.zeros((10, 8))) is not None
    assert "one point" in collapse_reason(np.tile(point, (50, 1)) + 1e-9 * rng.normal(size=(50, 64)))
    # Small spread: fine on its own, collapsed once the loss sits at the margin.
    unit = point / np.linalg.norm(point)
    near = unit + 1e-3 * rng.normal(size=(50, 64))
    assert collapse_reason(near) is None
    assert collapse_reason(near, loss=0.05, margin=0.2) is None
    assert collapse_reason(near, loss=0.2, margin=0.2) is not None
    assert "stuck" in collapse_reason(near, loss=0.2001, margin=0.2)
    assert collapse_reason(near, loss=np.log(2), soft=True)  # softplus(0) is not None
    assert collapse_reason(near, loss=0.2, margin=0.2, soft=True) is None
    # Non-finite embeddings.
    bad = rng.normal(size=(5, 4))
    bad[2, 1] = np.nan
    assert collapse_reason(bad) is not None
    # A constant network (zero kernel): every image gets the same embedding.
    const = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, kernel_initializer="zeros", bias_initializer="ones")]
    )
    assert collapse_reason(const.predict(rng.normal(size=(20, 16)), verbose=0)) is not None


@pytest.mark.parametrize("dim", [64, 128])
def test_collapse_silent_on_random_unit_embeddings(dim):
    rng = np.random.default_rng(dim)
    emb = rng.normal(size=(200, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert collapse_reason(emb) is None
    # Even a loss right at the margin is no collapse while embeddings are spread.
    assert collapse_reason(emb, loss=0.2, margin=0.2) is None


def test_collapse_silent_on_random_init_network():
    rng = np.random.default_rng(1)
    images, _ = _blob_data(rng, size=28)
    keras.utils.set_random_seed(1)
    emb = build_embedding("convnet", 28).predict(images, verbose=0)
    a, p, n = emb[0::3][:50], emb[1::3][:50], emb[2::3][:50]
    loss = float(TripletLoss(margin=0.2)(np.zeros(len(a)), np.concatenate([a, p, n], axis=1)))
    assert collapse_reason(emb, loss=loss, margin=0.2) is None

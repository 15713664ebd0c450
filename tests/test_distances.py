import numpy as np
import pytest
import tensorflow as tf

from tripletml.distances import (
    DISTANCES,
    paired_distances,
    pairwise_distances,
)


def _reference(a, b, kind):
    """Brute-force float64 distances, one pair at a time."""
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            diff = a[i] - b[j]
            if kind == "sqeuclidean":
                out[i, j] = diff @ diff
            elif kind == "euclidean":
                out[i, j] = np.sqrt(diff @ diff)
            else:
                out[i, j] = 1 - a[i] @ b[j] / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
    return out


@pytest.mark.parametrize("kind", sorted(DISTANCES))
def test_pairwise_matches_reference(kind):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5))
    b = rng.normal(size=(4, 5))
    np.testing.assert_allclose(
        pairwise_distances(a.astype(np.float32), b.astype(np.float32), kind).numpy(),
        _reference(a, b, kind), rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    # b=None means a vs itself, with an exactly zero diagonal.
    d = pairwise_distances(tf.constant(a), kind=kind).numpy()
    assert d.dtype == np.float64
    np.testing.assert_allclose(d, _reference(a, a, kind), atol=1e-10)
    assert np.all(np.diag(d) == 0)
    # Row-wise version agrees with the matrix diagonal.
    np.testing.assert_allclose(
        paired_distances(a[:4], b, kind).numpy(), np.diag(_reference(a[:4], b, kind)), atol=1e-10
    )


@pytest.mark.parametrize("kind", sorted(DISTANCES))
def test_gradient_finite_at_zero_distance(kind):
    # Identical rows: every distance is 0, where sqrt's derivative is infinite.
    x = tf.Variable(np.ones((4, 3), np.float32))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(pairwise_distances(x, kind=kind)) + tf.reduce_sum(
            paired_distances(x, x + 0.0, kind)
        )
    grad = tape.gradient(total, x).numpy()
    assert np.all(np.isfinite(grad))


def test_euclidean_gradient_nonzero_away_from_zero():
    x = tf.Variable([[0.0, 0.0], [3.0, 4.0]])
    with tf.GradientTape() as tape:
        d = pairwise_distances(x, kind="euclidean")[0, 1]
    assert float(d) == pytest.approx(5.0)
    np.testing.assert_allclose(tape.gradient(d, x).numpy(), [[-0.6, -0.8], [0.6, 0.8]], rtol=1e-6)


def test_unknown_kind():
    with pytest.raises(ValueError, match="manhattan"):
        pairwise_distances(np.zeros((2, 2)), kind="manhattan")
    with pytest.raises(ValueError, match="manhattan"):
        paired_distances(np.zeros((2, 2)), np.zeros((2, 2)), kind="manhattan")

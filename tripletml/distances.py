"""Pairwise distances between embeddings, in TensorFlow (for losses) and NumPy (for
evaluation and mining).

All TensorFlow distances are differentiable everywhere, including at d = 0 (the
diagonal of ``pairwise_distances(x)``, and every pair once embeddings collapse),
so a loss built on them never produces NaN gradients.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

# Below this a squared distance counts as zero for the Euclidean square root: its
# gradient 1 / (2 sqrt(d)) is infinite at 0, so those entries are masked out.
_SQRT_EPS = 1e-12


def _as_float_tensor(x) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    # Keep float64 inputs in float64 (reference comparisons); everything else
    # (ints, float16) computes in float32.
    if x.dtype not in (tf.float32, tf.float64):
        x = tf.cast(x, tf.float32)
    return x


def _pairwise_sqeuclidean(a: tf.Tensor, b: tf.Tensor, same: bool) -> tf.Tensor:
    # |a|^2 - 2 a.b + |b|^2: one matmul instead of an (n, m, D) difference tensor.
    a2 = tf.reduce_sum(tf.square(a), axis=1, keepdims=True)
    b2 = tf.reduce_sum(tf.square(b), axis=1, keepdims=True)
    d = a2 - 2.0 * tf.matmul(a, b, transpose_b=True) + tf.transpose(b2)
    # Cancellation can leave small negatives; distances are non-negative.
    d = tf.maximum(d, 0.0)
    return _zero_diagonal(d) if same else d


def _zero_diagonal(d: tf.Tensor) -> tf.Tensor:
    # d(x, x) is exactly 0, not rounding noise.
    return tf.linalg.set_diag(d, tf.zeros(tf.shape(d)[:1], dtype=d.dtype))


def _safe_sqrt(d: tf.Tensor) -> tf.Tensor:
    # Double-where trick: the masked branch sees 1.0, so neither the value nor the
    # gradient of sqrt is ever evaluated at 0.
    zero = d <= _SQRT_EPS
    safe = tf.where(zero, tf.ones_like(d), d)
    return tf.where(zero, tf.zeros_like(d), tf.sqrt(safe))


def _pairwise_euclidean(a: tf.Tensor, b: tf.Tensor, same: bool) -> tf.Tensor:
    return _safe_sqrt(_pairwise_sqeuclidean(a, b, same))


def _pairwise_cosine(a: tf.Tensor, b: tf.Tensor, same: bool) -> tf.Tensor:
    an = tf.math.l2_normalize(a, axis=1)
    bn = an if same else tf.math.l2_normalize(b, axis=1)
    d = 1.0 - tf.matmul(an, bn, transpose_b=True)
    # Rounding can take 1 - cos slightly outside [0, 2].
    d = tf.clip_by_value(d, 0.0, 2.0)
    return _zero_diagonal(d) if same else d


DISTANCES: dict[str, Callable[[tf.Tensor, tf.Tensor, bool], tf.Tensor]] = {
    "sqeuclidean": _pairwise_sqeuclidean,
    "euclidean": _pairwise_euclidean,
    "cosine": _pairwise_cosine,
}


def check_distance(kind: str) -> str:
    """Return ``kind`` if it names a known distance, else raise a ValueError."""
    if kind not in DISTANCES:
        raise ValueError(
            f"unknown distance kind {kind!r}; expected one of {sorted(DISTANCES)}"
        )
    return kind


def pairwise_distances(a, b=None, kind: str = "sqeuclidean") -> tf.Tensor:
    """Distances between every row of ``a`` (n, D) and every row of ``b`` (m, D).

    ``b=None`` means ``b = a`` (the diagonal is then exactly zero). Returns an
    (n, m) tensor. ``kind`` is one of :data:`DISTANCES`: "sqeuclidean",
    "euclidean" (gradient-safe at 0) or "cosine" (1 - cosine similarity).
    Accepts tf tensors or NumPy arrays; float64 input stays float64.
    """
    fn = DISTANCES[check_distance(kind)]
    a = _as_float_tensor(a)
    if b is None:
        return fn(a, a, True)
    b = tf.cast(_as_float_tensor(b), a.dtype)
    return fn(a, b, False)


def paired_distances(a, b, kind: str = "sqeuclidean") -> tf.Tensor:
    """Row-wise distances d(a[i], b[i]) of two (n, D) arrays -> (n,) tensor."""
    check_distance(kind)
    a = _as_float_tensor(a)
    b = tf.cast(_as_float_tensor(b), a.dtype)
    if kind == "cosine":
        cos = tf.reduce_sum(
            tf.math.l2_normalize(a, axis=-1) * tf.math.l2_normalize(b, axis=-1), axis=-1
        )
        return tf.clip_by_value(1.0 - cos, 0.0, 2.0)
    d = tf.reduce_sum(tf.square(a - b), axis=-1)
    return _safe_sqrt(d) if kind == "euclidean" else d

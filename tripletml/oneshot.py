"""N-way one-shot evaluation, vectorised (the course's own functions: :mod:`tripletml.course`).

A task is a query image of one character and N support images of N *different*
characters, exactly one of which is another drawing (different drawing index) of the
query's character. A model answers by picking the support image whose embedding is
nearest (squared L2) to the query's.

Task sets are stored as index arrays (:class:`OneShotTasks`) rather than images, so
that

* sampling is one vectorised draw instead of a Python loop per task,
* evaluation embeds every image the tasks use exactly once (:func:`embed_set`) and then
  scores all tasks by indexing into the embedding table (:func:`evaluate_tasks`),
* the same seed gives the very same tasks, so every model and every training loop can
  be scored on identical tasks and compared with a paired test (:func:`mcnemar_exact`).

Modes:

* ``"across"`` (course default): the N characters come from the whole set.
* ``"within"`` (Lake et al.): an alphabet is drawn uniformly per task among those with
  at least N characters, and all N characters come from it.
* ``"language"``: all N characters come from one named alphabet.

Unlike the course code, every character of an alphabet can be drawn, including its
last one (the course's range had an off-by-one that never drew it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "OneShotTasks",
    "OneShotResult",
    "sample_tasks",
    "embed_set",
    "predict_tasks",
    "centre_on_candidates",
    "evaluate_tasks",
    "wilson_interval",
    "mcnemar_exact",
]

Embedder = Callable[[np.ndarray], np.ndarray]
Alphabets = Mapping[str, Sequence[int]]

# Largest temporary (elements) built at once when sampling or scoring, so k can be
# large without a k x n_chars or k x N x D array blowing up memory.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class OneShotTasks:
    """k one-shot tasks as indices into a (n_characters, n_drawings, ...) array.

    ``support_chars[i, target[i]] == query_char[i]`` is the true match of task i; every
    other support character differs from it and from each other.
    """

    query_char: np.ndarray  # (k,) int64
    query_drawing: np.ndarray  # (k,) int64
    support_chars: np.ndarray  # (k, N) int64
    support_drawings: np.ndarray  # (k, N) int64
    target: np.ndarray  # (k,) int64, position of the true match in the support set
    N: int
    mode: str  # "across" | "within" | "language"
    language: str | None = None

    def __len__(self) -> int:
        return int(self.query_char.shape[0])

    @property
    def k(self) -> int:
        return len(self)

    def images(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gather ``(query (k, ...), support (k, N, ...))`` images from ``X``."""
        return X[self.query_char, self.query_drawing], X[self.support_chars, self.support_drawings]

    def used_pairs(self, n_drawings: int) -> np.ndarray:
        """Sorted unique flat indices ``char * n_drawings + drawing`` of all used images."""
        q = self.query_char * n_drawings + self.query_drawing
        s = self.support_chars * n_drawings + self.support_drawings
        return np.unique(np.concatenate([q, s.ravel()]))


@dataclass(frozen=True)
class OneShotResult:
    """Details returned by ``test_oneshot(..., return_details=True)``."""

    percent: float
    correct: np.ndarray  # (k,) bool, per task
    tasks: OneShotTasks
    interval: tuple[float, float]  # 95% Wilson interval, in percent

    def __float__(self) -> float:
        return self.percent


# ---------------------------------------------------------------------------- sampling


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _distinct(rng: np.random.Generator, t: int, m: int, N: int) -> np.ndarray:
    """(t, N) offsets in [0, m), distinct within each row, in uniformly random order.

    The N smallest of m i.i.d. uniform keys are a uniform N-subset; sorting them by key
    makes their order a uniform permutation too (argpartition's order is not random).
    """
    out = np.empty((t, N), dtype=np.int64)
    rows = max(1, _CHUNK_ELEMENTS // max(m, 1))
    for lo in range(0, t, rows):  # chunks of tasks, only to bound memory
        keys = rng.random((min(rows, t - lo), m), dtype=np.float32)
        idx = np.argpartition(keys, N - 1, axis=1)[:, :N] if N < m else np.argsort(keys, axis=1)
        order = np.argsort(np.take_along_axis(keys, idx, axis=1), axis=1)
        out[lo : lo + len(keys)] = np.take_along_axis(idx, order, axis=1)
    return out


def _ranges(c: Alphabets | None, n_chars: int) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for name, (start, stop) in (c or {}).items():
        start, stop = int(start), int(stop)
        if not 0 <= start < stop <= n_chars:
            raise ValueError(f"alphabet {name!r} has range [{start}, {stop}) outside [0, {n_chars})")
        out[name] = (start, stop)
    return out


def sample_tasks(
    c: Alphabets | None,
    n_chars: int,
    N: int,
    k: int,
    rng: np.random.Generator | int | None = None,
    *,
    within_alphabet: bool = False,
    language: str | None = None,
    n_drawings: int = 20,
) -> OneShotTasks:
    """Draw k N-way one-shot tasks, vectorised.

    ``c`` maps alphabet -> (start, stop) (half-open) and is only needed for the
    within-alphabet and ``language`` modes. ``rng`` is a numpy Generator or a seed.
    Raises ValueError if the chosen alphabet (or the whole set) has fewer than N
    characters, or if no alphabet has N characters in within-alphabet mode.
    """
    N, k, n_chars, n_drawings = int(N), int(k), int(n_chars), int(n_drawings)
    if N < 1 or k < 0:
        raise ValueError(f"need N >= 1 and k >= 0, got N={N}, k={k}")
    if n_drawings < 2:
        raise ValueError(f"need >= 2 drawings per character to pose a task, got {n_drawings}")
    if language is not None and within_alphabet:
        raise ValueError("give either language or within_alphabet=True, not both")
    rng = _as_rng(rng)
    ranges = _ranges(c, n_chars)

    if language is not None:
        if language not in ranges:
            raise ValueError(f"unknown alphabet {language!r}; known: {sorted(ranges)}")
        start, stop = ranges[language]
        if stop - start < N:
            raise ValueError(
                f"alphabet {language!r} has only {stop - start} characters, fewer than N={N}"
            )
        mode = "language"
        chars = start + _distinct(rng, k, stop - start, N)
    elif within_alphabet:
        eligible = [(s, e) for s, e in ranges.values() if e - s >= N]
        if not eligible:
            sizes = {name: e - s for name, (s, e) in ranges.items()}
            raise ValueError(f"no alphabet has N={N} characters (sizes: {sizes})")
        mode = "within"
        which = rng.integers(len(eligible), size=k)
        chars = np.empty((k, N), dtype=np.int64)
        for a, (start, stop) in enumerate(eligible):  # one vectorised draw per alphabet
            rows = np.flatnonzero(which == a)
            chars[rows] = start + _distinct(rng, len(rows), stop - start, N)
    else:
        if n_chars < N:
            raise ValueError(f"the set has only {n_chars} characters, fewer than N={N}")
        mode = "across"
        chars = _distinct(rng, k, n_chars, N)

    rows = np.arange(k)
    target = rng.integers(N, size=k)
    query_drawing = rng.integers(n_drawings, size=k)
    drawings = rng.integers(n_drawings, size=(k, N))
    # The match is a *different* drawing: shift the query's index by 1..n_drawings-1.
    drawings[rows, target] = (query_drawing + rng.integers(1, n_drawings, size=k)) % n_drawings
    return OneShotTasks(
        query_char=chars[rows, target],
        query_drawing=query_drawing,
        support_chars=chars,
        support_drawings=drawings,
        target=target,
        N=N,
        mode=mode,
        language=language,
    )


# -------------------------------------------------------------------------- evaluation


def _embed_batches(embed: Embedder, images: np.ndarray, batch_size: int) -> np.ndarray:
    outs = []
    for lo in range(0, len(images), batch_size):  # batches, not images
        e = np.asarray(embed(images[lo : lo + batch_size]), dtype=np.float32)
        if e.ndim != 2 or len(e) != len(images[lo : lo + batch_size]):
            raise ValueError(f"embedder must return (n, D); got {e.shape} for n={len(images[lo:lo + batch_size])}")
        outs.append(e)
    return np.concatenate(outs, axis=0)


def embed_set(
    embed: Embedder,
    X: np.ndarray,
    batch_size: int = 1024,
    used: OneShotTasks | None = None,
) -> np.ndarray:
    """Embed every image of ``X`` (n, n_drawings, S, S) once, in batches -> (n, n_drawings, D).

    With ``used=tasks`` only the distinct images those tasks use are embedded; the other
    rows of the table are NaN so that an accidental use of them cannot go unnoticed.
    """
    n, d = X.shape[:2]
    flat = X.reshape((n * d,) + X.shape[2:])  # a view for a contiguous X
    if used is None:
        return _embed_batches(embed, flat, batch_size).reshape(n, d, -1)
    ids = used.used_pairs(d)
    e = _embed_batches(embed, flat[ids], batch_size)
    table = np.full((n * d, e.shape[1]), np.nan, dtype=np.float32)
    table[ids] = e
    return table.reshape(n, d, -1)


def support_sq_distances(query: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(t, D), (t, N, D) -> (t, N) squared L2. Shared with the reference so ties agree."""
    diff = support - query[:, None, :]
    return np.einsum("tnd,tnd->tn", diff, diff)


def centre_on_candidates(query: np.ndarray, support: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, D), (t, N, D) -> the same, moved by each task's mean candidate and put back on the unit sphere.

    A task's candidates share what their whole set has in common (within one alphabet: its
    style); subtracting their mean leaves what tells them apart, and renormalising compares
    those directions (cosine about the task's centre). A shift alone would change no distance.
    The query plays no part in the mean, so a task is scored from what it gives.
    """
    centre = support.mean(axis=1, keepdims=True)
    q, s = query - centre[:, 0], support - centre

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    return unit(q), unit(s)


def predict_tasks(embeddings: np.ndarray, tasks: OneShotTasks, centre: bool = False) -> np.ndarray:
    """(k,) support position nearest to each query (first one on ties).

    ``centre``: compare embeddings about each task's mean candidate (:func:`centre_on_candidates`).
    """
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be (n_chars, n_drawings, D), got {embeddings.shape}")
    k, N = tasks.support_chars.shape
    pred = np.empty(k, dtype=np.int64)
    rows = max(1, _CHUNK_ELEMENTS // max(N * embeddings.shape[2], 1))
    for lo in range(0, k, rows):  # chunks of tasks, only to bound memory
        sl = slice(lo, lo + rows)
        q = embeddings[tasks.query_char[sl], tasks.query_drawing[sl]]
        s = embeddings[tasks.support_chars[sl], tasks.support_drawings[sl]]
        if centre:
            q, s = centre_on_candidates(q, s)
        pred[sl] = np.argmin(support_sq_distances(q, s), axis=1)
    return pred


def evaluate_tasks(embeddings: np.ndarray, tasks: OneShotTasks, centre: bool = False) -> np.ndarray:
    """(k,) bool: whether the nearest support embedding is the true match."""
    return predict_tasks(embeddings, tasks, centre) == tasks.target


# -------------------------------------------------------------------------- statistics


def percent_correct(correct: np.ndarray) -> float:
    """Percent of ``correct`` that is true, rounded to 3 decimals: the one rule for every
    accuracy the stages write, so every table prints the same digits for the same tasks."""
    correct = np.asarray(correct)
    return round(100.0 * float(correct.mean()), 3) if correct.size else float("nan")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion, as **fractions** in [0, 1].

    Multiply by 100 for percent. No continuity correction.
    """
    successes, n = int(successes), int(n)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    from scipy import stats

    if hasattr(stats, "binomtest"):
        ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
        return float(ci.low), float(ci.high)
    z = stats.norm.ppf(0.5 + confidence / 2)  # closed form for old scipy
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test of two models scored on the same tasks.

    Returns ``dict(b=..., c=..., p_value=...)`` with b = tasks only A got right, c = tasks
    only B got right, and the two-sided binomial p-value of b out of b + c at 1/2
    (1.0 when there are no discordant tasks).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired vectors differ in shape: {a.shape} vs {b_.shape}")
    b, c = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    if b + c == 0:
        return {"b": 0, "c": 0, "p_value": 1.0}
    from scipy import stats

    return {"b": b, "c": c, "p_value": float(stats.binomtest(b, b + c, 0.5).pvalue)}

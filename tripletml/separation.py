"""How well an embedding separates characters: distances of same- and different-character
pairs, their overlap, and a 2-D map of a few alphabets.

Works on an embedding table ``E`` of shape (n_characters, n_drawings, D) (what
:func:`tripletml.oneshot.embed_set` returns and ``data/evaluate/embeddings.npz`` holds) and the
alphabet ranges ``c``. Distances are squared L2, as the one-shot tasks use.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["PAIR_KINDS", "pair_distances", "overlap", "map_characters", "embedding_map"]

Alphabets = Mapping[str, tuple[int, int]]
# same: two drawings of one character; across: two characters drawn from anywhere (mostly other
# alphabets); within: two characters of one alphabet (what a within-alphabet task must tell apart).
PAIR_KINDS = ("same", "across", "within")


def _sq(E: np.ndarray, c1: np.ndarray, d1: np.ndarray, c2: np.ndarray, d2: np.ndarray) -> np.ndarray:
    diff = E[c1, d1].astype(np.float64) - E[c2, d2].astype(np.float64)
    return np.einsum("nd,nd->n", diff, diff)


def pair_distances(E: np.ndarray, c: Alphabets, n_pairs: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n_pairs`` squared distances of each kind in :data:`PAIR_KINDS`, pairs drawn at random."""
    n_chars, n_draw = E.shape[:2]
    d1 = rng.integers(n_draw, size=n_pairs)
    d2 = (d1 + rng.integers(1, n_draw, size=n_pairs)) % n_draw  # another drawing
    same_c = rng.integers(n_chars, size=n_pairs)
    a = rng.integers(n_chars, size=n_pairs)
    b = (a + rng.integers(1, n_chars, size=n_pairs)) % n_chars  # another character
    ranges = np.array([r for r in c.values() if r[1] - r[0] >= 2])  # alphabets with two characters
    sizes = ranges[:, 1] - ranges[:, 0]
    which = rng.choice(len(ranges), size=n_pairs, p=sizes / sizes.sum())  # a character's alphabet, by size
    lo, size = ranges[which, 0], sizes[which]
    wa = rng.integers(size)
    wb = (wa + 1 + (rng.random(n_pairs) * (size - 1)).astype(int)) % size  # another character of that alphabet
    return {
        "same": _sq(E, same_c, d1, same_c, d2),
        "across": _sq(E, a, d1, b, d2),
        "within": _sq(E, lo + wa, d1, lo + wb, d2),
    }


def overlap(same: np.ndarray, different: np.ndarray) -> float:
    """Percent chance that a random different-character pair is closer than a random
    same-character pair (1 - ROC AUC of the distance as a same/different score; ties count half)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(same)), np.zeros(len(different))]
    return 100.0 * (1.0 - roc_auc_score(labels, -np.r_[same, different]))


def map_characters(c: Alphabets, alphabets: int = 3, per_alphabet: int = 10) -> dict[str, np.ndarray]:
    """The characters a map shows: the first ``per_alphabet`` of ``alphabets`` alphabets spread
    over the set (first, middle, last...), by alphabet name."""
    names = list(c)
    picks = np.unique(np.linspace(0, len(names) - 1, min(alphabets, len(names))).round().astype(int))
    return {names[i]: np.arange(c[names[i]][0], min(c[names[i]][1], c[names[i]][0] + per_alphabet)) for i in picks}


def embedding_map(E: np.ndarray, chars: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE coordinates (len(chars) * n_drawings, 2) of every drawing of ``chars``, in that order."""
    from sklearn.manifold import TSNE

    points = E[chars].reshape(-1, E.shape[-1]).astype(np.float64)
    perplexity = min(30.0, (len(points) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)

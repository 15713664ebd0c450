"""Float64 brute-force references the tests compare the library against."""

import numpy as np


def dist(u: np.ndarray, v: np.ndarray, kind: str) -> float:
    """d(u, v) by its definition: squared L2, L2, or 1 - cosine similarity."""
    if kind == "cosine":
        return 1.0 - u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    sq = float((u - v) @ (u - v))
    return np.sqrt(sq) if kind == "euclidean" else sq

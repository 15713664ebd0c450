"""Import the course's pickles (``omniglot_train.p``, ``omniglot_test.p``) safely.

Each holds a tuple ``(X, c)``: X of shape (n, 20, 105, 105) and c a dict
alphabet -> [start, end]. A pickle can run code when loaded, so the unpickler admits
only what numpy arrays and plain containers need and refuses everything else.

Bounds: the sorenbouma-style pickles the course used store *inclusive* upper
bounds (the last character of an alphabet is ``end``); half-open ones also occur.
Both are accepted: the ranges must tile ``0..n`` contiguously, which tells the two
apart unambiguously, and they are converted to this library's half-open form.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from tripletml.data import RAW_SIZE, DataError, OmniglotSet

_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles carry numpy's raw bytes
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, fh, source: str):
        super().__init__(fh, encoding="latin1")  # latin1 reads Python 2 numpy pickles
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"{self.source}: refused to load {module}.{name} (only numpy arrays and plain containers are allowed)")


def _half_open(c: dict, n: int, source: str) -> dict[str, tuple[int, int]]:
    items = sorted(((str(a), int(lo), int(hi)) for a, (lo, hi) in c.items()), key=lambda t: t[1])
    for extra, kind in ((1, "inclusive"), (0, "half-open")):
        ranges = [(a, lo, hi + extra) for a, lo, hi in items]
        starts = [lo for _, lo, _ in ranges]
        stops = [hi for _, _, hi in ranges]
        if starts[0] == 0 and stops[-1] == n and starts[1:] == stops[:-1]:
            return {a: (lo, hi) for a, lo, hi in ranges}
    raise DataError(f"{source}: alphabet ranges in c do not tile the {n} characters of X")


def load_course_pickle(path: str | os.PathLike) -> OmniglotSet:
    """Load a course pickle as raw images (uint8, 1 = paper, 0 = ink), half-open ``c``.

    The drawings of a character keep the pickle's order (it holds no drawer numbers).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(fh, str(path)).load()
    except DataError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable course pickle ({exc})") from exc
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[1], dict)):
        raise DataError(f"{path}: expected a tuple (X, c) with c a dict")
    X, c = np.asarray(obj[0]), obj[1]
    if X.ndim != 4 or X.shape[2:] != (RAW_SIZE, RAW_SIZE):
        raise DataError(f"{path}: X has shape {X.shape}, expected (n, 20, {RAW_SIZE}, {RAW_SIZE})")
    # The course's X holds 0/1 (or 0/255) with white paper high.
    raw = (X >= (128 if X.max() > 1 else 0.5)).astype(np.uint8)
    # Alphabets in name order, as the zip reader gives them (the course's loader kept the
    # file system's order), so both sources prepare the same arrays.
    ranges = sorted(_half_open(c, X.shape[0], str(path)).items())
    order = np.concatenate([np.arange(lo, hi) for _, (lo, hi) in ranges])
    names = [f"{a}/character{i - lo + 1:02d}" for a, (lo, hi) in ranges for i in range(lo, hi)]
    bounds = np.cumsum([0] + [hi - lo for _, (lo, hi) in ranges])
    half = {a: (int(bounds[k]), int(bounds[k + 1])) for k, (a, _) in enumerate(ranges)}
    return OmniglotSet(raw[order], half, names)

"""tripletml: triplet networks and one-shot learning on Omniglot.

Conventions used across the library (the one place they are stated):

* Raw Omniglot images, as decoded from the official PNGs: uint8 arrays of shape
  (n, 105, 105) with 1 = paper (white) and 0 = ink (black).
* Model images ("prepared" images): float32 in [0, 1] with **1 = ink, 0 = paper**,
  shape (n, S, S) or (n, S, S, 1), S = ``data.image_size``. Ink-positive so that
  zero padding and pooling treat the background as nothing. Down-sampling is area
  averaging, so a pixel's value is the fraction of it covered by ink.
* A data set in the course's form: ``X`` of shape (n_characters, 20, S, S) and ``c``,
  a dict alphabet -> (start, stop), a half-open index range into ``X``.
* An embedder is any callable ``embed(images) -> (n, D) float32`` on model images.
"""

from tripletml.data import INK, PAPER, OmniglotSet  # noqa: F401

__version__ = "0.1.0"


def load_embedder(path):  # pragma: no cover - thin re-export, see tripletml.embedder
    """Load a saved embedder; see :func:`tripletml.embedder.load_embedder`."""
    from tripletml.embedder import load_embedder as _load

    return _load(path)

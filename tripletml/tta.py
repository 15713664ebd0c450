"""Test-time augmentation: an image's embedding averaged over small shifts of it.

A one-shot task compares single drawings, so a stroke drawn a pixel off moves the
embedding; averaging each image's embedding over its copies shifted by up to ``radius``
pixels removes part of that noise at evaluation only (training is untouched). Its
effect was measured on the validation alphabets (``benchmarks/tta.py``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

EmbedFn = Callable[[np.ndarray], np.ndarray]


def shifted_copies(images: np.ndarray, radius: int) -> np.ndarray:
    """(n, S, S) -> (n, (2r+1)^2, S, S): every shift by -r..r pixels in each axis, blank (0) fill.

    Model images are 0 on paper, so the zero padding adds blank paper; the middle copy,
    ``r * (2r+1) + r``, is the image itself.
    """
    if radius < 0:
        raise ValueError(f"shift radius must be >= 0, got {radius}")
    images = np.asarray(images, np.float32)
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius)))
    # windows[i, dy, dx] = padded[i, dy:dy+h, dx:dx+w]: all shifts as one strided view
    windows = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(1, 2))
    k = (2 * radius + 1) ** 2
    return windows.reshape(n, k, h, w)


def shift_averaged(embed: EmbedFn, radius: int, renormalize: bool = False, max_batch: int = 1024) -> EmbedFn:
    """``embed`` with each image's embedding averaged over its shifted copies.

    Batched calls of ``embed`` on at most ``max_batch`` copies each (whole images' sets of
    (2r+1)^2 copies), so memory stays bounded whatever the caller's batch. ``renormalize`` projects
    the mean back onto the unit sphere: set it for a model whose embeddings are unit-norm
    (``Embedder.unit_norm``), so that the distances keep the geometry the losses trained.
    ``radius=0`` returns ``embed`` itself.
    """
    if radius < 0:
        raise ValueError(f"shift radius must be >= 0, got {radius}")
    if radius == 0:
        return embed

    k = (2 * radius + 1) ** 2
    per_call = max(1, max_batch // k)  # images whose copies go through one call of embed

    def averaged(images: np.ndarray) -> np.ndarray:
        means = []
        for lo in range(0, max(len(images), 1), per_call):  # chunks of images, not single images
            copies = shifted_copies(images[lo : lo + per_call], radius)
            n = len(copies)
            e = np.asarray(embed(copies.reshape(n * k, *copies.shape[2:])), np.float32)
            means.append(e.reshape(n, k, e.shape[-1]).mean(axis=1))
        mean = np.concatenate(means)
        if renormalize:
            mean /= np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
        return mean

    return averaged

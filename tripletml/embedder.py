"""The saved embedder, a public API: ``models/<strategy>/{embedding.keras, meta.json}``.

``load_embedder(path).embed(images)`` takes raw Omniglot images exactly as decoded
from the PNGs - a (N, 105, 105) uint8 array, 1 = paper, 0 = ink - and does its own
resizing, polarity and scaling, so anyone can score a model on other one-shot runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tripletml.models  # registers the custom layers for loading; L2Normalize
from tripletml.atomic import atomic_path, write_json
from tripletml.data import RAW_SIZE, raw_to_model

MODEL_FILE = "embedding.keras"
META_FILE = "meta.json"
POLARITY = "input: raw PNG values, 1 = paper, 0 = ink; model: float32 in [0, 1], 1 = ink, area-averaged"


def make_embed_fn(embedding: keras.Model, batch_size: int = 2048) -> Callable[[np.ndarray], np.ndarray]:
    """A numpy -> numpy embed function: one compiled graph, batched, inference mode."""
    shape = tuple(embedding.input_shape[1:])

    @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)], reduce_retracing=True)
    def _embed(x):
        return tf.cast(embedding(x, training=False), tf.float32)

    def embed(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == len(shape):  # (n, S, S) -> (n, S, S, 1)
            images = images[..., None]
        out = [_embed(images[i : i + batch_size]).numpy() for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, embedding.output_shape[-1]), np.float32)

    return embed


class Embedder:
    """A trained embedding network with the preprocessing it was trained with."""

    def __init__(self, model: keras.Model, meta: dict):
        self.model = model
        self.meta = meta
        self.image_size = int(meta["image_size"])
        self._embed = make_embed_fn(model)

    @property
    def unit_norm(self) -> bool:
        """Whether the model ends in L2 normalisation (every embedding on the unit sphere)."""
        return isinstance(self.model.layers[-1], tripletml.models.L2Normalize)

    def embed_prepared(self, images: np.ndarray) -> np.ndarray:
        """Model images (N, S, S) float32, 1 = ink -> (N, D) float32 embeddings."""
        return self._embed(np.asarray(images, np.float32))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Raw images (N, 105, 105) uint8 (1 = paper, 0 = ink) -> (N, D) float32 embeddings."""
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != (RAW_SIZE, RAW_SIZE):
            raise ValueError(f"expected raw images of shape (N, {RAW_SIZE}, {RAW_SIZE}), got {images.shape}")
        return self.embed_prepared(raw_to_model(images, self.image_size))

    __call__ = embed_prepared


def save_embedder(folder: str | os.PathLike, model: keras.Model, meta: dict) -> Path:
    """Write ``embedding.keras`` and ``meta.json`` atomically into ``folder``."""
    folder = Path(folder)
    with atomic_path(folder / MODEL_FILE, suffix=".keras") as tmp:
        model.save(tmp)
    write_json(folder / META_FILE, {**meta, "polarity": POLARITY})
    return folder


def load_embedder(path: str | os.PathLike) -> Embedder:
    """Load a saved embedder from its folder (or its ``embedding.keras`` file)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    model_file = folder / MODEL_FILE if path.is_dir() else path
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file}: no saved embedding model")
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    model = keras.models.load_model(model_file, compile=False)
    meta.setdefault("image_size", int(model.input_shape[1]))
    return Embedder(model, meta)

"""A trained embedder as an MLflow Model: raw Omniglot images in, embeddings out.

``tripletml.tracking`` logs this file as the model's code ("models from code"); MLflow runs
it when the model is loaded or served, so the library must be installed where it is served
(``mlflow models serve ... --env-manager local``). No stage imports it.

Input, uint8 of shape (N, 105, 105) (one image (105, 105) is taken as N = 1): the Omniglot
PNGs as they decode, 0 = ink and paper either 1 (tripletml's raw arrays, a 1-bit decode) or
255 (an 8-bit grayscale decode, ``np.asarray(Image.open(png).convert("L"))``). An image with
any value above 1 is read as 8-bit and thresholded at 128, as ``tripletml.data`` reads the
zips. Output: (N, D) float32, exactly ``load_embedder(models/<strategy>).embed(images)``,
which resizes to the model's own convention (float, 1 = ink, area-averaged to
``data.image_size``).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

ARTIFACT = "embedder"  # the models/<strategy> folder inside the MLflow Model


def to_raw(images: Any) -> np.ndarray:
    """uint8 images with paper 1 or 255 -> tripletml's raw convention (1 = paper, 0 = ink)."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    eight_bit = images.reshape(len(images), -1).max(axis=1, initial=0) > 1
    raw = images.astype(np.uint8)
    raw[eight_bit] = images[eight_bit] >= 128
    return raw


class EmbedderModel(PythonModel):
    """``predict(images) -> embeddings`` through :class:`tripletml.embedder.Embedder`."""

    def load_context(self, context: Any) -> None:
        from tripletml.embedder import load_embedder  # at serving time: the installed library

        self.embedder = load_embedder(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        # np.ndarray: a hint MLflow reads no schema from, so the logged signature stands
        return self.embedder.embed(to_raw(model_input))


mlflow.models.set_model(EmbedderModel())

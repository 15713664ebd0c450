"""Tests for tripletml.embedder: the saved-embedder public API on raw Omniglot images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic import glyph

import tripletml
from tripletml.data import raw_to_model
from tripletml.embedder import META_FILE, MODEL_FILE, Embedder, load_embedder, save_embedder
from tripletml.models import build_embedding

S = 28


@pytest.fixture(scope="module")
def model():
    m = build_embedding("convnet", S, embedding_dim=16, filters=8)
    # Non-trivial BatchNorm statistics, so that a save/load that drops them (or runs the
    # model in training mode) gives other embeddings.
    for layer in m.layers:
        if layer.name.startswith("bn"):
            mean, var = layer.moving_mean, layer.moving_variance
            mean.assign(np.linspace(-0.5, 0.5, mean.shape[0]).astype(np.float32))
            var.assign(np.linspace(0.5, 2.0, var.shape[0]).astype(np.float32))
    return m


@pytest.fixture(scope="module")
def raw() -> np.ndarray:
    """Raw images as decoded from PNGs: (N, 105, 105) uint8, 1 = paper, 0 = ink."""
    return np.stack([glyph(c, d) for c in range(3) for d in range(2)])


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_embedder(tmp_path_factory.mktemp("models") / "random", model, {"strategy": "random", "image_size": S})


def test_files_and_meta(saved: Path) -> None:
    assert (saved / MODEL_FILE).is_file()
    meta = json.loads((saved / META_FILE).read_text())
    assert meta["strategy"] == "random" and meta["image_size"] == S
    assert "1 = paper" in meta["polarity"] and "1 = ink" in meta["polarity"]
    assert not list(saved.glob(".*tmp"))  # no temporary files left behind


def test_round_trip_embeds_raw_like_the_model(model, raw: np.ndarray, saved: Path) -> None:
    assert raw.dtype == np.uint8 and set(np.unique(raw)) == {0, 1}
    expected = model(raw_to_model(raw, S)[..., None], training=False).numpy()
    embedder = load_embedder(saved)
    assert isinstance(embedder, Embedder) and embedder.image_size == S
    got = embedder.embed(raw)
    assert got.shape == (len(raw), 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The preprocessing matters: raw values fed straight in (wrong polarity) embed otherwise.
    inverted = model((1.0 - raw_to_model(raw, S))[..., None], training=False).numpy()
    assert not np.allclose(got, inverted, atol=1e-3)
    np.testing.assert_allclose(embedder(raw_to_model(raw, S)), expected, atol=1e-5)  # model images


def test_unit_norm_says_whether_the_model_ends_in_l2_normalisation(saved: Path, tmp_path: Path) -> None:
    assert load_embedder(saved).unit_norm
    plain = build_embedding("convnet", S, embedding_dim=4, filters=4, l2_normalize=False)
    assert not load_embedder(save_embedder(tmp_path / "plain", plain, {"image_size": S})).unit_norm


def test_load_from_model_file_and_package(model, raw: np.ndarray, saved: Path) -> None:
    expected = load_embedder(saved).embed(raw)
    np.testing.assert_allclose(load_embedder(saved / MODEL_FILE).embed(raw), expected, atol=1e-6)
    via_package = tripletml.load_embedder(str(saved))
    assert via_package.meta["strategy"] == "random"
    np.testing.assert_allclose(via_package.embed(raw), expected, atol=1e-6)


def test_image_size_from_model_without_meta(model, raw: np.ndarray, tmp_path: Path) -> None:
    folder = save_embedder(tmp_path / "m", model, {"image_size": S})
    (folder / META_FILE).unlink()
    embedder = load_embedder(folder)
    assert embedder.image_size == S
    assert embedder.embed(raw[:2]).shape == (2, 16)


@pytest.mark.parametrize("shape", [(2, 28, 28), (105, 105), (2, 105, 104), (1, 2, 105, 105)])
def test_wrong_raw_shape_is_a_value_error(saved: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="105"):
        load_embedder(saved).embed(np.ones(shape, np.uint8))


def test_missing_model_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=MODEL_FILE):
        load_embedder(tmp_path)

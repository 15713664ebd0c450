"""Test-time shift averaging (tripletml/tta.py)."""

import numpy as np
import pytest

from tripletml.tta import shift_averaged, shifted_copies


def dot_image(size=5, y=2, x=2):
    img = np.zeros((1, size, size), np.float32)
    img[0, y, x] = 1.0
    return img


def test_every_shift_appears_once_and_the_middle_copy_is_the_image():
    copies = shifted_copies(dot_image(), 1)
    assert copies.shape == (1, 9, 5, 5)
    np.testing.assert_array_equal(copies[0, 4], dot_image()[0])
    positions = {tuple(np.argwhere(c)[0]) for c in copies[0]}
    assert positions == {(2 + dy, 2 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def test_shifts_fill_with_blank_paper_instead_of_wrapping():
    copies = shifted_copies(dot_image(y=0, x=4), 1)  # ink in the top-right corner
    assert sorted(c.sum() for c in copies[0]) == [0.0] * 5 + [1.0] * 4  # shifted out: gone, not wrapped


def test_radius_zero_is_the_embedding_itself():
    embed = lambda x: x.reshape(len(x), -1)  # noqa: E731
    assert shift_averaged(embed, 0) is embed
    with pytest.raises(ValueError, match="radius"):
        shifted_copies(dot_image(), -1)
    with pytest.raises(ValueError, match="radius"):
        shift_averaged(embed, -1)  # refused when built, not on first use


def test_averages_the_copies_in_one_batched_call():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(36, 3)).astype(np.float32)
    calls = []

    def linear(x):
        calls.append(len(x))
        return x.reshape(len(x), -1) @ W

    images = rng.random((4, 6, 6)).astype(np.float32)
    out = shift_averaged(linear, 1)(images)
    assert calls == [4 * 9]
    expected = np.stack([linear(c).mean(axis=0) for c in shifted_copies(images, 1)])
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_unit_norm_embeddings_stay_on_the_sphere():
    def unit(x):
        e = np.stack([x.sum(axis=(1, 2)), x[:, 0].sum(axis=1) + 1.0], axis=1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    images = np.random.default_rng(1).random((3, 5, 5)).astype(np.float32)
    out = shift_averaged(unit, 2, renormalize=True)(images)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    plain = shift_averaged(unit, 2)(images)  # the plain mean of unit vectors is shorter
    assert (np.linalg.norm(plain, axis=1) < 1.0 - 1e-4).all()
    np.testing.assert_allclose(plain / np.linalg.norm(plain, axis=1, keepdims=True), out, rtol=1e-5)


def test_a_shift_invariant_embedding_is_unchanged():
    # total ink is unchanged by shifts that keep the drawing on the page
    ink = lambda x: x.sum(axis=(1, 2))[:, None] + np.zeros((1, 2), np.float32)  # noqa: E731
    img = np.zeros((2, 9, 9), np.float32)
    img[:, 3:6, 3:6] = np.arange(9, dtype=np.float32).reshape(3, 3)
    np.testing.assert_allclose(shift_averaged(ink, 2)(img), ink(img), rtol=1e-6)

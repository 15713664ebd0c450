"""tripletml.separation and the report's pictures of it: pair distances, overlap, the 2-D map,
the distance figure and the tasks the best model missed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tripletml import figures, report, separation

# 3 alphabets of 4, 3 and 5 characters; 4 drawings each.
C = {"A": (0, 4), "B": (4, 7), "C": (7, 12)}
ALPHABET = np.repeat([0, 1, 2], [4, 3, 5])


def _coded(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Embeddings that say where they come from: dim 0 the alphabet x 1000, dim 1 the character."""
    chars = np.arange(12)
    E = np.stack([ALPHABET * 1000.0, chars.astype(float)], axis=-1)[:, None, :].repeat(4, axis=1)
    return E + noise * np.random.default_rng(seed).standard_normal(E.shape)


def test_pairs_are_of_the_kind_they_claim():
    d = separation.pair_distances(_coded(), C, 3000, np.random.default_rng(1))
    assert set(d) == set(separation.PAIR_KINDS) and all(len(v) == 3000 for v in d.values())
    assert np.all(d["same"] == 0), "two drawings of one character: identical here"
    assert np.all((d["within"] > 0) & (d["within"] < 1000**2)), "two other characters of one alphabet"
    assert np.all(d["across"] > 0) and np.mean(d["across"] >= 1000**2) > 0.5, "any two characters: mostly two alphabets"


def test_pair_distances_are_squared_l2_of_the_drawn_pairs():
    E = np.random.default_rng(0).standard_normal((12, 4, 3))
    rng = np.random.default_rng(5)
    d = separation.pair_distances(E, C, 50, rng)
    brute = {(float(((E[a, i] - E[b, j]) ** 2).sum())) for a in range(12) for b in range(12)
             for i in range(4) for j in range(4) if (a, i) != (b, j)}
    assert all(min(abs(x - y) for y in brute) < 1e-9 for x in d["within"])


@pytest.mark.parametrize("same, different, expected", [
    ([0.1, 0.2, 0.3], [1.0, 2.0], 0.0),  # every different pair farther: no overlap
    ([1.0, 2.0], [0.1, 0.2, 0.3], 100.0),  # every different pair closer
    ([1.0, 2.0], [1.0, 2.0], 50.0),  # the same distances: a coin toss
    ([0.1, 0.5], [0.3, 1.0], 25.0),  # 1 of 4 (same, different) orders wrong
])  # fmt: skip
def test_overlap_is_the_chance_a_different_pair_is_the_closer(same, different, expected):
    assert separation.overlap(np.array(same), np.array(different)) == pytest.approx(expected)


def test_report_separation_is_smaller_for_the_better_embedding():
    good, bad = _coded(noise=0.3), _coded(noise=3.0)
    _, overlaps = report.separation({"good": good, "bad": bad}, C, n_pairs=4000)
    assert overlaps["good"]["within"] < overlaps["bad"]["within"]
    assert overlaps["good"]["across"] <= overlaps["good"]["within"], "other alphabets are the easier negatives"


def test_the_map_shows_alphabets_spread_over_the_set_and_one_point_per_drawing():
    shown = separation.map_characters(C, alphabets=2, per_alphabet=3)
    assert list(shown) == ["A", "C"] and [list(v) for v in shown.values()] == [[0, 1, 2], [7, 8, 9]]
    chars = np.concatenate(list(shown.values()))
    xy = separation.embedding_map(_coded(noise=0.1), chars, seed=0)
    assert xy.shape == (6 * 4, 2)
    np.testing.assert_array_equal(xy, separation.embedding_map(_coded(noise=0.1), chars, seed=0))


def _predictions() -> dict[str, np.ndarray]:
    """Three 3-way within-alphabet tasks; 'model' misses tasks 0 and 2."""
    return {
        "within_query_char": np.array([0, 5, 8]), "within_query_drawing": np.array([0, 1, 2]),
        "within_support_chars": np.array([[1, 0, 2], [5, 4, 6], [9, 10, 8]]),
        "within_support_drawings": np.array([[1, 3, 1], [2, 2, 2], [0, 1, 3]]),
        "within_target": np.array([1, 0, 2]), "within_pred_model": np.array([2, 0, 0]),
    }  # fmt: skip


def test_missed_tasks_are_the_query_its_true_match_and_the_pick():
    shown, missed = figures.missed_tasks(_predictions(), "model")
    assert missed == 2
    assert shown == [((0, 0), (0, 3), (2, 1)), ((8, 2), (8, 3), (9, 0))]
    assert figures.missed_tasks(_predictions(), "model", n=1)[0] == shown[:1]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.int16)


def _glyphs(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((12, 4, 8, 8)) > 0.7).astype(np.float32)


def test_the_mistakes_figure_draws_the_data_it_is_given(tmp_path):
    a = figures.plot_mistakes(_glyphs(0), _predictions(), "model", tmp_path / "a.png")
    b = figures.plot_mistakes(_glyphs(0), _predictions(), "model", tmp_path / "b.png")
    other = _glyphs(0)
    other[2, 1] = 1 - other[2, 1]  # the picked drawing of task 0, inverted
    c = figures.plot_mistakes(other, _predictions(), "model", tmp_path / "c.png")
    unseen = _glyphs(0)
    unseen[5, 1] = 1 - unseen[5, 1]  # the query of task 1, which the model got right: not shown
    d = figures.plot_mistakes(unseen, _predictions(), "model", tmp_path / "d.png")
    assert np.array_equal(_pixels(a), _pixels(b))
    assert (_pixels(a) != _pixels(c)).sum() > 50, "the chosen drawing is on the page"
    assert np.array_equal(_pixels(a), _pixels(d)), "a task it got right is not"


def test_the_distance_figure_and_the_map_move_with_the_data(tmp_path):
    def draw(noise: float, name: str):
        E = _coded(noise=noise)
        distances, overlaps = report.separation({"x": E}, C, n_pairs=2000)
        figures.plot_distances(distances, {"x": 0.5}, overlaps, tmp_path / f"d{name}.png")
        shown = separation.map_characters(C)
        xy = separation.embedding_map(E, np.concatenate(list(shown.values())))
        figures.plot_embedding_maps({"x": xy}, shown, 4, tmp_path / f"m{name}.png")

    draw(0.3, "a")
    draw(0.3, "b")
    draw(3.0, "c")
    for kind in "dm":
        assert np.array_equal(_pixels(tmp_path / f"{kind}a.png"), _pixels(tmp_path / f"{kind}b.png"))
        assert (_pixels(tmp_path / f"{kind}a.png") != _pixels(tmp_path / f"{kind}c.png")).sum() > 100

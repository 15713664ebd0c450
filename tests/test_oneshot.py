"""Tests for tripletml.oneshot (task invariants, scoring, statistics) and the course API on it."""

from __future__ import annotations

import numpy as np
import pytest

from tripletml import course
from tripletml.course import evaluate_tasks_reference, make_oneshot_task
from tripletml.oneshot import (
    OneShotTasks,
    evaluate_tasks,
    embed_set,
    mcnemar_exact,
    sample_tasks,
    wilson_interval,
)

S = 8
# Sizes straddle N=20: exactly 20 (must work), fewer (never eligible), more.
SIZES = {"Big": 33, "Small": 5, "Exact": 20, "Single": 1, "Mid": 25}


def _alphabets(sizes: dict[str, int]) -> dict[str, tuple[int, int]]:
    stops = np.cumsum(list(sizes.values()))
    return {name: (int(stop - n), int(stop)) for (name, n), stop in zip(sizes.items(), stops)}


C = _alphabets(SIZES)
N_CHARS = sum(SIZES.values())


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    """Random images whose pixel (0, 0) holds the character id and (0, 1) the drawing id."""
    x = np.random.default_rng(123).random((N_CHARS, 20, S, S), dtype=np.float32)
    x[:, :, 0, 0] = np.arange(N_CHARS, dtype=np.float32)[:, None]
    x[:, :, 0, 1] = np.arange(20, dtype=np.float32)[None, :]
    return x


def perfect_embed(images: np.ndarray) -> np.ndarray:
    """All drawings of a character at one point: the id pixel."""
    return images[:, 0, :1].copy()


def random_embed(images: np.ndarray) -> np.ndarray:
    """Noise pixels only: unrelated to the character. Pure indexing, so batch-independent."""
    return images[:, 2:, :].reshape(len(images), -1)[:, :6].copy()


def alphabet_of(chars: np.ndarray) -> np.ndarray:
    stops = np.array([stop for _, stop in C.values()])
    return np.searchsorted(stops, chars, side="right")


def check_invariants(t: OneShotTasks, N: int, k: int) -> None:
    assert t.support_chars.shape == t.support_drawings.shape == (k, N)
    assert t.query_char.shape == t.query_drawing.shape == t.target.shape == (k,)
    srt = np.sort(t.support_chars, axis=1)
    assert np.all(np.diff(srt, axis=1) > 0), "support characters must be distinct"
    match = t.support_chars == t.query_char[:, None]
    assert np.all(match.sum(axis=1) == 1), "exactly one support character matches"
    rows = np.arange(k)
    assert np.array_equal(np.argmax(match, axis=1), t.target)
    assert np.all(t.support_drawings[rows, t.target] != t.query_drawing)
    assert t.support_drawings.min() >= 0 and t.support_drawings.max() < 20
    assert t.query_drawing.min() >= 0 and t.query_drawing.max() < 20
    assert set(np.unique(t.target)) == set(range(N))


# ----------------------------------------------------------------------------- sampling


def test_across_invariants_and_all_characters_reachable():
    t = sample_tasks(C, N_CHARS, 20, 4000, np.random.default_rng(1))
    check_invariants(t, 20, 4000)
    assert t.mode == "across"
    assert set(np.unique(t.support_chars)) == set(range(N_CHARS))
    assert set(np.unique(t.query_char)) == set(range(N_CHARS))
    assert set(np.unique(t.query_drawing)) == set(range(20))


def test_within_alphabet_stays_in_one_eligible_alphabet_and_reaches_last_character():
    k = 4000
    t = sample_tasks(C, N_CHARS, 20, k, np.random.default_rng(2), within_alphabet=True)
    check_invariants(t, 20, k)
    assert t.mode == "within"
    alpha = alphabet_of(t.support_chars)
    assert np.all(alpha == alpha[:, :1]), "a task mixes alphabets"
    names = list(C)
    used = {names[a] for a in np.unique(alpha)}
    assert used == {"Big", "Exact", "Mid"}  # only alphabets with >= N characters
    chars = set(np.unique(t.support_chars))
    for name in used:  # regression: the course never drew an alphabet's last character
        start, stop = C[name]
        assert stop - 1 in chars and start in chars


def test_language_mode_uses_every_character_of_that_alphabet():
    start, stop = C["Mid"]
    t = sample_tasks(C, N_CHARS, 20, 2000, np.random.default_rng(3), language="Mid")
    check_invariants(t, 20, 2000)
    assert t.mode == "language" and t.language == "Mid"
    assert set(np.unique(t.support_chars)) == set(range(start, stop))
    assert set(np.unique(t.query_char)) == set(range(start, stop))


def test_alphabet_with_exactly_n_characters_works():
    start, stop = C["Exact"]
    t = sample_tasks(C, N_CHARS, 20, 300, 4, language="Exact")
    check_invariants(t, 20, 300)
    # All 20 characters in every task, only their order varies.
    assert np.all(np.sort(t.support_chars, axis=1) == np.arange(start, stop))


def test_too_small_alphabet_raises_naming_it_and_its_size():
    with pytest.raises(ValueError, match=r"'Small'.*\b5\b"):
        sample_tasks(C, N_CHARS, 20, 10, 0, language="Small")
    with pytest.raises(ValueError, match="no alphabet"):
        sample_tasks(C, N_CHARS, 40, 10, 0, within_alphabet=True)
    with pytest.raises(ValueError):
        sample_tasks(C, N_CHARS, N_CHARS + 1, 10, 0)
    with pytest.raises(ValueError, match="unknown alphabet"):
        sample_tasks(C, N_CHARS, 5, 10, 0, language="Klingon")


@pytest.mark.parametrize("kw", [{}, {"within_alphabet": True}, {"language": "Big"}])
def test_same_seed_same_tasks_different_seed_different(kw):
    a = sample_tasks(C, N_CHARS, 20, 200, np.random.default_rng(7), **kw)
    b = sample_tasks(C, N_CHARS, 20, 200, np.random.default_rng(7), **kw)
    d = sample_tasks(C, N_CHARS, 20, 200, np.random.default_rng(8), **kw)
    fields = ["query_char", "query_drawing", "support_chars", "support_drawings", "target"]
    for f in fields:
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not all(np.array_equal(getattr(a, f), getattr(d, f)) for f in fields)


def test_make_oneshot_task_course_shape(X):
    test_images, support, targets = make_oneshot_task(20, X, C, language="Big", rng=5)
    assert test_images.shape == support.shape == (20, S, S)
    assert targets.shape == (20,) and targets.sum() == 1 and set(np.unique(targets)) == {0, 1}
    assert np.all(test_images == test_images[:1])  # the query, repeated
    i = int(np.argmax(targets))
    ids = support[:, 0, 0]
    assert ids[i] == test_images[0, 0, 0] and len(set(ids)) == 20
    assert support[i, 0, 1] != test_images[0, 0, 1]  # another drawing
    start, stop = C["Big"]
    assert np.all((ids >= start) & (ids < stop))
    # Default rng works and is not fixed.
    assert make_oneshot_task(5, X)[0].shape == (5, S, S)


# --------------------------------------------------------------------------- evaluation


def test_one_point_per_character_scores_100(X):
    onehot = np.broadcast_to(np.eye(N_CHARS, dtype=np.float32)[:, None, :], (N_CHARS, 20, N_CHARS))
    t = sample_tasks(C, N_CHARS, 20, 1000, 0)
    assert evaluate_tasks(onehot, t).all()
    for kw in [{}, {"within_alphabet": True}, {"language": "Mid"}]:
        assert course.test_oneshot(perfect_embed, X, 20, 500, C, seed=1, **kw) == 100.0


@pytest.mark.parametrize("kw", [{}, {"within_alphabet": True}])
def test_random_embedding_scores_near_chance(X, kw):
    k, N = 4000, 20
    pct = course.test_oneshot(random_embed, X, N, k, C, seed=3, **kw)
    sd = np.sqrt(k * (1 / N) * (1 - 1 / N))
    assert abs(pct / 100 * k - k / N) < 5 * sd, pct


def test_vectorised_matches_reference(X):
    t = sample_tasks(C, N_CHARS, 20, 300, 11, within_alphabet=True)
    emb = embed_set(random_embed, X, batch_size=97)
    fast = evaluate_tasks(emb, t)
    assert np.array_equal(fast, evaluate_tasks_reference(random_embed, X, t))
    assert 0 < fast.sum() < len(t)  # non-trivial: some right, some wrong

    # Coarse embedding => many exact ties; both must break them the same way (first).
    def coarse(images):
        return np.round(random_embed(images)[:, :1] * 3) / 3

    slow = evaluate_tasks_reference(coarse, X, t)
    assert np.array_equal(evaluate_tasks(embed_set(coarse, X), t), slow)


def test_embed_set_embeds_each_image_once_in_batches(X):
    calls = []

    def counting(images):
        calls.append(len(images))
        return random_embed(images)

    emb = embed_set(counting, X, batch_size=256)
    assert sum(calls) == N_CHARS * 20 and max(calls) <= 256
    assert np.array_equal(emb, random_embed(X.reshape(-1, S, S)).reshape(N_CHARS, 20, -1))

    calls.clear()
    t = sample_tasks(C, N_CHARS, 5, 20, 0)
    part = embed_set(counting, X, batch_size=256, used=t)
    used = t.used_pairs(20)
    assert sum(calls) == len(used) < N_CHARS * 20
    assert np.array_equal(evaluate_tasks(part, t), evaluate_tasks(emb, t))
    assert np.isnan(part).all(axis=2).sum() == N_CHARS * 20 - len(used)


def test_test_oneshot_details_are_reproducible(X):
    a = course.test_oneshot(random_embed, X, 10, 500, C, seed=4, return_details=True)
    b = course.test_oneshot(random_embed, X, 10, 500, C, rng=np.random.default_rng(4), return_details=True)
    assert a.percent == b.percent == float(a) == 100 * a.correct.mean()
    assert np.array_equal(a.correct, b.correct)
    assert np.array_equal(a.tasks.support_chars, b.tasks.support_chars)
    low, high = a.interval
    assert 0 <= low < a.percent < high <= 100


# --------------------------------------------------------------------------- statistics


def _wilson_closed_form(x: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    z = {0.95: 1.959963984540054, 0.99: 2.5758293035489004}[conf]  # normal quantiles
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("x,n,conf", [(50, 100, 0.95), (3, 50, 0.95), (97, 100, 0.99), (0, 30, 0.95)])
def test_wilson_interval_matches_closed_form(x, n, conf):
    assert wilson_interval(x, n, conf) == pytest.approx(_wilson_closed_form(x, n, conf), abs=1e-9)


def test_wilson_known_value():
    low, high = wilson_interval(50, 100)  # fractions, not percent
    assert low == pytest.approx(0.403832, abs=1e-6) and high == pytest.approx(0.596168, abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(5, 0)


def test_mcnemar_exact():
    # A alone right on 7 tasks, B alone right on 1, both right on 10, both wrong on 2.
    a = np.array([1] * 7 + [0] * 1 + [1] * 10 + [0] * 2, dtype=bool)
    b = np.array([0] * 7 + [1] * 1 + [1] * 10 + [0] * 2, dtype=bool)
    r = mcnemar_exact(a, b)
    assert (r["b"], r["c"]) == (7, 1)
    # P(X <= 1 or X >= 7), X ~ Bin(8, 1/2) = 2 * (1 + 8) / 256
    assert r["p_value"] == pytest.approx(18 / 256, abs=1e-12)
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(r["p_value"])
    same = mcnemar_exact(a, a)
    assert same == {"b": 0, "c": 0, "p_value": 1.0}
    with pytest.raises(ValueError):
        mcnemar_exact(a, b[:-1])


def test_centring_on_candidates_removes_what_they_share_and_can_change_the_pick():
    from tripletml.oneshot import centre_on_candidates, predict_tasks

    rng = np.random.default_rng(0)
    q, s = rng.normal(size=(7, 5)), rng.normal(size=(7, 4, 5))
    cq, cs = centre_on_candidates(q, s)
    np.testing.assert_allclose(np.linalg.norm(cq, axis=-1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(cs, axis=-1), 1.0)
    shared = rng.normal(size=(7, 1, 5))  # one vector per task, added to its query and candidates
    for got, want in zip(centre_on_candidates(q + shared[:, 0], s + shared), (cq, cs)):
        np.testing.assert_allclose(got, want, atol=1e-12)
    # Worked by hand: candidates (0, 1), (0, -1), (0.5, 0), query (0.4, 0.3). Plainly nearest: (0.5, 0);
    # about the candidates' mean (1/6, 0), the query points up like (0, 1).
    table = np.zeros((3, 2, 2))
    table[0, 0], table[0, 1], table[1, 1], table[2, 1] = (0.4, 0.3), (0, 1), (0, -1), (0.5, 0)
    tasks = OneShotTasks(
        query_char=np.array([0]), query_drawing=np.array([0]), support_chars=np.array([[0, 1, 2]]),
        support_drawings=np.array([[1, 1, 1]]), target=np.array([0]), N=3, mode="across",
    )  # fmt: skip
    assert predict_tasks(table, tasks).tolist() == [2]
    assert predict_tasks(table, tasks, centre=True).tolist() == [0]
    assert evaluate_tasks(table, tasks, centre=True).tolist() == [True]

"""The course assignment's one-shot API, on top of the vectorised evaluation.

Students' notebooks call ``make_oneshot_task`` and ``test_oneshot``; these keep the course's
names and shapes. ``evaluate_tasks_reference`` scores tasks the course's way, one task and
two embedder calls at a time: the slow reference the vectorised scoring is checked against.
"""

from __future__ import annotations

import numpy as np

from tripletml.oneshot import (
    Alphabets,
    Embedder,
    OneShotResult,
    OneShotTasks,
    support_sq_distances,
    embed_set,
    evaluate_tasks,
    sample_tasks,
    wilson_interval,
)

__all__ = ["make_oneshot_task", "test_oneshot", "evaluate_tasks_reference"]


def make_oneshot_task(
    N: int,
    X: np.ndarray,
    c: Alphabets | None = None,
    language: str | None = None,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task in the course's shape: ``(test_images, support_images, targets)``.

    ``test_images`` is the query image repeated N times, paired row by row with the N
    ``support_images``; ``targets`` (float32) is 1 at the true match, 0 elsewhere. Unlike
    the course the match is at a random position, not always first.
    """
    t = sample_tasks(c, X.shape[0], N, 1, rng, language=language, n_drawings=X.shape[1])
    query, support = t.images(X)
    targets = np.zeros(N, dtype=np.float32)
    targets[t.target[0]] = 1.0
    return np.repeat(query, N, axis=0), support[0], targets


def evaluate_tasks_reference(embed: Embedder, X: np.ndarray, tasks: OneShotTasks) -> np.ndarray:
    """The course's way, one task at a time (slow; for tests and benchmarks).

    Per task: embed the query repeated N times and the N support images (two embedder
    calls, like the course's ``model.predict([test_images, support_images])``), then
    pick the pair with the smallest squared distance.
    """
    correct = np.empty(len(tasks), dtype=bool)
    for i in range(len(tasks)):
        test = np.repeat(X[tasks.query_char[i], tasks.query_drawing[i]][None], tasks.N, axis=0)
        support = X[tasks.support_chars[i], tasks.support_drawings[i]]
        et = np.asarray(embed(test), dtype=np.float32)
        es = np.asarray(embed(support), dtype=np.float32)
        d = support_sq_distances(et[:1], es[None])[0]  # any row of et: all are the same image
        correct[i] = int(np.argmin(d)) == int(tasks.target[i])
    return correct


def test_oneshot(
    embedder: Embedder,
    X: np.ndarray,
    N: int,
    k: int,
    c: Alphabets | None = None,
    language: str | None = None,
    within_alphabet: bool = False,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    return_details: bool = False,
    batch_size: int = 1024,
) -> float | OneShotResult:
    """Percent of k N-way one-shot tasks the embedder gets right.

    Tasks come from ``rng`` if given, else from ``seed``: the same seed gives the same
    tasks for every model. With ``return_details`` returns a :class:`OneShotResult`
    (per-task correctness for paired tests, the tasks, a 95% Wilson interval).
    """
    rng = rng if rng is not None else np.random.default_rng(seed)
    tasks = sample_tasks(
        c, X.shape[0], N, k, rng, within_alphabet=within_alphabet, language=language,
        n_drawings=X.shape[1],
    )
    correct = evaluate_tasks(embed_set(embedder, X, batch_size, used=tasks), tasks)
    percent = 100.0 * float(correct.mean()) if k else float("nan")
    if not return_details:
        return percent
    low, high = wilson_interval(int(correct.sum()), k) if k else (float("nan"), float("nan"))
    return OneShotResult(percent, correct, tasks, (100.0 * low, 100.0 * high))


test_oneshot.__test__ = False  # keep pytest from collecting it when a test imports it

"""Tests for tripletml.report: tables, paired tests, Markdown, figures, atomic writing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tripletml import report
from tripletml.data import DataError, PNG_MAGIC
from tripletml.oneshot import mcnemar_exact

STRATEGIES = ["random", "hard", "semihard"]
S = 12
N_WAY = 20


def _evaluate() -> dict:
    out = {}
    for i, s in enumerate(STRATEGIES):
        out[s] = {
            "test_acc20": 80.0 + i,
            "test_acc20_ci95_low": 78.2 + i,
            "test_acc20_ci95_high": 81.7 + i,
            "test_acc20_250": 79.6 + i,
            "within_acc20": 60.0 + i,
            "within_acc20_ci95_low": 57.9 + i,
            "within_acc20_ci95_high": 62.1 + i,
            "tasks": 2000,
        }
    return out


def _train() -> dict:
    return {
        s: {
            "strategy": s,
            "best_loop": 10 + i,
            "best_val_acc20": 75.25 + i,
            "train_seconds": 3600.0 * (i + 1),
            "seconds_per_step": 0.05,
            "steps": 1000,
            "loops": 20,
            "warmup_loops": 3,
        }
        for i, s in enumerate(STRATEGIES)
    }


def _predictions(k: int = 40, n_chars: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """Tasks where hard is clearly better than random and semihard is much the same."""
    rng = np.random.default_rng(seed)
    support_chars = np.stack([rng.choice(n_chars, N_WAY, replace=False) for _ in range(k)])
    target = rng.integers(0, N_WAY, k)
    query_char = support_chars[np.arange(k), target]
    support_drawings = rng.integers(0, 20, (k, N_WAY))
    query_drawing = (support_drawings[np.arange(k), target] + 1) % 20

    def preds(p_right: float, r: np.random.Generator) -> np.ndarray:
        wrong = (target + r.integers(1, N_WAY, k)) % N_WAY
        return np.where(r.random(k) < p_right, target, wrong)

    within_target = rng.integers(0, N_WAY, k)
    out = {
        "query_char": query_char,
        "query_drawing": query_drawing,
        "support_chars": support_chars,
        "support_drawings": support_drawings,
        "target": target,
        "within_target": within_target,
    }
    for s, p in zip(STRATEGIES, (0.3, 0.9, 0.35)):
        out[f"pred_{s}"] = preds(p, np.random.default_rng((seed, len(s))))
        wrong = (within_target + 1) % N_WAY
        out[f"within_pred_{s}"] = np.where(rng.random(k) < p, within_target, wrong)
    return out


def _history(offset: float) -> pd.DataFrame:
    loops = np.arange(12)
    val = 20 + offset + 4 * loops
    test = np.where(loops % 3 == 0, val - 2, np.nan)  # test scored on fewer loops
    return pd.DataFrame(
        {
            "loop": loops,
            "loss": 1.0 / (loops + 1),
            "val_acc20": val,
            "test_acc20": test,
            "loop_seconds": 5.0,
            "steps": 50,
            "phase": np.where(loops < 3, "warmup", "main"),
        }
    )


def _glyphs(n_chars: int, drawings: int = 20) -> np.ndarray:
    """Model images (1 = ink): an asymmetric stroke per character so rotations differ."""
    rng = np.random.default_rng(1)
    X = np.zeros((n_chars, drawings, S, S), np.float32)
    for c in range(n_chars):
        r, col = rng.integers(1, S - 4, 2)
        X[c, :, r, col : col + 4] = 1.0
        X[c, :, r : r + 3, col] = 1.0
    X[:, :, 0, 0] = np.linspace(0, 1, drawings)[None, :]  # make drawings differ too
    return X


def _assert_png(path, min_w: int = 300, min_h: int = 150) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as im:
        w, h = im.size
    assert min_w <= w <= 6000 and min_h <= h <= 6000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return w, h


# ----------------------------------------------------------------------------- tables


def test_comparison_table_columns_and_order():
    table = report.comparison_table(_evaluate(), _train())
    assert list(table.columns) == [
        "strategy",
        "test_acc20",
        "test_acc20_ci95_low",
        "test_acc20_ci95_high",
        "test_acc20_250",
        "within_acc20",
        "within_acc20_ci95_low",
        "within_acc20_ci95_high",
        "best_loop",
        "best_val_acc20",
        "train_seconds",
        "seconds_per_step",
    ]
    assert list(table["strategy"]) == STRATEGIES
    assert table.loc[1, "test_acc20"] == 81.0 and table.loc[2, "best_loop"] == 12
    assert table.loc[0, "train_seconds"] == 3600.0


def test_comparison_table_missing_train_metrics_are_nan():
    train = _train()
    del train["semihard"]
    table = report.comparison_table(_evaluate(), train)
    assert len(table) == 3
    assert pd.isna(table.loc[2, "best_loop"]) and np.isnan(table.loc[2, "train_seconds"])


def test_paired_tests_match_mcnemar_and_verdicts():
    pred = _predictions()
    tests = report.paired_tests(pred, STRATEGIES, baseline="random")
    assert list(tests.columns) == list(report.TEST_COLUMNS)
    assert [(r.strategy, r.task_set) for r in tests.itertuples()] == [
        ("hard", "across"),
        ("hard", "within"),
        ("semihard", "across"),
        ("semihard", "within"),
    ]
    for r in tests.itertuples():
        tk, pk = report.TASK_SETS[r.task_set]
        ours = pred[f"{pk}{r.strategy}"] == pred[tk]
        base = pred[f"{pk}random"] == pred[tk]
        expected = mcnemar_exact(ours, base)
        assert (r.b, r.c) == (expected["b"], expected["c"])
        assert r.p_value == pytest.approx(expected["p_value"], rel=1e-12)
        assert r.acc == pytest.approx(100 * ours.mean()) and r.baseline_acc == pytest.approx(100 * base.mean())
        assert r.tasks == len(pred[tk])
    hard = tests.iloc[0]
    assert hard.p_value < 0.05 and hard.verdict.startswith("hard beats random (p = ")
    # Reversed roles: the verdict names the winner, whichever side it is on.
    flipped = report.paired_tests(pred, ["hard", "random"], baseline="hard")
    assert flipped.iloc[0].verdict.startswith("hard beats random")


def test_both_tables_print_the_same_digits_for_the_same_accuracy():
    # 1543 / 2000 = 77.15 %: 100 * mean is 77.1499..., the evaluate stage writes round(.., 3) = 77.15
    target = np.zeros(2000, dtype=np.int64)
    pred = {"target": target, "pred_random": np.ones(2000, np.int64), "pred_hard": np.r_[np.zeros(1543), np.ones(457)].astype(np.int64)}
    tests = report.paired_tests(pred, ["random", "hard"], baseline="random")
    evaluate = {"random": {"test_acc20": 0.0}, "hard": {"test_acc20": round(100.0 * 1543 / 2000, 3)}}
    table = report.comparison_table(evaluate, {})
    md = report.comparison_markdown(table, tests)
    assert tests.iloc[0].acc == evaluate["hard"]["test_acc20"]
    assert md.count("77.2") == 2 and "77.1" not in md


def test_verdict_wording():
    assert report.verdict("hard", "random", 30, 5, 0.0012) == "hard beats random (p = 0.0012)"
    assert report.verdict("hard", "random", 5, 30, 0.0012) == "random beats hard (p = 0.0012)"
    assert report.verdict("hard", "random", 12, 9, 0.31) == "no significant difference at the 5% level (p = 0.31)"


def test_paired_tests_skip_absent_within_and_name_missing_strategy():
    pred = {k: v for k, v in _predictions().items() if not k.startswith("within")}
    tests = report.paired_tests(pred, ["random", "hard"])
    assert list(tests["task_set"]) == ["across"]
    with pytest.raises(KeyError, match="pred_nope"):
        report.paired_tests(pred, ["random", "nope"])


# ----------------------------------------------------------------------------- Markdown and files


def test_markdown_contains_table_context_and_verdict():
    table = report.comparison_table(_evaluate(), _train())
    tests = report.paired_tests(_predictions(), STRATEGIES)
    md = report.comparison_markdown(table, tests, {"machine": "2-core CPU", "image_size": 28})
    assert md.startswith("# ")
    assert "**machine**: 2-core CPU" in md and "**image size**: 28" in md
    for s in STRATEGIES:
        assert f"| {s}" in md
    assert "81.0 [79.2, 82.7]" in md  # hard's test accuracy with its CI, 1 decimal
    assert "75.2" in md or "75.3" in md
    assert tests.iloc[0].verdict in md
    assert md.index("81.0 [79.2, 82.7]") < md.index(tests.iloc[0].verdict)  # table above the tests


def test_markdown_without_tabulate(monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # makes `import tabulate` fail
    table = report.comparison_table(_evaluate(), _train())
    md = report.comparison_markdown(table, report.paired_tests(_predictions(), STRATEGIES), {})
    assert "| hard | 81.0 [79.2, 82.7] |" in md and "|:---|---:|" in md


def test_write_report_atomic_and_roundtrip(tmp_path):
    table = report.comparison_table(_evaluate(), _train())
    tests = report.paired_tests(_predictions(), STRATEGIES)
    fig = tmp_path / "fig" / "acc.png"
    fig.parent.mkdir()
    fig.write_bytes(PNG_MAGIC)
    paths = report.write_report(tmp_path / "out", table, tests, {"wall_time": "1 h"}, {"accuracy": fig})
    assert set(paths) == {"csv", "md"}
    back = pd.read_csv(paths["csv"])
    assert list(back.columns) == list(report.TABLE_COLUMNS) and list(back["strategy"]) == STRATEGIES
    md = paths["md"].read_text(encoding="utf-8")
    assert "](../fig/acc.png)" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["comparison.csv", "comparison.md"]


def test_loaders(tmp_path):
    (tmp_path / "evaluate.json").write_text(json.dumps(_evaluate()))
    assert list(report.load_evaluate(tmp_path / "evaluate.json")) == STRATEGIES
    (tmp_path / "train").mkdir()
    (tmp_path / "history").mkdir()
    for i, s in enumerate(STRATEGIES):
        (tmp_path / "train" / f"{s}.json").write_text(json.dumps(_train()[s]))
        _history(i).to_csv(tmp_path / "history" / f"{s}.csv", index=False)
    assert report.load_train_metrics(tmp_path / "train", STRATEGIES)["hard"]["best_loop"] == 11
    hist = report.load_histories(tmp_path / "history", STRATEGIES)
    assert list(hist["hard"]["phase"][:4]) == ["warmup"] * 3 + ["main"]
    pred = _predictions()
    np.savez(tmp_path / "predictions.npz", **pred)
    loaded = report.load_predictions(tmp_path / "predictions.npz")
    assert np.array_equal(loaded["pred_hard"], pred["pred_hard"])
    with pytest.raises(DataError, match="missing.json"):
        report.load_mined(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json"):
        report.load_evaluate(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- figures


def test_class_image_handles_rotated_classes():
    X = _glyphs(7)
    n = X.shape[0]
    for c in (0, 3, 6, 7, 10, 15, 20, 27):
        for d in (0, 19):
            assert np.array_equal(report.class_image(X, c, d), np.rot90(X[c % n, d], c // n))
    assert not np.array_equal(report.class_image(X, 10, 4), X[3, 4])  # actually rotated
    assert report.class_image(X[..., None], 9, 2).shape == (S, S)  # trailing channel dropped
    with pytest.raises(IndexError):
        report.class_image(X, 1, 20)


def test_plot_accuracy(tmp_path):
    hist = {s: _history(i) for i, s in enumerate(STRATEGIES)}
    out = report.plot_accuracy(hist, tmp_path / "accuracy.png")
    assert out == tmp_path / "accuracy.png"
    _assert_png(out)


def test_plot_tasks(tmp_path):
    X = _glyphs(30)
    pred = _predictions()
    out = report.plot_tasks(X, pred, STRATEGIES, tmp_path / "tasks.png", n_tasks=3)
    w, h = _assert_png(out)
    assert w > h  # 21 images side by side


def test_plot_tasks_shows_disagreements_first():
    pred = _predictions()
    picked = report._pick_tasks(pred, STRATEGIES, 4)
    correct = np.stack([pred[f"pred_{s}"] == pred["target"] for s in STRATEGIES])
    assert all(correct[:, t].any() and not correct[:, t].all() for t in picked)


def test_plot_hard_triplets(tmp_path):
    X = _glyphs(10)
    mined = {
        "first": {"loop": 3, "classes": [[0, 0, 15], [12, 12, 2], [4, 4, 14]], "drawings": [[0, 1, 2]] * 3},
        "last": {"loop": 19, "classes": [[25, 25, 5]] * 10, "drawings": [[3, 4, 5]] * 10},
    }
    _assert_png(report.plot_hard_triplets(X, mined, tmp_path / "hard.png", n=8), min_w=200)
    # A panel with nothing recorded still gives a figure.
    _assert_png(report.plot_hard_triplets(X, {"first": mined["first"]}, tmp_path / "hard1.png"), min_w=200)


def test_no_heavy_imports():
    code = (
        "import sys, tripletml.report; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'mlflow', 'dvc', 'matplotlib.pyplot')]; "
        "assert not bad, bad; assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

"""Tests for tripletml.report: the sampler x miner table, paired tests, the finding,
seed runs, Markdown, figures and atomic writing."""

from __future__ import annotations

import json
import subprocess
import sys
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tripletml import figures, markdown, report
from tripletml.data import PNG_MAGIC, DataError

REPO = Path(__file__).resolve().parents[1]
S = 12
N_WAY = 20

# strategy: (sampler, miner), as each strategy's params say
DESIGN = {
    "random": ("triplets", "random"),
    "hard": ("triplets", "hard"),
    "random_classes": ("classes", "random"),
    "hard_classes": ("classes", "hard"),
    "batch_all": ("classes", "batch_all"),
}
STRATEGIES = list(DESIGN)
ROWS = [*STRATEGIES, "ensemble"]  # metrics/evaluate also has the ensemble, which has no train metrics
# Lake's 20 runs: some strategies have no figure (absent from metrics/evaluate -> NaN).
LAKE = {"random": 88.0, "hard": 93.1, "hard_classes": 80.0, "ensemble": 97.0}
PAIRS = [
    ("miner", "sampler triplets", "hard", "random"),
    ("miner", "sampler classes", "hard_classes", "random_classes"),
    ("sampler", "miner random", "random_classes", "random"),
    ("sampler", "miner hard", "hard_classes", "hard"),
]


def _evaluate() -> dict:
    out = {}
    for i, s in enumerate(ROWS):
        out[s] = {
            "test_acc20": 70.0 + 2 * i,
            "test_acc20_ci95_low": 68.2 + 2 * i,
            "test_acc20_ci95_high": 71.7 + 2 * i,
            "test_acc20_250": 69.6 + 2 * i,
            "within_acc20": 50.0 + i,
            "within_acc20_ci95_low": 47.9 + i,
            "within_acc20_ci95_high": 52.1 + i,
        }
        if s in LAKE:
            out[s]["lake20_acc"] = LAKE[s]
    return out


def _train() -> dict:
    return {
        s: {
            "assignment_best_acc20": 61.3 + 3 * i,
            "assignment_best_loop": 9,
            "best_loop": 10 - i,
            "best_val_acc20": 75.25 + i,
            "train_seconds": 3600.0 * (i + 1),
            "seconds_per_step": 0.05,
        }
        for i, s in enumerate(STRATEGIES)
    }


# ----------------------------------------------------------------------------- predictions

# Which of (random, hard, random_classes, hard_classes) gets a task right, and on how many tasks.
ACROSS_BLOCKS = [
    ((0, 1, 0, 1), 10),
    ((1, 0, 1, 0), 1),
    ((1, 1, 1, 1), 15),
    ((0, 0, 0, 0), 8),
    ((0, 1, 1, 0), 2),
    ((0, 0, 1, 0), 3),
    ((0, 0, 0, 1), 1),
]  # 40 tasks: random 16 right, hard 27, random_classes 21, hard_classes 26
WITHIN_BLOCKS = [((1, 0, 1, 0), 8), ((1, 1, 1, 1), 1), ((0, 0, 0, 0), 1)]  # 10 tasks


def _exact_p(b: int, c: int) -> float:
    """Two-sided exact binomial p of b out of b + c at 1/2, written out from its definition."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n)


# Counted by hand from the blocks above: (strategy, baseline, task set) -> (b, c, acc, baseline_acc)
EXPECTED_TESTS = [
    ("hard", "random", "across", 12, 1, 67.5, 40.0),  # b: 10 + 2; c: 1
    ("hard", "random", "within", 0, 8, 10.0, 90.0),
    ("hard_classes", "random_classes", "across", 11, 6, 65.0, 52.5),  # b: 10 + 1; c: 1 + 2 + 3
    ("hard_classes", "random_classes", "within", 0, 8, 10.0, 90.0),
    ("random_classes", "random", "across", 5, 0, 52.5, 40.0),  # b: 2 + 3
    ("random_classes", "random", "within", 0, 0, 90.0, 90.0),
    ("hard_classes", "hard", "across", 1, 2, 65.0, 67.5),  # b: the last block; c: (0, 1, 1, 0)
    ("hard_classes", "hard", "within", 0, 0, 10.0, 10.0),
]


def _picks(blocks, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Targets and each strategy's pick: the target where the block says right, else another way."""
    rng = np.random.default_rng(seed)
    right = np.concatenate([np.tile(np.array(pattern, bool), (n, 1)) for pattern, n in blocks])
    k = len(right)
    target = rng.integers(0, N_WAY, k)
    picks = {}
    for j, s in enumerate(STRATEGIES[:4]):
        wrong = (target + rng.integers(1, N_WAY, k)) % N_WAY
        picks[s] = np.where(right[:, j], target, wrong)
    for s in ("batch_all", "ensemble"):  # present, but in no pair
        picks[s] = rng.integers(0, N_WAY, k)
    return target, picks


def _predictions() -> dict[str, np.ndarray]:
    target, across = _picks(ACROSS_BLOCKS, 0)
    within_target, within = _picks(WITHIN_BLOCKS, 1)
    k = len(target)
    rng = np.random.default_rng(2)
    support_chars = np.stack([rng.choice(30, N_WAY, replace=False) for _ in range(k)])
    support_drawings = rng.integers(0, 20, (k, N_WAY))
    out = {
        "target": target,
        "within_target": within_target,
        "query_char": support_chars[np.arange(k), target],
        "query_drawing": (support_drawings[np.arange(k), target] + 1) % 20,
        "support_chars": support_chars,
        "support_drawings": support_drawings,
    }
    out.update({f"pred_{s}": p for s, p in across.items()})
    out.update({f"within_pred_{s}": p for s, p in within.items()})
    return out


def _tests() -> pd.DataFrame:
    return report.paired_tests(_predictions(), PAIRS)


def _seed_runs() -> pd.DataFrame:
    """hard - random over seeds 1..3: +1.0, -0.5, +2.0; seed 4 ran random only; seed 5 hard_classes only."""
    rows = [
        (1, "random", 70.0), (1, "hard", 71.0),
        (2, "random", 70.0), (2, "hard", 69.5),
        (3, "random", 68.0), (3, "hard", 70.0),
        (4, "random", 50.0),
        (5, "hard_classes", 60.0),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["seed", "strategy", "test_acc20"])


# ----------------------------------------------------------------------------- helpers


def _history(offset: float, loops: int = 10) -> pd.DataFrame:
    loop = np.arange(1, loops + 1)
    return pd.DataFrame(
        {
            "loop": loop,
            "loss": 0.6 / (loop + offset / 5),
            "val_acc20": 20 + offset + 5 * loop,
            "test_acc20_250": 18 + offset + 5 * loop,
            "loop_seconds": 5.0,
            "steps": 160,
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


def _pixels(path: Path) -> np.ndarray:
    """The PNG's RGB pixels, after checking it is a PNG and no temp file was left beside it."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def _size(pixels: np.ndarray) -> tuple[int, int]:
    return pixels.shape[1], pixels.shape[0]  # (width, height), as Pillow gives it


def _colour_pixels(pixels: np.ndarray, hex_colour: str, tol: int = 12) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=-1) <= tol).sum())


def _md_table(md: str, heading: str) -> list[dict[str, str]]:
    """The first pipe table after ``heading``, as one {header: cell} dict per row."""
    lines = md.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]  # rows[1] is the alignment rule
    return [dict(zip(header, r, strict=True)) for r in body]


def _column(row: dict[str, str], marker: str) -> str:
    (key,) = [k for k in row if marker in k]
    return row[key]


# ----------------------------------------------------------------------------- tables


def test_comparison_table_columns_and_design():
    table = report.comparison_table(_evaluate(), _train(), DESIGN)
    assert list(table.columns) == list(report.TABLE_COLUMNS)
    assert list(table.columns[:3]) == ["strategy", "sampler", "miner"]
    assert {"lake20_acc", "assignment_best_acc20"} <= set(table.columns)
    assert list(table["strategy"]) == ROWS  # metrics/evaluate's order
    design = {r.strategy: (r.sampler, r.miner) for r in table.itertuples()}
    assert design == {**DESIGN, "ensemble": ("", "")}
    by = table.set_index("strategy")
    assert by.loc["hard", "test_acc20"] == 72.0 and by.loc["hard", "assignment_best_acc20"] == pytest.approx(64.3)
    assert by.loc["random_classes", "best_loop"] == 8 and str(table["best_loop"].dtype) == "Int64"
    assert by.loc["hard", "lake20_acc"] == 93.1 and np.isnan(by.loc["random_classes", "lake20_acc"])
    # The ensemble keeps its scores; only the train columns are empty.
    assert by.loc["ensemble", "test_acc20"] == 80.0
    assert pd.isna(by.loc["ensemble", "best_loop"]) and np.isnan(by.loc["ensemble", "assignment_best_acc20"])


def test_factor_pairs_are_the_sampler_by_miner_design():
    table = report.comparison_table(_evaluate(), _train(), DESIGN)
    assert report.factor_pairs(table) == PAIRS  # batch_all and the ensemble are in no pair
    # Without the classes cells only the miner within triplets is left.
    partial = {s: v for s, v in _evaluate().items() if s in ("random", "hard", "batch_all")}
    assert report.factor_pairs(report.comparison_table(partial, _train(), DESIGN)) == [PAIRS[0]]
    # Without the design nothing is known about the pairs.
    assert report.factor_pairs(report.comparison_table(_evaluate(), _train(), {})) == []


def test_paired_tests_counts_p_values_and_verdicts():
    tests = _tests()
    assert list(tests.columns) == list(report.TEST_COLUMNS)
    got = [(r.strategy, r.baseline, r.task_set, r.b, r.c) for r in tests.itertuples()]
    assert got == [e[:5] for e in EXPECTED_TESTS]
    assert [(r.acc, r.baseline_acc) for r in tests.itertuples()] == [pytest.approx(e[5:]) for e in EXPECTED_TESTS]
    for r, (_, _, _, b, c, *_) in zip(tests.itertuples(), EXPECTED_TESTS):
        assert r.p_value == pytest.approx(_exact_p(b, c), rel=1e-9)
        assert r.tasks == (40 if r.task_set == "across" else 10)
    assert [(r.factor, r.held) for r in tests.itertuples()] == [p[:2] for p in PAIRS for _ in range(2)]
    verdicts = list(tests["verdict"])
    assert verdicts[0] == "hard beats random (p = 0.0034)"  # 28 / 8192
    assert verdicts[1] == "random beats hard (p = 0.0078)"  # the winner named, whichever side it is on
    assert verdicts[4] == "no significant difference at the 5% level (p = 0.062)"  # 5 to 0: 1/16
    assert verdicts[5] == "no significant difference at the 5% level (p = 1)"  # no discordant task


def test_both_tables_print_the_same_digits_for_the_same_accuracy():
    # 1543 / 2000 = 77.15 %: 100 * mean is 77.1499..., the evaluate stage writes round(.., 3) = 77.15
    target = np.zeros(2000, dtype=np.int64)
    pred = {"target": target, "pred_random": np.ones(2000, np.int64), "pred_hard": np.r_[np.zeros(1543), np.ones(457)].astype(np.int64)}
    tests = report.paired_tests(pred, [PAIRS[0]])
    evaluate = {"random": {"test_acc20": 0.0}, "hard": {"test_acc20": round(100.0 * 1543 / 2000, 3)}}
    table = report.comparison_table(evaluate, {}, DESIGN)
    md = markdown.comparison_markdown(table, tests)
    assert tests.iloc[0].acc == evaluate["hard"]["test_acc20"]
    assert md.count("77.2") == 2 and "77.1" not in md


def test_verdict_wording():
    assert report.verdict("hard", "random", 30, 5, 0.0012) == "hard beats random (p = 0.0012)"
    assert report.verdict("hard", "random", 5, 30, 0.0012) == "random beats hard (p = 0.0012)"
    assert report.verdict("hard", "random", 12, 9, 0.31) == "no significant difference at the 5% level (p = 0.31)"
    assert report.verdict("hard", "random", 12, 9, 0.05).startswith("no significant difference")  # alpha excluded


def test_paired_tests_skip_absent_within_and_name_missing_strategy():
    pred = {k: v for k, v in _predictions().items() if not k.startswith("within")}
    tests = report.paired_tests(pred, PAIRS)
    assert list(tests["task_set"]) == ["across"] * 4
    with pytest.raises(KeyError, match="pred_nope"):
        report.paired_tests(pred, [("miner", "sampler triplets", "nope", "random")])


# ----------------------------------------------------------------------------- finding and seeds


def test_finding_names_each_factor_with_its_difference_p_and_seed_range():
    text = report.finding(_tests(), _seed_runs())
    assert text.startswith("What moved 20-way accuracy across alphabets in this run: ")
    # the miner within triplets: p = 28/8192 < 0.05, and seeds 1-3 ran both
    assert "the hard miner with triplet batches: +27.5 points (hard 67.5 % vs random 40.0 %, p = 0.0034, beyond noise; -0.5 to +2.0 over 3 seeds)" in text
    # the miner within classes: 11 to 6, p = 0.33; no seed ran random_classes
    assert "+12.5 points (hard_classes 65.0 % vs random_classes 52.5 %, p = 0.33, within noise)" in text
    # the sampler for the random miner: 5 to 0, p = 1/16 = 0.0625, just above alpha
    assert "class batches for the random miner: +12.5 points (random_classes 52.5 % vs random 40.0 %, p = 0.062, within noise)" in text
    # the sampler for the hard miner: a loss, signed; seed 5 ran hard_classes but not hard
    assert "class batches for the hard miner: -2.5 points (hard_classes 65.0 % vs hard 67.5 %, p = 1, within noise)" in text
    assert text.count("beyond noise") == 1 and text.count("within noise") == 3
    assert text.count(" over ") == 1  # a seed range only where seeds ran both strategies
    assert "within-alphabet" not in text and "10.0 %" not in text  # across-alphabet rows only


def test_finding_without_seed_runs_and_without_tests():
    tests = _tests()
    for seeds in (None, _seed_runs().iloc[:0]):
        text = report.finding(tests, seeds)
        assert " over " not in text and "beyond noise" in text
    assert report.finding(tests[tests["task_set"] == "within"]) == "No paired comparison in this run."


def test_finding_calls_noise_only_below_alpha():
    row = dict(zip(report.TEST_COLUMNS, ["miner", "sampler triplets", "hard", "random", "across", 100, 60.0, 50.0, 20, 10, 0.05, ""]))
    at_alpha = pd.DataFrame([row])
    below = pd.DataFrame([{**row, "p_value": 0.0499}])
    assert "p = 0.05, within noise" in report.finding(at_alpha)
    assert "p = 0.05, beyond noise" in report.finding(below)  # 0.0499 prints as 0.05 too
    assert "+10.0 points" in report.finding(below)


def test_seed_spread():
    runs = _seed_runs()
    assert report.seed_spread(runs, "hard", "random") == (-0.5, 2.0, 3)
    assert report.seed_spread(runs, "random", "hard") == (-2.0, 0.5, 3)
    assert report.seed_spread(runs, "hard_classes", "random_classes") is None  # random_classes never ran
    assert report.seed_spread(runs, "hard_classes", "hard") is None  # both ran, never at the same seed
    within = runs.assign(within_acc20=runs["test_acc20"] / 2)
    assert report.seed_spread(within, "hard", "random", column="within_acc20") == (-0.25, 1.0, 3)
    assert report.seed_spread(runs.iloc[:0], "hard", "random") is None


def test_load_seed_runs(tmp_path):
    path = tmp_path / "seed_runs.csv"
    _seed_runs().to_csv(path, index=False)
    runs = report.load_seed_runs(path)
    assert report.seed_spread(runs, "hard", "random") == (-0.5, 2.0, 3)
    with pytest.raises(DataError, match=r"nowhere\.csv: file not found"):
        report.load_seed_runs(tmp_path / "nowhere.csv")
    _seed_runs().drop(columns="test_acc20").to_csv(tmp_path / "no_acc.csv", index=False)
    with pytest.raises(DataError, match=r"no_acc\.csv: missing column\(s\) test_acc20"):
        report.load_seed_runs(tmp_path / "no_acc.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: not a readable CSV"):
        report.load_seed_runs(tmp_path / "empty.csv")


def test_the_repository_seed_runs_include_the_committed_default_run():
    """The report stage reads docs/seed_runs.csv: it holds the committed default run's own figures
    (one of its rows), so the report quotes their spread beside each of its differences."""
    runs = report.load_seed_runs(REPO / "docs" / "seed_runs.csv")
    table = pd.read_csv(REPO / "runs" / "default" / "reports" / "comparison.csv")
    tests = pd.read_csv(REPO / "runs" / "default" / "reports" / "tests.csv")
    assert report.seed_runs_of(runs, table, seed=0) is runs
    text = report.finding(tests, runs)
    across = tests[tests["task_set"] == "across"]
    assert text.count(" over ") == len(across) > 0, "every difference comes with its range"


# ----------------------------------------------------------------------------- Markdown and files


def test_markdown_shows_both_figures_the_finding_and_the_tests():
    table = report.comparison_table(_evaluate(), _train(), DESIGN)
    tests = _tests()
    summary = report.finding(tests, _seed_runs())
    md = markdown.comparison_markdown(table, tests, {"machine": "2-core CPU", "image_size": 28}, summary=summary)
    assert md.startswith("# ")
    assert "**machine**: 2-core CPU" in md and "**image size**: 28" in md
    rows = {r["strategy"]: r for r in _md_table(md, "## Accuracy")}
    assert list(rows) == ROWS
    for i, s in enumerate(ROWS):
        honest = _column(rows[s], "chosen on validation")
        assert honest == f"{70.0 + 2 * i:.1f} [{68.2 + 2 * i:.1f}, {71.7 + 2 * i:.1f}]"
        optimistic = _column(rows[s], "chosen on test: optimistic")
        assert optimistic == ("–" if s == "ensemble" else f"{61.3 + 3 * i:.1f}")
        assert (rows[s]["sampler"], rows[s]["miner"]) == DESIGN.get(s, ("", ""))
    assert _column(rows["hard"], "Lake") == "93.1" and _column(rows["random_classes"], "Lake") == "–"
    # The finding sits under the table, above the paired tests.
    assert md.index("| ensemble") < md.index(summary) < md.index("## Paired tests")
    tested = _md_table(md, "## Paired tests")
    assert [(r["strategy"], r["vs"], r["b"], r["c"]) for r in tested] == [
        (s, b, str(nb), str(nc)) for s, b, _, nb, nc, *_ in EXPECTED_TESTS
    ]
    assert tested[0]["verdict"] == "hard beats random (p = 0.0034)"


def test_markdown_lake_section_ranks_this_run_among_the_published_marks():
    table = report.comparison_table(_evaluate(), _train(), DESIGN)
    md = markdown.comparison_markdown(table, _tests())
    marks = [(r["model"], r["accuracy %"]) for r in _md_table(md, "## Lake et al.'s 20 official one-shot runs")]
    assert marks == [
        ("this run: ensemble", "97.0"),
        ("Bayesian Program Learning (Lake et al. 2015)", "96.7"),
        ("Humans (Lake et al. 2015)", "95.5"),
        ("this run: hard", "93.1"),
        ("Siamese network (Koch et al. 2015; a different split)", "92.0"),
        ("this run: random", "88.0"),
        ("Deep ConvNet (Lake et al. 2015)", "86.5"),
        ("this run: hard_classes", "80.0"),
    ]
    # No Lake figures in the run: no section.
    no_lake = report.comparison_table({s: {k: v for k, v in e.items() if k != "lake20_acc"} for s, e in _evaluate().items()}, _train(), DESIGN)
    assert "Lake et al.'s 20 official" not in markdown.comparison_markdown(no_lake, _tests())


def test_markdown_without_validation_alphabets_says_no_validation_chosen_figure_exists():
    # data.validation_alphabets: 0 (the assignment's split): training keeps the last loop's
    # model and writes best_val_acc20 null; the report must not call its figure validation-chosen.
    train = {s: {**m, "best_val_acc20": None, "best_loop": 10} for s, m in _train().items()}
    table = report.comparison_table(_evaluate(), train, DESIGN)
    md = markdown.comparison_markdown(table, _tests())
    assert "no validation-chosen figure exists" in md and "chosen on validation" not in md
    rows = {r["strategy"]: r for r in _md_table(md, "## Accuracy")}
    assert _column(rows["hard"], "last loop's model") == "72.0 [70.2, 73.7]"
    assert _column(rows["hard"], "chosen on test: optimistic") == "64.3"
    # With validation the same table says the opposite.
    validated = markdown.comparison_markdown(report.comparison_table(_evaluate(), _train(), DESIGN), _tests())
    assert "no validation-chosen figure exists" not in validated and "chosen on validation" in validated


def test_markdown_without_paired_tests_says_so():
    table = report.comparison_table(_evaluate(), {}, {})  # no design: no pairs
    tests = report.paired_tests(_predictions(), report.factor_pairs(table))
    assert len(tests) == 0
    assert "No pair of strategies that differ in one factor only." in markdown.comparison_markdown(table, tests)


def test_markdown_without_tabulate(monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # makes `import tabulate` fail
    table = report.comparison_table(_evaluate(), _train(), DESIGN)
    md = markdown.comparison_markdown(table, _tests(), {})
    assert "| hard | triplets | hard | 72.0 [70.2, 73.7] | 64.3 | 51.0 [48.9, 53.1] | 93.1 | 9 |" in md
    assert "|:---|:---|:---|---:|" in md


def test_write_report_atomic_and_roundtrip(tmp_path):
    table = report.comparison_table(_evaluate(), _train(), DESIGN)
    tests = _tests()
    fig = tmp_path / "fig" / "acc.png"
    fig.parent.mkdir()
    fig.write_bytes(PNG_MAGIC)
    paths = markdown.write_report(tmp_path / "out", table, tests, {"wall_time": "1 h"}, {"accuracy": fig}, "The finding.")
    assert set(paths) == {"csv", "md"}
    back = pd.read_csv(paths["csv"], keep_default_na=False)
    assert list(back.columns) == list(report.TABLE_COLUMNS) and list(back["strategy"]) == ROWS
    assert list(back["miner"]) == [DESIGN[s][1] for s in STRATEGIES] + [""]
    md = paths["md"].read_text(encoding="utf-8")
    assert "](../fig/acc.png)" in md and "\nThe finding.\n" in md and "**wall time**: 1 h" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["comparison.csv", "comparison.md"]


def test_loaders(tmp_path):
    (tmp_path / "evaluate").mkdir()
    for s, row in _evaluate().items():
        (tmp_path / "evaluate" / f"{s}.json").write_text(json.dumps(row))
    assert list(report.load_evaluate(tmp_path / "evaluate", STRATEGIES)) == ROWS  # the pipeline's order, the ensemble last
    (tmp_path / "train").mkdir()
    (tmp_path / "history").mkdir()
    for i, s in enumerate(STRATEGIES):
        (tmp_path / "train" / f"{s}.json").write_text(json.dumps(_train()[s]))
        _history(i).to_csv(tmp_path / "history" / f"{s}.csv", index=False)
    assert report.load_train_metrics(tmp_path / "train", STRATEGIES)["hard_classes"]["best_loop"] == 7
    hist = report.load_histories(tmp_path / "history", STRATEGIES)
    assert list(hist["hard"].columns) == ["loop", "loss", "val_acc20", "test_acc20_250", "loop_seconds", "steps"]
    assert hist["hard"]["val_acc20"].iloc[0] == 26.0
    _history(0).drop(columns="loss").to_csv(tmp_path / "history" / "random.csv", index=False)
    with pytest.raises(DataError, match=r"random\.csv: missing column\(s\) loss"):
        report.load_histories(tmp_path / "history", ["random"])
    with pytest.raises(DataError, match=r"batch_hard\.csv: file not found"):
        report.load_histories(tmp_path / "history", ["batch_hard"])
    pred = _predictions()
    np.savez(tmp_path / "predictions.npz", **pred)
    loaded = report.load_predictions(tmp_path / "predictions.npz")
    assert np.array_equal(loaded["pred_hard"], pred["pred_hard"])
    with pytest.raises(DataError, match="missing.json"):
        report.load_mined(tmp_path / "missing.json")
    (tmp_path / "evaluate" / "hard.json").write_text("{")
    with pytest.raises(DataError, match=r"evaluate/hard\.json: not valid JSON"):
        report.load_evaluate(tmp_path / "evaluate", STRATEGIES)
    with pytest.raises(DataError, match=r"evaluate/semi_hard\.json"):
        report.load_evaluate(tmp_path / "evaluate", ["semi_hard"])


# ----------------------------------------------------------------------------- figures


def test_class_image_handles_rotated_classes():
    X = _glyphs(7)
    n = X.shape[0]
    for c in (0, 3, 6, 7, 10, 15, 20, 27):
        for d in (0, 19):
            assert np.array_equal(figures.class_image(X, c, d), np.rot90(X[c % n, d], c // n))
    assert not np.array_equal(figures.class_image(X, 10, 4), X[3, 4])  # actually rotated
    assert figures.class_image(X[..., None], 9, 2).shape == (S, S)  # trailing channel dropped
    with pytest.raises(IndexError):
        figures.class_image(X, 1, 20)


def test_plot_accuracy_size_and_content(tmp_path):
    hist = {"random": _history(0), "hard": _history(10)}
    margins = {"random": 0.5, "hard": 0.5}
    out = figures.plot_accuracy(hist, tmp_path / "with.png", margins=margins)
    assert out == tmp_path / "with.png"
    drawn = _pixels(out)
    assert _size(drawn) == (round(12.0 * figures.DPI), round(4.6 * figures.DPI))  # two panels side by side
    # Without margins the loss panel stays empty but the accuracy panel is still drawn.
    bare = _pixels(figures.plot_accuracy(hist, tmp_path / "without.png"))
    assert _size(bare) == _size(drawn)
    blue = _colour_pixels(bare, "#1f77b4")  # C0: random's colour
    assert blue > 200 and _colour_pixels(drawn, "#1f77b4") > blue + 200
    # Different histories draw different pictures.
    other = _pixels(figures.plot_accuracy({"random": _history(0), "hard": _history(30)}, tmp_path / "other.png", margins=margins))
    assert (other != drawn).any(axis=-1).sum() > 100
    # The dashed per-loop test curve is drawn from test_acc20_250.
    no_test = {s: h.assign(test_acc20_250=np.nan) for s, h in hist.items()}
    undashed = _pixels(figures.plot_accuracy(no_test, tmp_path / "no_test.png", margins=margins))
    assert _colour_pixels(undashed, "#1f77b4") < _colour_pixels(drawn, "#1f77b4") - 100


def test_plot_tasks(tmp_path):
    X = _glyphs(30)
    pred = _predictions()
    three = _pixels(figures.plot_tasks(X, pred, STRATEGIES[:4], tmp_path / "tasks3.png", n_tasks=3))
    one = _pixels(figures.plot_tasks(X, pred, STRATEGIES[:4], tmp_path / "tasks1.png", n_tasks=1))
    (w3, h3), (w1, h1) = _size(three), _size(one)
    assert w3 > h1 and w3 == w1 and h3 > 2 * h1  # 21 images side by side; one row per task
    a = _pixels(figures.plot_tasks(X, pred, STRATEGIES[:4], tmp_path / "a.png", tasks=[0]))
    b = _pixels(figures.plot_tasks(X, pred, STRATEGIES[:4], tmp_path / "b.png", tasks=[1]))
    assert a.shape == b.shape and (a != b).any(axis=-1).sum() > 100
    assert _colour_pixels(a, figures.TRUE_COLOUR, tol=30) > 20  # the true match is framed green


def test_plot_tasks_shows_disagreements_first():
    pred = _predictions()
    names = STRATEGIES[:4]
    picked = figures._pick_tasks(pred, names, 4)
    correct = np.stack([pred[f"pred_{s}"] == pred["target"] for s in names])
    assert all(correct[:, t].any() and not correct[:, t].all() for t in picked)
    assert picked == [0, 1, 2, 3]  # the first block splits the strategies


def test_plot_hard_triplets(tmp_path):
    X = _glyphs(10)
    mined = {
        "first": {"loop": 1, "classes": [[0, 0, 15], [12, 12, 2], [4, 4, 14]], "drawings": [[0, 1, 2]] * 3},
        "last": {"loop": 10, "classes": [[25, 25, 5]] * 10, "drawings": [[3, 4, 5]] * 10},
    }
    eight = _pixels(figures.plot_hard_triplets(X, mined, tmp_path / "hard.png", n=8))
    # A panel with nothing recorded still gives a figure, with as many rows as the other panel.
    three = _pixels(figures.plot_hard_triplets(X, {"first": mined["first"]}, tmp_path / "hard1.png"))
    assert _size(eight)[0] == _size(three)[0] and _size(eight)[1] > _size(three)[1]
    titled = _pixels(figures.plot_hard_triplets(X, mined, tmp_path / "titled.png", n=8, title="classes sampler, hard miner"))
    assert titled.shape == eight.shape and (titled != eight).any()


def test_no_heavy_imports():
    code = (
        "import sys, tripletml.report; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'mlflow', 'dvc', 'matplotlib.pyplot')]; "
        "assert not bad, bad; assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seed_runs_count_only_for_the_configuration_they_ran():
    """The seed runs include this run (its seed) only if they are of its configuration: a profile
    with other params gives other figures at the same seed, and is quoted no seed range."""
    runs = _seed_runs()
    this = pd.DataFrame({"strategy": ["random", "hard", "batch_all"], "test_acc20": [70.0, 71.04, 90.0]})
    assert report.seed_runs_of(runs, this, seed=1) is runs  # equal to rounding; batch_all was not seed-run
    assert report.seed_runs_of(runs, this.assign(test_acc20=[70.0, 72.0, 90.0]), seed=1) is None
    assert report.seed_runs_of(runs, this, seed=9) is None  # no run at this seed: nothing ties them to this one


def test_runs_of_one_seed_on_two_machines_count_as_two_runs():
    rows = [
        (0, "cpu A", "random", 80.0), (0, "cpu A", "hard", 84.0),
        (0, "cpu B", "random", 81.0), (0, "cpu B", "hard", 83.5),  # the same seed, other kernels
        (1, "cpu A", "random", 79.0), (1, "cpu A", "hard", 85.0),
    ]  # fmt: skip
    runs = pd.DataFrame(rows, columns=["seed", "machine", "strategy", "test_acc20"])
    assert report.seed_spread(runs, "hard", "random") == (2.5, 6.0, 3)
    assert report.spread_words(runs, "hard", "random") == "3 runs: 2 seeds, 2 machines"
    assert report.spread_words(runs[runs["machine"] == "cpu A"], "hard", "random") == "2 seeds"
    ours = pd.DataFrame({"strategy": ["random", "hard"], "test_acc20": [81.0, 83.5]})
    assert report.seed_runs_of(runs, ours, 0) is runs, "this run is cpu B's seed 0"
    assert report.seed_runs_of(runs, ours.assign(test_acc20=[81.0, 84.0]), 0) is None, "no one run at seed 0 matches"
    text = report.finding(_tests(), runs)
    assert "+2.5 to +6.0 over 3 runs: 2 seeds, 2 machines" in text


def test_a_seed_runs_file_without_machines_loads_with_an_empty_machine(tmp_path):
    path = tmp_path / "seed_runs.csv"
    _seed_runs().to_csv(path, index=False)
    runs = report.load_seed_runs(path)
    assert set(runs["machine"]) == {""} and report.spread_words(runs, "hard", "random") == "3 seeds"

"""The published tables, written from the committed run folders, never typed.

    python -m tripletml.docs            # rewrite every generated block of README.md and docs/*.md
    python -m tripletml.docs --check    # exit 1 naming each block that disagrees with its files

A generated block sits between two HTML comments, which Markdown does not show::

    <!-- generated: run-table default -->
    ...
    <!-- end generated -->

The first names the block's kind and its argument (a profile under ``runs/``); everything
between the two is replaced by what :data:`BLOCKS` makes from the files. A block whose files
are absent says so instead of showing a figure (a profile not yet run, a half-finished run).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import yaml

from tripletml import report
from tripletml.markdown import _duration, _markdown_table, _pct, _pct_ci
from tripletml.runs import RunRecord, load_run

__all__ = ["BLOCKS", "render", "rewrite", "main"]

DOCS = ("README.md", "docs/results.md")
BLOCK = re.compile(r"(<!-- generated: (?P<kind>[a-z-]+)(?: (?P<arg>\S+))? -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)
SEED_RUNS = Path("docs/seed_runs.csv")


class Sources:
    """The files blocks are made from, read once: ``runs/<profile>/`` and the seed runs."""

    def __init__(self, root: Path):
        self.root = root
        self._runs: dict[str, RunRecord | None] = {}

    def run(self, profile: str) -> RunRecord | None:
        if profile not in self._runs:
            folder = self.root / "runs" / profile
            self._runs[profile] = load_run(folder) if (folder / "run.json").is_file() else None
        return self._runs[profile]

    def seed_runs(self) -> pd.DataFrame | None:
        path = self.root / SEED_RUNS
        return report.load_seed_runs(path) if path.is_file() else None


def _not_run(profile: str) -> str:
    return (f"*No finished run of this profile is committed yet (`runs/{profile}/`): "
            f"`python profiles/run.py {profile}` makes and keeps one.*")


def _design(run: RunRecord) -> dict[str, tuple[str, str]]:
    raw = yaml.safe_load((run.folder / "params.yaml").read_text(encoding="utf-8")) or {}
    return {s: (v.get("sampler", ""), v.get("miner", "")) for s, v in (raw.get("strategies") or {}).items()}


def _table(run: RunRecord) -> pd.DataFrame:
    """The report's comparison table, made again from the run's metrics files."""
    return report.comparison_table(run.evaluate, run.train, _design(run))


def _machine(run: RunRecord) -> str:
    m = run.info.get("machine") or {}
    if not m.get("cpu"):
        return m.get("note", "a machine not recorded")
    flags = ", ".join(m.get("cpu_flags") or []) or "no AVX"
    gpus = f", {', '.join(m['gpus'])}" if m.get("gpus") else ""
    return f"{m['cpu']}, {m.get('cores')} cores ({flags}){gpus}, TensorFlow {m.get('tensorflow')}"


def _note(info: dict) -> str:
    """A kept run's note as a closing sentence, or nothing."""
    return f" {info['note'].rstrip('.')}." if info.get("note") else ""


def run_facts(src: Sources, profile: str) -> str:
    """Where and how a profile's committed run was made."""
    run = src.run(profile)
    if run is None:
        return _not_run(profile)
    info = run.info
    done = ", ".join(info["strategies"])
    wall = f"; wall time {_duration(info['wall_seconds'])}" if info.get("wall_seconds") else ""
    commit = (info.get("commit") or "?")[:7]
    left = "" if info.get("evaluated") else " Not yet evaluated: the figures below are the training stages' own."
    note = _note(info)
    return (f"Committed run `runs/{profile}/` (commit {commit}, {info.get('saved')}): {done} trained "
            f"in {_duration(info['train_seconds'])}{wall}, on {_machine(run)}.{left}{note}")


def run_table(src: Sources, profile: str) -> str:
    """A profile's comparison table: each strategy's accuracies with intervals, loop and time."""
    run = src.run(profile)
    if run is None:
        return _not_run(profile)
    if not run.evaluate:
        shown = pd.DataFrame({
            "strategy": list(run.train),
            "assignment's best acc % (loop)": [f"{_pct(t.get('assignment_best_acc20'))} ({t.get('assignment_best_loop')})"
                                               for t in run.train.values()],
            "final loss": [f"{t.get('final_loss'):.4f}" for t in run.train.values()],
            "train time": [_duration(t.get("train_seconds")) for t in run.train.values()],
            "s / step": [f"{t.get('seconds_per_step'):.3g}" for t in run.train.values()],
        })
        return _markdown_table(shown)
    table = _table(run)
    validated = bool(table["best_val_acc20"].notna().any())
    shown = pd.DataFrame({
        "strategy": table["strategy"],
        "sampler": table["sampler"].fillna(""),
        "miner": table["miner"].fillna(""),
        "test acc % [95% CI]" + ("" if validated else ", last loop"): [
            _pct_ci(r.test_acc20, r.test_acc20_ci95_low, r.test_acc20_ci95_high) for r in table.itertuples()],
        "assignment's figure %": table["assignment_best_acc20"].map(_pct),
        "within-alphabet %": table["within_acc20"].map(_pct),
        "Lake's 20 runs %": table["lake20_acc"].map(_pct),
        "s / step": table["seconds_per_step"].map(lambda v: "–" if pd.isna(v) else f"{v:.3f}"),
    })
    return _markdown_table(shown, text=("strategy", "sampler", "miner"))


def run_finding(src: Sources, profile: str) -> str:
    """The report's finding for a profile's run, with the seed and machine spread where it applies."""
    run = src.run(profile)
    tests = run.tests() if run else None
    if run is None or tests is None:
        return _not_run(profile)
    seeds = src.seed_runs()
    seed = (yaml.safe_load((run.folder / "params.yaml").read_text()) or {}).get("train", {}).get("seed", 0)
    seeds = report.seed_runs_of(seeds, _table(run), seed) if seeds is not None else None
    return report.finding(tests, seeds)


def run_history(src: Sources, profile: str) -> str:
    """Per loop: each strategy's loss, accuracy on that loop's test tasks, and seconds."""
    run = src.run(profile)
    if run is None or not run.histories:
        return _not_run(profile)
    loops = sorted({int(x) for h in run.histories.values() for x in h["loop"]})
    cols: dict[str, list[str]] = {"loop": [str(n) for n in loops]}
    for s, h in run.histories.items():
        h = h.set_index("loop")
        pick = lambda col, fmt: [fmt(h.at[n, col]) if n in h.index and col in h else "–" for n in loops]  # noqa: E731
        cols[f"{s} loss"] = pick("loss", lambda v: f"{v:.4f}")
        if h["val_acc20"].notna().any():
            cols[f"{s} val %"] = pick("val_acc20", _pct)
        cols[f"{s} test (250) %"] = pick("test_acc20_250", _pct)
        cols[f"{s} s"] = pick("loop_seconds", lambda v: f"{v:.0f}")
    return _markdown_table(pd.DataFrame(cols), text=())


def run_headline(src: Sources, profile: str) -> str:
    """One sentence: each strategy's figures and the time the run took, or that it has not run."""
    run = src.run(profile)
    if run is None:
        return _not_run(profile)
    parts = []
    for s in run.info["strategies"]:
        ev, tr = run.evaluate.get(s), run.train[s]
        if ev:
            parts.append(f"{s} {_pct(ev.get('test_acc20'))} % across alphabets, {_pct(ev.get('within_acc20'))} % "
                         f"within one, {_pct(ev.get('lake20_acc'))} % on Lake's 20 runs")
        else:
            parts.append(f"{s} {_pct(tr.get('assignment_best_acc20'))} % (the assignment's figure: best of "
                         f"{len(run.histories.get(s, []))} loops, loop {tr.get('assignment_best_loop')})")
    took = _duration(run.info.get("wall_seconds") or run.info["train_seconds"])
    what = "the whole pipeline" if run.info.get("wall_seconds") else "training"
    head = "Committed run" if run.info.get("evaluated") else "Committed part of a run, not yet evaluated"
    note = _note(run.info)
    return f"{head} (`runs/{profile}/`): {'; '.join(parts)}. {what.capitalize()} took {took} on {_machine(run)}.{note}"


def run_tests(src: Sources, profile: str) -> str:
    """A profile's paired tests (exact McNemar on the same tasks), as the report gives them."""
    run = src.run(profile)
    tests = run.tests() if run else None
    if tests is None:
        return _not_run(profile)
    shown = pd.DataFrame({
        "factor": tests["factor"], "held fixed": tests["held"], "strategy": tests["strategy"], "vs": tests["baseline"],
        "tasks": [f"{n} ({t})" for n, t in zip(tests["tasks"], tests["task_set"])],
        "acc %": tests["acc"].map(_pct), "vs acc %": tests["baseline_acc"].map(_pct),
        "b": tests["b"].astype(str), "c": tests["c"].astype(str), "p": tests["p_value"].map(lambda p: f"{p:.2g}"),
    })
    return _markdown_table(shown, text=("factor", "held fixed", "strategy", "vs"))


def ablation_table(src: Sources, prefix: str | None = None) -> str:
    """The rows of ``docs/ablation.csv`` whose label starts with ``prefix`` (``_`` for a space)."""
    path = src.root / "docs" / "ablation.csv"
    rows = pd.read_csv(path)
    if prefix:
        rows = rows[rows["label"].str.startswith(prefix.replace("_", " "))]
    if not len(rows):
        return f"*No row of docs/ablation.csv starts with {prefix!r}.*"
    within = rows["best_val_within20"].notna().any() if "best_val_within20" in rows else False
    shown = pd.DataFrame({
        "label": rows["label"], "strategy": rows["strategy"],
        "overrides": rows["overrides"].fillna("").map(lambda o: f"`{o}`" if o else ""),
        "best val %": rows["best_val_acc20"].map(_pct),
        **({"best val within %": rows["best_val_within20"].map(_pct)} if within else {}),
        "loop": rows["best_loop"].astype(str) + "/" + rows["loops"].astype(str),
        "steps": rows["steps"].astype(str),
        "s / step": rows["seconds_per_step"].map(lambda v: f"{v:.3g}"),
        "commit": rows["commit"].astype(str),
    })
    return _markdown_table(shown, text=("label", "strategy", "overrides", "commit"))


def csv_table(src: Sources, path: str | None = None) -> str:
    """A committed CSV a benchmark wrote (``docs/benchmarks/<name>.csv``), as it is."""
    file = src.root / str(path)
    if not file.is_file():
        return f"*Not measured yet: no `{path}` is committed.*"
    table = pd.read_csv(file)
    cell = lambda v: "–" if pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    # A column with one value in every row (the machine, the settings) is said once, under the table.
    same = [c for c in table.columns if len(table) > 1 and table[c].nunique(dropna=False) == 1]
    shown = table.drop(columns=same).apply(lambda col: col.map(cell))
    body = _markdown_table(shown, text=[c for c in shown.columns if not pd.api.types.is_numeric_dtype(table[c])])
    return body + ("\n\n" + " · ".join(f"{c}: {cell(table[c].iloc[0])}" for c in same) if same else "")


def profiles_table(src: Sources, _: str | None = None) -> str:
    """Every committed profile side by side: each strategy's headline figures."""
    rows = []
    for folder in sorted((src.root / "runs").iterdir()):
        run = src.run(folder.name)
        if run is None:
            continue
        for s in [*run.info["strategies"], *(["ensemble"] if "ensemble" in run.evaluate else [])]:
            ev, tr = run.evaluate.get(s, {}), run.train.get(s, {})
            rows.append({
                "profile": folder.name, "strategy": s,
                "across %": _pct(ev.get("test_acc20")), "within %": _pct(ev.get("within_acc20")),
                "Lake's runs %": _pct(ev.get("lake20_acc")),
                "assignment's figure %": _pct(tr.get("assignment_best_acc20")),
                "train time": _duration(tr.get("train_seconds")),
            })
    return _markdown_table(pd.DataFrame(rows), text=("profile", "strategy")) if rows else "*No committed run yet.*"


def seed_table(src: Sources, _: str | None = None) -> str:
    """The default's runs at other seeds and machines: each strategy's accuracy, and the range."""
    runs = src.seed_runs()
    if runs is None or not len(runs):
        return "*No seed runs recorded (`python benchmarks/seeds.py`).*"
    wide = runs.pivot_table(index=["seed", "machine"], columns="strategy", values="test_acc20", aggfunc="first")
    order = [s for s in dict.fromkeys(runs["strategy"]) if s in wide]
    shown = pd.DataFrame({"seed": [str(k[0]) for k in wide.index], "machine": [k[1] or "–" for k in wide.index]})
    for s in order:
        shown[s] = [_pct(v) for v in wide[s]]
    if {"hard", "random"} <= set(wide):
        shown["hard − random"] = [f"{v:+.2f}" for v in wide["hard"] - wide["random"]]
    spans = {s: f"{wide[s].min():.2f}–{wide[s].max():.2f}" for s in order}
    span_row = {"seed": "range", "machine": "", **spans}
    if "hard − random" in shown:
        d = wide["hard"] - wide["random"]
        span_row["hard − random"] = f"{d.min():+.2f} to {d.max():+.2f}"
    shown = pd.concat([shown, pd.DataFrame([span_row])], ignore_index=True)
    return _markdown_table(shown, text=("seed", "machine"))


BLOCKS: dict[str, Callable[[Sources, str | None], str]] = {
    "run-facts": run_facts,
    "run-table": run_table,
    "run-finding": run_finding,
    "run-history": run_history,
    "run-headline": run_headline,
    "run-tests": run_tests,
    "ablation-table": ablation_table,
    "csv-table": csv_table,
    "profiles-table": profiles_table,
    "seed-table": seed_table,
}


def render(text: str, src: Sources, where: str = "") -> tuple[str, list[str]]:
    """``text`` with every generated block made anew, and the names of those that changed."""
    changed: list[str] = []

    def fill(m: re.Match) -> str:
        kind, arg = m["kind"], m["arg"]
        if kind not in BLOCKS:
            raise SystemExit(f"error: {where}: unknown generated block {kind!r} (known: {', '.join(BLOCKS)})")
        body = BLOCKS[kind](src, arg).rstrip("\n") + "\n"
        if body != m["body"]:
            changed.append(f"{where}: {kind}{' ' + arg if arg else ''}")
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(fill, text), changed


def rewrite(root: str | os.PathLike = ".", files: Sequence[str] = DOCS, check: bool = False) -> list[str]:
    """Make every generated block of ``files`` anew from the run folders; with ``check`` write
    nothing. Returns the blocks that were (or, checking, would be) changed."""
    root = Path(root)
    src, changed = Sources(root), []
    for name in files:
        path = root / name
        text = path.read_text(encoding="utf-8")
        new, stale = render(text, src, name)
        changed += stale
        if stale and not check:
            from tripletml.atomic import write_text

            write_text(path, new)
    return changed


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tripletml.docs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a block disagrees with its files")
    ap.add_argument("--root", default=".", help="the repository (default: here)")
    args = ap.parse_args(argv)
    changed = rewrite(args.root, check=args.check)
    for name in changed:
        print(f"{'stale' if args.check else 'rewritten'}: {name}")
    if args.check and changed:
        print("run `python -m tripletml.docs` to write them from runs/ and docs/seed_runs.csv", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

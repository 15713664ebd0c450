"""How much the figures move between runs: the default pipeline at other training seeds.

    python benchmarks/seeds.py 1 2 [--out docs/seed_runs.csv]

For each seed, ``dvc exp run -n seed-<s> -S train.seed=<s>`` reruns every training stage,
``evaluate`` and ``report`` in the workspace (saved as a DVC experiment, so ``dvc exp
show`` lists them side by side), then appends one row per strategy to ``--out``: seed,
machine, strategy, test_acc20, within_acc20, assignment_best_acc20, lake20_acc. The machine
(CPU, cores, widest CPU feature) tells runs of one seed apart: their figures agree only where
the kernels do. The evaluation
tasks stay the same (``evaluate.seed``), so differences between strategies are paired at
every seed. Add the committed run's own row with ``--current`` (no training). At the end
the workspace is put back to the commit's params and outputs (``git checkout``, ``dvc
checkout``). Runs are sequential: a 2-core machine fits one training at a time. Commit
nothing while it runs: DVC checks out a detached HEAD for each workspace experiment.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pandas as pd

from tripletml.atomic import atomic_path

COLUMNS = ["seed", "machine", "strategy", "test_acc20", "within_acc20", "assignment_best_acc20", "lake20_acc"]


def rows(seed: int) -> list[dict]:
    """One row per strategy (and the ensemble) from the workspace's metrics files."""
    from tripletml.machine import machine_label

    out, where = [], machine_label()
    for path in sorted(Path("metrics/evaluate").glob("*.json")):
        strategy, ev = path.stem, json.loads(path.read_text())
        train = Path("metrics/train") / f"{strategy}.json"
        best = json.loads(train.read_text()).get("assignment_best_acc20") if train.is_file() else None
        out.append({"seed": seed, "machine": where, "strategy": strategy, "test_acc20": ev["test_acc20"], "within_acc20": ev["within_acc20"],
                    "assignment_best_acc20": None if best is None else round(best, 3), "lake20_acc": ev.get("lake20_acc")})
    return out


def append(path: Path, new: list[dict]) -> None:
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    table["machine"] = table["machine"].fillna("") if "machine" in table else ""
    runs = {(r["seed"], r["machine"]) for r in new}  # a rerun of one seed on one machine replaces its rows
    old = table[[(s, m) not in runs for s, m in zip(table["seed"], table["machine"])]]
    table = pd.concat([old, pd.DataFrame(new, columns=COLUMNS)], ignore_index=True)[COLUMNS]
    with atomic_path(path) as tmp:
        table.sort_values(["seed"], kind="stable").to_csv(tmp, index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("seeds", nargs="*", type=int)
    ap.add_argument("--current", action="store_true", help="also record the workspace's own run (its train.seed)")
    ap.add_argument("--out", default="docs/seed_runs.csv")
    args = ap.parse_args()
    out = Path(args.out)
    if args.current:
        import yaml

        append(out, rows(int(yaml.safe_load(Path("params.yaml").read_text())["train"]["seed"])))
    try:
        for seed in args.seeds:
            subprocess.run(["dvc", "exp", "run", "-n", f"seed-{seed}", "-S", f"train.seed={seed}"], check=True)
            append(out, rows(seed))
            print(f"seed {seed}: recorded in {out}", flush=True)
    finally:
        if args.seeds:  # back to the commit's params and outputs; the seed table stays
            subprocess.run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "metrics", "reports"], check=True)
            subprocess.run(["dvc", "checkout", "--force"], check=True)


if __name__ == "__main__":
    main()

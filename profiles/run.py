"""Run a named profile as a DVC experiment, leaving the committed default as it is.

    python profiles/run.py assignment [extra dvc exp run arguments]

``profiles/<name>.yaml`` maps dotted params keys to values. Each becomes ``-S key=value`` of
``dvc exp run -n <name>``, so the run is saved as the experiment ``<name>`` (``dvc exp show``
compares it with the default; ``dvc exp apply <name>`` brings its results back). Killed
midway, the same command resumes every training stage from its last finished loop
(``checkpoints/``). Afterwards the workspace is put back to the commit's params and
outputs (``git checkout``, ``dvc checkout``). Commit nothing while it runs: DVC checks out a
detached HEAD for a workspace experiment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def overrides(name: str) -> dict:
    """The profile's dotted keys and values."""
    path = HERE / f"{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such profile (have: {', '.join(p.stem for p in HERE.glob('*.yaml'))})")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def set_params(values: dict) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run``, values in YAML flow form."""
    args = []
    for key, value in values.items():
        args += ["-S", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return args


def main() -> None:
    name, extra = sys.argv[1], sys.argv[2:]
    values = overrides(name)
    # `dvc exp run` first checks the committed outputs out of the cache, and in a fresh clone
    # that replaced the raw zips placed in data/raw by nothing; putting them into the cache
    # first (the download stage keeps a placed copy as it is) leaves them where they are.
    subprocess.run(["dvc", "repro", "download"], check=True)
    try:
        subprocess.run(["dvc", "exp", "run", "-n", name, *set_params(values), *extra], check=True)
    finally:
        subprocess.run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "metrics", "reports"], check=True)
        if subprocess.run(["dvc", "checkout", "--force"]).returncode:
            # A fresh clone's cache lacks the committed run's outputs: the experiment is saved all
            # the same, only the default's models are not in the workspace.
            print(f"note: the committed outputs are not in this cache; `dvc exp apply {name}` brings the "
                  "profile's outputs into the workspace, `dvc repro` rebuilds the default's", file=sys.stderr)


if __name__ == "__main__":
    main()

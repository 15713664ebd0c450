"""Run a named profile as a DVC experiment, leaving the committed default as it is, and keep
its finished run as files in ``runs/<name>/`` (``tripletml.runs``).

    python profiles/run.py assignment [extra dvc exp run arguments]
    python profiles/run.py default [extra dvc repro arguments, e.g. -f]

``profiles/<name>.yaml`` maps dotted params keys to values. Each becomes ``-S key=value`` of
``dvc exp run -n <name>``, so the run is saved as the experiment ``<name>`` (``dvc exp show``
compares it with the default; ``dvc exp apply <name>`` brings its results back). Killed
midway, the same command resumes every training stage from its last finished loop
(``checkpoints/``). Afterwards the workspace is put back to the commit's params and
outputs (``git checkout``, ``dvc checkout``). Commit nothing while it runs: DVC checks out a
detached HEAD for a workspace experiment. ``default`` is ``params.yaml`` itself: a timed ``dvc
repro`` in the workspace. The wall time is recorded when some stage ran (``dvc.lock`` was
rewritten), else left out.
"""

from __future__ import annotations

import subprocess
import sys
import time
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


def timed(cmd: list[str]) -> float | None:
    """Run ``cmd`` (it must succeed); its wall seconds if it ran a stage (``dvc.lock`` rewritten)."""
    lock = Path("dvc.lock")
    before = lock.stat().st_mtime_ns if lock.exists() else None
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    return seconds if lock.exists() and lock.stat().st_mtime_ns != before else None


def keep(name: str, values: dict, seconds: float | None) -> None:
    sys.path.insert(0, str(HERE))
    from keep import keep as keep_run  # profiles/keep.py

    keep_run(name, Path.cwd(), values, seconds, " ".join(["python profiles/run.py", *sys.argv[1:]]))


def main() -> None:
    name, extra = sys.argv[1], sys.argv[2:]
    if name == "default":  # params.yaml as it is: the workspace's own pipeline
        keep(name, {}, timed(["dvc", "repro", *extra]))
        return
    values = overrides(name)
    # `dvc exp run` first checks the committed outputs out of the cache, and in a fresh clone
    # that replaced the raw zips placed in data/raw by nothing; putting them into the cache
    # first (the download stage keeps a placed copy as it is) leaves them where they are.
    subprocess.run(["dvc", "repro", "download"], check=True)
    try:
        keep(name, values, timed(["dvc", "exp", "run", "-n", name, *set_params(values), *extra]))
    finally:
        subprocess.run(["git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "metrics", "reports"], check=True)
        if subprocess.run(["dvc", "checkout", "--force"]).returncode:
            # A fresh clone's cache lacks the committed run's outputs: the experiment is saved all
            # the same, only the default's models are not in the workspace.
            print(f"note: the committed outputs are not in this cache; `dvc exp apply {name}` brings the "
                  "profile's outputs into the workspace, `dvc repro` rebuilds the default's", file=sys.stderr)


if __name__ == "__main__":
    main()

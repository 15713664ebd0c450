"""Keep a workspace's finished pipeline run as files in ``runs/<name>/`` (``tripletml.runs``).

    python profiles/keep.py <name> [--from WORKSPACE] [--wall-seconds S] [--profile FILE]

``profiles/run.py`` calls this after a run; by hand it keeps a run made elsewhere (a clone that
ran ``dvc repro`` with a profile's params). Only outputs of stages that ``dvc status`` finds up
to date in the workspace are kept: a stage that has not run with these params (a long run
stopped midway) leaves out whatever another run left in its outputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def stale_outputs(workspace: Path) -> list[str]:
    """The outputs (as dvc.lock lists them) of every stage ``dvc status`` reports as changed."""
    out = subprocess.run(["dvc", "status", "--json"], cwd=workspace, capture_output=True, text=True, check=True).stdout
    changed = json.loads(out or "{}")
    lock = workspace / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) if lock.is_file() else {}
    return [o["path"] for name in changed for o in stages.get(name, {}).get("outs", [])]


def keep(name: str, workspace: Path, overrides: dict, wall_seconds: float | None, command: str, note: str | None = None) -> Path:
    from tripletml.runs import RUNS, load_run, save_run

    dest = save_run(name, workspace, REPO / RUNS / name, overrides, wall_seconds, command,
                    exclude=stale_outputs(workspace), note=note)
    print(f"kept as {dest.relative_to(REPO)}/: {', '.join(load_run(dest).info['strategies'])} "
          "(commit it to publish; `python -m tripletml.docs` writes the docs' tables from it)")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="the run folder's name: runs/<name>/ (a profile's name)")
    ap.add_argument("--from", dest="workspace", default=".", help="the workspace that ran it (default: here)")
    ap.add_argument("--wall-seconds", type=float, help="the pipeline's wall time, where it was timed")
    ap.add_argument("--profile", help="the profile file whose dotted keys the run applied (default: profiles/<name>.yaml)")
    ap.add_argument("--note", help="what the figures cannot say themselves (e.g. the cores were shared), kept in run.json")
    args = ap.parse_args()
    profile = Path(args.profile) if args.profile else HERE / f"{args.name}.yaml"
    overrides = (yaml.safe_load(profile.read_text(encoding="utf-8")) or {}) if profile.is_file() else {}
    try:
        keep(args.name, Path(args.workspace).resolve(), overrides, args.wall_seconds,
             " ".join(["python profiles/keep.py", *sys.argv[1:]]), args.note)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"error: `dvc status` failed in {args.workspace}: {exc.stderr.strip()}")
    except ValueError as exc:  # tripletml's DataError: nothing finished to keep
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> tuple[Path, str]:
    """One tiny repo copy after `dvc repro` (committed, its DVC cache full, its runs in its own
    mlflow.db), shared by the slow tests that start from a finished pipeline: each takes a copy
    (:func:`copy_of`) rather than running the pipeline again. Returns the folder and repro's output."""
    from repo_copy import make_repo, run_ok

    work = make_repo(tmp_path_factory.mktemp("reproduced") / "repo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # the repo's own mlflow.db
    out = run_ok(["dvc", "repro"], work, env={**env, "PYTHONPATH": str(work)}).stdout
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], cwd=work, check=True)
    return work, out


def copy_of(reproduced_repo: Path, dest: Path) -> Path:
    """A private copy of the reproduced repo: git history, DVC cache, outputs and mlflow.db."""
    shutil.copytree(reproduced_repo, dest, symlinks=True, ignore=shutil.ignore_patterns("tmp"))  # .dvc/tmp: locks, state
    return dest

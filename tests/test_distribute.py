"""tf.distribute: mirrored over two logical CPUs equals one device; two localhost workers agree."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from repo_copy import make_repo, run_ok, stage_env

from tripletml.distribute import is_chief

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["random", "hard", "batch_all", "hard_classes"])
def test_mirrored_on_two_cpus_matches_one_device(name: str) -> None:
    res = subprocess.run(
        [sys.executable, str(HERE / "mirrored_check.py"), name], cwd=HERE, capture_output=True, text=True, timeout=600,
        env={**stage_env(HERE.parent), "PYTHONPATH": f"{HERE.parent}:{HERE}"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert out["replicas"] == 2
    assert out["one"]["losses"][0] != out["one"]["losses"][-1], "the steps trained"
    if name in ("batch_all", "hard_classes"):  # by design each replica mines inside its own P/2 classes
        np.testing.assert_allclose(out["two"]["losses"][0], out["per_replica_first"], rtol=1e-4)
        return
    np.testing.assert_allclose(out["two"]["losses"], out["one"]["losses"], rtol=1e-4, atol=1e-6)
    for a, b in zip(out["one"]["weights"], out["two"]["weights"]):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def test_is_chief_reads_tf_config() -> None:
    cluster = {"worker": ["h:1", "h:2"]}
    assert is_chief({})
    assert is_chief({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})})
    assert not is_chief({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})})
    with_chief = {"chief": ["h:0"], **cluster}
    assert is_chief({"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}})})
    assert not is_chief({"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})})


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_localhost_workers_train_in_lockstep_and_only_the_chief_writes(tmp_path: Path) -> None:
    train = {"loops": 2, "steps_per_loop": 4, "distribute": "multi_worker"}
    chief_dir = make_repo(tmp_path / "chief", train=train)
    run_ok(["dvc", "repro", "prepare"], chief_dir)
    worker_dir = make_repo(tmp_path / "worker", train=train)
    shutil.copytree(chief_dir / "data" / "prepared", worker_dir / "data" / "prepared")  # shared storage, in a cluster
    before = {p.relative_to(worker_dir) for p in worker_dir.rglob("*")}
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index, work in enumerate([chief_dir, worker_dir]):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "stages/train.py", "--strategy", "hard"], cwd=work, env=stage_env(work, TF_CONFIG=tf_config),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(stdout)
    digests = [line.rsplit(" ", 1)[1] for out in outs for line in out.splitlines() if "weights sha256" in line]
    assert len(digests) == 2 and digests[0] == digests[1], "both workers end with the same weights"
    assert "worker finished" in outs[1]
    assert (chief_dir / "models" / "hard" / "embedding.keras").is_file()
    assert len(pd.read_csv(chief_dir / "metrics" / "history" / "hard.csv")) == 2  # both loops, written once
    assert (chief_dir / "mlflow.db").is_file()
    after = {p.relative_to(worker_dir) for p in worker_dir.rglob("*") if "__pycache__" not in p.parts}
    assert after - before == set(), "the non-chief worker wrote nothing"
    p = yaml.safe_load((worker_dir / "params.yaml").read_text())
    assert p["train"]["distribute"] == "multi_worker"

"""Real servers on 127.0.0.1 for the slow tests: an MLflow tracking server (SQLite or PostgreSQL
behind it, proxied artifacts), a PostgreSQL server in a scratch folder, and an SSH server with a
throw-away key for a DVC remote. Each runs in its own process group and stops with it.

`.ci/run` installs the Debian packages they need (postgresql, openssh-server); where one is
missing the tests that need it are skipped with the package's name.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float, stop) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    stop()
    raise RuntimeError(f"{url} not up after {timeout} s: {log.read_text()[-2000:]}")


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} not open after {timeout} s: {log.read_text()[-2000:]}")


def stop_group(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL, to the process group we started (start_new_session)."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # workers of the group may outlive the parent briefly
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class MlflowServer:
    """`mlflow server` with proxied artifacts: clients log and load models over HTTP only."""

    def __init__(self, folder: Path, port: int, backend_uri: str | None = None) -> None:
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.backend_uri = backend_uri or f"sqlite:///{(folder / 'server.db').as_posix()}"
        self.proc: subprocess.Popen | None = None
        self.log = folder / "server.log"

    def start(self, timeout: float = 90.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner processes
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_for(self.uri + "/health", self.proc, self.log, timeout, self.stop)

    def stop(self) -> None:
        stop_group(self.proc)
        self.proc = None


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.skip(f"PostgreSQL's {name} not found (Debian: apt-get install postgresql; .ci/run installs it)")
    return found


class Postgres:
    """A PostgreSQL server of its own in a scratch folder, on a loopback port, trusting local clients.

    initdb refuses to run as root, so as root the server runs as the ``postgres`` user, in a
    folder of its own under the system's temporary folder (pytest's are private to root)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="tripletml-postgres-"))
        self.folder.chmod(0o755)
        self.data = self.folder / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.uri = f"postgresql://postgres@127.0.0.1:{port}/mlflow"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, cwd=self.folder)

    def start(self) -> None:
        if not self.data.exists():
            if self.as_user:
                shutil.chown(self.folder, "postgres")
            self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
            self._pg_ctl("start")
            subprocess.run([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mlflow"], check=True)
        else:
            self._pg_ctl("start")

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        extra = ["-l", str(self.folder / "server.log"), "-o", options] if action == "start" else ["-m", "fast"]
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-w", *extra, action)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class Sshd:
    """OpenSSH's server on a loopback port with a throw-away host key and one authorised key,
    for a DVC remote ``ssh://<user>@127.0.0.1:<port>/<folder>``."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.key = folder / "client_key"
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None
        self.log = folder / "sshd.log"

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
        if not sshd:
            pytest.skip("OpenSSH's sshd not found (Debian: apt-get install openssh-server; .ci/run installs it)")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            for key in (self.folder / "host_key", self.key):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            shutil.copy(self.key.with_suffix(".pub"), self.folder / "authorized_keys")
            (self.folder / "sshd_config").write_text("\n".join([
                f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.folder / 'host_key'}",
                f"AuthorizedKeysFile {self.folder / 'authorized_keys'}", f"PidFile {self.folder / 'sshd.pid'}",
                "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
                "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "",
            ]))  # fmt: skip
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # the privilege-separation folder sshd insists on
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.folder / "sshd_config")],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.proc, self.log)

    def stop(self) -> None:
        stop_group(self.proc)
        self.proc = None


@contextlib.contextmanager
def served_model(model_uri: str, env: dict, cwd: Path, log: Path):
    """`mlflow models serve` of ``model_uri`` (this environment, no new one) on a free port;
    yields ``predict(images) -> np.ndarray`` that asks it over HTTP."""
    import numpy as np

    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def predict(images) -> np.ndarray:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         json.dumps({"inputs": np.asarray(images).tolist()}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return np.asarray(json.loads(response.read())["predictions"], np.float32)

    try:
        wait_for(f"http://127.0.0.1:{port}/ping", proc, log, 300, lambda: stop_group(proc))  # TensorFlow loads slowly on busy cores
        yield predict
    finally:
        stop_group(proc)

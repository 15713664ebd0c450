"""The machine a figure came from: CPU model and the features that pick its kernels, cores,
GPUs, versions. Machines differ in speed and in the low bits of a result, so every saved run
and every trained model names its machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["CPU_FLAGS", "machine_facts", "machine_label"]

# CPU features that change which kernels oneDNN and Eigen run, and so the low bits of a result.
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _cpu_model() -> tuple[str, list[str]]:
    """The CPU's model name and its features among :data:`CPU_FLAGS` (Linux; else platform's)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), []
    field = lambda key: (m.group(1).strip() if (m := re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)) else None)  # noqa: E731
    name = field("model name") or platform.machine()
    # A virtual machine's model name may be just the brand; family and model tell generations apart.
    family, model = field("cpu family"), field("model")
    if family and model:
        name = f"{name} (family {family}, model {model})"
    return name, [f for f in CPU_FLAGS if f in set((field("flags") or "").split())]


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> list[str]:
    """The GPUs nvidia-smi names (none where it is absent)."""
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def machine_facts() -> dict[str, Any]:
    """What a figure's machine was: CPU model, its kernel-relevant features, cores, OS, versions."""
    model, flags = _cpu_model()
    return {
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow"),
        "gpus": _gpus(),
    }


def machine_label(facts: dict[str, Any] | None = None) -> str:
    """One line for a table's machine column: ``AMD EPYC (family 25, model 17), 2 cores, avx512_bf16``."""
    f = facts or machine_facts()
    widest = next((x for x in reversed(CPU_FLAGS) if x in (f.get("cpu_flags") or [])), "no AVX2")
    gpus = f"; {', '.join(f['gpus'])}" if f.get("gpus") else ""
    return f"{f.get('cpu')}, {f.get('cores')} cores, {widest}{gpus}"

"""What every benchmark's ``--out`` writes: its table as CSV, each row with the run's settings,
the machine (CPU, cores, widest CPU feature) and the commit, so docs/results.md can show it as
it is (``python -m tripletml.docs``) and a figure names where it was measured."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from tripletml.atomic import atomic_path
from tripletml.machine import machine_label


def write_table(path: str | Path, rows: list[dict[str, Any]], **settings: Any) -> Path:
    """Write ``rows`` with ``settings``, the machine, the date and the commit as columns."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    context = {**settings, "machine": machine_label(), "date": dt.date.today().isoformat(), "commit": commit or None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pd.DataFrame([{**row, **context} for row in rows]).to_csv(tmp, index=False)
    print(f"written: {path}")
    return path

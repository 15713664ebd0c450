"""Atomic file writes: a file appears whole or not at all.

Everything a stage writes goes through here, so a crash (or a full disk) at any
point leaves either the previous file or none, never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tripletml.errors import OutputError  # defined there; tripletml.atomic.OutputError still works


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same folder so the final ``os.replace`` is an
    atomic rename on one file system. On any error the temporary file is removed
    and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes) + ".tmp"
        )
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    except OSError as exc:
        raise OutputError(f"cannot write {path}", exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}", exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """:func:`atomic_path` for several files that belong together (a data set's splits).

    Every target is replaced only once all of them are written: a failure while
    writing any one leaves every old file in place.
    """
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_path(p)) for p in paths]


def ensure_writable(*folders: str | os.PathLike) -> None:
    """Fail before any work if an output folder cannot be created or written to."""
    for folder in map(Path, folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OutputError(f"cannot write to output folder {folder}", exc) from exc


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(obj: Any) -> str:
    """The JSON layout of every file the stages write: indented, keys in insertion order."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json_text(obj))

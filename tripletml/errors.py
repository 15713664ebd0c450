"""The errors a user can cause, each with a message that names the file, key or value.

Defined here and importing nothing from the library, so that any module (and the stage
scripts' one-line error handler) can raise or catch them without importing the others.
The modules that raise them re-export theirs (``tripletml.data.DataError`` and so on).
"""

from __future__ import annotations


class ParamsError(ValueError):
    """A bad params file; the message names the file, the key and the value."""


class DataError(ValueError):
    """Bad input data; the message names the offending file."""


class DownloadError(RuntimeError):
    """The zips are neither present nor downloadable."""


class OutputError(OSError):
    """An output could not be written (unwritable folder, disk full, ...)."""

    def __init__(self, what: str, cause: OSError) -> None:
        self.reason = _reason(cause)  # the OS's words, e.g. "No space left on device"
        super().__init__(f"{what}: {self.reason}")


def _reason(exc: OSError) -> str:
    """The OS's words for a failed write, without nesting an inner OutputError's message."""
    return exc.reason if isinstance(exc, OutputError) else exc.strerror or str(exc)


class TrainingError(RuntimeError):
    """Training stopped: NaN loss or a collapsed embedding (the message names the loop)."""


EXPECTED_ERRORS = (DataError, DownloadError, ParamsError, OutputError, TrainingError)

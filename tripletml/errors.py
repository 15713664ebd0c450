"""The errors a user can cause, each with a message that names the file, key or value."""

from tripletml.atomic import OutputError
from tripletml.data import DataError
from tripletml.download import DownloadError
from tripletml.params import ParamsError


class TrainingError(RuntimeError):
    """Training stopped: NaN loss or a collapsed embedding (the message names the loop)."""


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be reached."""


EXPECTED_ERRORS = (DataError, DownloadError, ParamsError, OutputError, TrainingError, TrackingError)

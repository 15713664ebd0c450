"""What every stage script shares: params loading and one-line errors with a non-zero exit."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tripletml.params import Params, load_params  # noqa: E402

PARAMS_FILE = os.environ.get("TRIPLETML_PARAMS", "params.yaml")


def params(use_prepared: bool = True) -> Params:
    """The validated params; the stages that (re)make the prepared set pass ``use_prepared=False``."""
    return load_params(PARAMS_FILE, use_prepared)


def run(main: Callable[[], None]) -> None:
    """Run a stage; expected failures print one ``error:`` line and exit 1."""
    from tripletml.errors import EXPECTED_ERRORS

    try:
        main()
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


def strategies(p: Params) -> list[str]:
    """Every strategy the pipeline trains, in report order."""
    return p.trained()

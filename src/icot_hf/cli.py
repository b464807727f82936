"""Command-line entry points: a user's mistake ends in one line that names it, not a traceback.

Every recipe and dataset script runs its `main` through `run`. The library raises ValueError
(ICoTFormatError is one) or OSError (FileExistsError, FileNotFoundError, a Hub id that does not
exist) for what a user can fix: bad data lines, settings that differ from a finished run, a
folder that is not ours, a missing file. Those print `error: <message>` and exit with status 2;
a `SystemExit` with a message (the recipes' own checks) prints it the same way; anything else is
a bug and keeps its traceback. `ICOT_HF_TRACEBACK=1` shows the traceback of a
user error too.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

USER_ERRORS = (ValueError, OSError)


def run(main: Callable[[], object]) -> None:
    try:
        main()
    except SystemExit as stop:  # `raise SystemExit("message")`: a user error already worded
        if isinstance(stop.code, str):
            print(f"error: {stop.code}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise
    except USER_ERRORS as error:
        if os.environ.get("ICOT_HF_TRACEBACK"):
            raise
        print(f"error: {error}\n(ICOT_HF_TRACEBACK=1 shows where it was raised)", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

"""Command-line entry points: a user's mistake ends in one line that names it, not a traceback.

Every recipe and dataset script runs its `main` through `run`. The library raises ValueError
(ICoTFormatError is one) or OSError (FileExistsError, FileNotFoundError, a Hub id that does not
exist) for what a user can fix: bad data lines, settings that differ from a finished run, a
folder that is not ours, a missing file. Those print `error: <message>` and exit with status 2;
a `SystemExit` with a message (the recipes' own checks) prints it the same way; a write that ran
out of disk space (torch's serializer says only "file write failed") says so and what survives;
anything else is a bug and keeps its traceback. `ICOT_HF_TRACEBACK=1` shows the traceback of a
user error too.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

USER_ERRORS = (ValueError, OSError)


DISK_FULL_SIGNS = ("No space left on device", "os error 28", "file write failed", "unexpected pos", "Disk quota exceeded",
                   "File too large", "os error 27")


def disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) is a write that ran out of space: an OSError with
    ENOSPC/EDQUOT/EFBIG, torch's serializer failing mid-write (a RuntimeError from
    inline_container.cc: "unexpected pos"), or safetensors' I/O error with those codes."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        if any(sign in str(error) for sign in DISK_FULL_SIGNS):
            return True
        error = error.__cause__ or error.__context__
    return False


def run(main: Callable[[], object]) -> None:
    try:
        main()
    except SystemExit as stop:  # `raise SystemExit("message")`: a user error already worded
        if isinstance(stop.code, str):
            print(f"error: {stop.code}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise
    except Exception as error:
        if os.environ.get("ICOT_HF_TRACEBACK"):
            raise
        if disk_full(error):
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"error: the disk filled up (or a file-size limit was reached) while writing ({first_line[:200]}). Free space "
                  "and run the same command again: training resumes from its last complete checkpoint (a checkpoint cut off "
                  "mid-save is set aside, never loaded), and a dataset is only swapped in once fully written.",
                  file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if isinstance(error, USER_ERRORS):
            print(f"error: {error}\n(ICOT_HF_TRACEBACK=1 shows where it was raised)", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise

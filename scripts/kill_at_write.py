"""Run a Python script and kill it (SIGKILL: a power cut, the OOM killer) at its N-th write under a
folder, so that every moment a command can be cut off is a case the odd-input sweep can try.

    python scripts/kill_at_write.py --under DIR --at N  SCRIPT [ARGS...]   # killed at the N-th write
    python scripts/kill_at_write.py --under DIR --events FILE SCRIPT [...]  # runs whole, lists its writes

A write is anything that changes what is under DIR, seen from inside the process (a poll from outside
sees a whole dataset save as one instant): a file opened for writing (the kill comes just after the
open, leaving it empty, as a kill mid-write does), a safetensors or torch.save file (written, then cut
to half its length), a folder made, a rename into place (the kill comes just before it). Writes elsewhere (caches,
/tmp) are not counted, so the numbering is the command's own and the same on every run.
Exit status 137 when killed here; the script's own status otherwise.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import runpy
import signal
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--under", required=True, help="count writes under this folder only")
    parser.add_argument("--at", type=int, default=0, help="kill at this write (1 = the first); 0: never")
    parser.add_argument("--events", help="write the list of writes seen (kind, path) here as JSON at exit")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    root = os.path.realpath(options.under)
    seen: list[tuple[str, str]] = []

    def ours(path) -> str | None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None  # a file descriptor: opened by something already counted
        full = os.path.realpath(os.fsdecode(path))
        return os.path.relpath(full, root) if full == root or full.startswith(root + os.sep) else None

    def record(kind: str, path) -> bool:
        """Count a write; True when this one is where the kill comes."""
        where = ours(path)
        if where is None:
            return False
        seen.append((kind, where))
        return len(seen) == options.at

    def die() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def cut_and_die(path) -> None:
        with real_open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)  # what a kill mid-write leaves
        die()

    real_open, real_replace, real_rename, real_mkdir = builtins.open, os.replace, os.rename, os.mkdir

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if any(flag in mode for flag in "wax+") and record("open", file):
            die()  # created or truncated, nothing written yet
        return handle

    def replace(src, dst, *args, **kwargs):
        if record("rename", dst):
            die()
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if record("rename", dst):
            die()
        return real_rename(src, dst, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if record("mkdir", path):
            die()

    builtins.open = io.open = open_
    os.replace, os.rename, os.mkdir = replace, rename, mkdir

    import safetensors.torch

    real_save_file = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        result = real_save_file(tensors, filename, *args, **kwargs)
        if record("safetensors", filename):
            cut_and_die(filename)
        return result

    safetensors.torch.save_file = save_file
    import transformers.modeling_utils  # it imported save_file under its own name

    transformers.modeling_utils.safe_save_file = save_file

    import torch

    real_torch_save = torch.save

    def torch_save(obj, f, *args, **kwargs):  # a path is written by torch's C++ writer, not by open()
        result = real_torch_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)) and record("torch.save", f):
            cut_and_die(f)
        return result

    torch.save = torch_save

    if options.events:
        import atexit

        atexit.register(lambda: Path(options.events).write_text(json.dumps(seen)))
    sys.argv = [options.script, *options.args]
    runpy.run_path(options.script, run_name="__main__")


if __name__ == "__main__":
    main()

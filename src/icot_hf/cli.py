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
from pathlib import Path
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
        _run(main)
        close_process_group()
    finally:  # a launch that failed before it trained leaves its output_dir as it found it
        from .run_record import abandon_unstarted_runs

        abandon_unstarted_runs()


def close_process_group() -> None:
    """End a finished multi-process run's process group before the interpreter exits: gloo's threads
    torn down at exit aborted a rank ("terminate called without an active exception", exit -6) after
    training and saving had finished, failing a launch whose work was done (seen once in a 2-process
    CPU run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _run(main: Callable[[], object]) -> None:
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


# ----------------------------------------------------------------------------- the icot-hf command

COMMANDS = {  # command -> (module it runs, what it does)
    "make-data": ("icot_hf.dataset_scripts.make_multiplication", "make k-by-k multiplication data (a datasets DatasetDict)"),
    "convert-data": ("icot_hf.dataset_scripts.convert_icot_text", "convert files of the paper's text format into a dataset"),
    "train-tokenizer": ("icot_hf.dataset_scripts.train_tokenizer", "train a BPE tokenizer on a dataset"),
    "teacher": ("icot_hf.recipes.teacher", "train the explicit-CoT teacher (or, with view: implicit, the no-CoT baseline)"),
    "no-cot": ("icot_hf.recipes.teacher", "train the no-CoT baseline (the teacher recipe on a no_cot preset)"),
    "mind-reading": ("icot_hf.recipes.mind_reading", "ICoT-KD 1: the student that reads the teacher's states"),
    "emulator": ("icot_hf.recipes.emulator", "ICoT-KD 2: the thought emulator that predicts them"),
    "couple": ("icot_hf.recipes.couple", "ICoT-KD 3: emulator + student end to end -> ImplicitCoTForCausalLM"),
    "stepwise": ("icot_hf.recipes.stepwise", "ICoT-SI: remove the teacher's chain of thought stage by stage"),
    "coconut": ("icot_hf.recipes.coconut", "Coconut: replace the teacher's reasoning steps by continuous thoughts, stage by stage"),
    "codi": ("icot_hf.recipes.codi", "CODI: one model as its own teacher, distilled into continuous thoughts"),
    "evaluate": ("icot_hf.recipes.evaluate_models", "exact match and examples/s of trained models, results table and plots"),
    "push": ("icot_hf.recipes.push", "push a model or dataset folder to the Hub with its card"),
    "import-reference": ("icot_hf.recipes.import_reference", "import a checkpoint of the paper's released code"),
}
PACKAGE = Path(__file__).resolve().parent
PRESETS = PACKAGE / "recipes" / "configs"
ACCELERATE_CONFIGS = PACKAGE / "recipes" / "accelerate_configs"


def usage() -> str:
    lines = ["usage: icot-hf COMMAND [--config PRESET_OR_FILE] [--field value ...]", "",
             "Each command runs one recipe or data script in this process (one CPU or GPU); for DDP or DeepSpeed, launch",
             "its module: accelerate launch --config_file $(icot-hf accelerate-config multi_gpu) -m icot_hf.recipes.teacher ...",
             "--config takes a YAML file or a packaged preset: TASK/STAGE (the CPU preset, e.g. 4x4_mult/teacher) or",
             "TASK/paper/STAGE (the paper's settings); any field of the config can follow to override it.", "", "commands:"]
    lines += [f"  {name:<18} {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["  presets            list the packaged presets", "  accelerate-config  print the path of a packaged accelerate config (cpu, cpu_ddp, "
              "gpu, multi_gpu, deepspeed_zero2, deepspeed_zero3, deepspeed_zero3_offload)", "",
              "icot-hf COMMAND --help lists the command's fields."]
    return "\n".join(lines)


def packaged_presets() -> list[str]:
    return sorted(str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.rglob("*.yaml"))


def resolve_config(argv: list[str]) -> list[str]:
    """`--config NAME`: a file as given, else the packaged preset NAME (with or without .yaml)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        name = arg.partition("=")[2] if arg.startswith("--config=") else argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
        if name is None or Path(name).is_file():
            continue
        preset = PRESETS / (name if name.endswith(".yaml") else f"{name}.yaml")
        if not preset.is_file():
            raise SystemExit(f"--config {name}: no such file, and no packaged preset of that name (icot-hf presets lists them)")
        if arg == "--config":
            argv[i + 1] = str(preset)
        else:
            argv[i] = f"--config={preset}"
    return argv


def config_as_arguments(argv: list[str]) -> list[str]:
    """The data scripts take plain arguments: `--config FILE` (e.g. the preset TASK/data) becomes
    `--field value` for each field of it, before the arguments given after it (which win)."""
    if "--config" not in argv:
        return argv
    import yaml

    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise SystemExit("--config needs a file or preset name")
    fields = yaml.safe_load(Path(argv[i + 1]).read_text()) or {}
    expanded = [item for key, value in fields.items() if key != "script" for item in (f"--{key}", str(value))]
    return expanded + argv[:i] + argv[i + 2:]


def main(argv: list[str] | None = None) -> None:
    """The `icot-hf` console script: `icot-hf COMMAND ...` runs COMMAND's recipe or data script."""
    import runpy

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    command, rest = argv[0], argv[1:]
    if command == "presets":
        print("\n".join(packaged_presets()))
        return
    if command == "accelerate-config":
        name = (rest or ["cpu"])[0].removesuffix(".yaml")
        path = ACCELERATE_CONFIGS / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml")))
            print(f"error: icot-hf accelerate-config {name}: none packaged; there are {known}", file=sys.stderr)
            raise SystemExit(2)
        print(path)
        return
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = COMMANDS[command][0]
    try:
        rest = resolve_config(rest)
    except SystemExit as stop:
        print(f"error: icot-hf {command}: {stop.code}", file=sys.stderr)
        raise SystemExit(2) from None
    if module.startswith("icot_hf.dataset_scripts."):
        rest = config_as_arguments(rest)
    sys.argv = [f"icot-hf {command}", *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)

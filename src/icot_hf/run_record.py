"""What a recipe run was built from, so that a re-run can tell whether it is the same run.

A recipe's `output_dir` holds one run. Its record is the run's settings (every field of the
recipe's arguments that can change the trained model) and a fingerprint of each upstream
artefact it reads (the dataset, the base model, the teacher, the student, the emulator). The
record is written to `run_settings.json` when a run starts and into `training_complete.json`,
with a hash of the final weights, when it ends (the marker is written last and removed when a
run starts, so a crash mid-save never leaves a folder that looks finished).

`begin_run` decides what a launch does with its folder:

- empty or missing folder: a fresh run;
- finished with the same record: nothing to do (a no-op, so `make reproduce` can re-launch
  every stage and only the stale ones train);
- interrupted with the same record: resume from the last checkpoint (a run that stopped before
  its first checkpoint has nothing to resume: the launch starts afresh, whatever its settings);
- anything else (a setting changed, an upstream model was retrained): stop and name what
  differs, unless `--overwrite_output_dir` (a fresh run) or an explicit
  `--resume_from_checkpoint` (continue with the new settings) or `--rerun_if_changed` (what
  `make reproduce` passes: a fresh run when the record differs, a no-op when it does not);
- a non-empty folder that is not a run of ours: stop; nothing of the user's is overwritten.

A fresh run over an earlier run of ours removes only the files a run writes (`RUN_FILES`);
anything else in the folder stays.

Deciding and doing are two steps, so a launch that fails before it trains leaves the folder as
it found it: `begin_run` decides and takes the folder's lock; `start_run`, called once the data,
tokenizer and models are loaded and checked (just before training), removes an earlier run's
files where the decision was a fresh run and writes `run_settings.json`. A launch that stops in
between (a malformed data line, a misspelt model field) has deleted nothing, and
`abandon_unstarted_runs` (run by `icot_hf.cli.run` on the way out) takes back the lock file and
the folder if the launch created them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "training_complete.json"
SETTINGS_FILE = "run_settings.json"
CHECKPOINTS_FILE = "run_checkpoints.json"  # the checkpoints this run wrote: the only ones it resumes from by itself
LOCK_FILE = ".icot_run.lock"  # held (flock) by the run writing the folder; the kernel drops it when that process dies
_held_locks: dict[str, object] = {}
_unstarted: dict[str, dict] = {}  # output_dir -> what begin_run decided and start_run has not yet done

# Arguments that cannot change what is trained: where things go, how progress is shown, how
# the run is launched, and the re-run switches themselves.
IGNORED_FIELDS = {
    "output_dir", "logging_dir", "overwrite_output_dir", "resume_from_checkpoint", "rerun_if_changed", "run_name",
    "report_to", "disable_tqdm", "logging_strategy", "logging_steps", "logging_first_step", "logging_nan_inf_filter",
    "log_level", "log_level_replica", "log_on_each_node", "save_total_limit", "save_on_each_node", "local_rank",
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
    "push_to_hub_model_id", "push_to_hub_organization", "push_to_hub_token", "per_device_eval_batch_size",
    "eval_accumulation_steps", "ddp_timeout", "ddp_backend", "deepspeed", "accelerator_config", "use_cpu", "no_cuda",
    "teacher_state_cache",  # the cache checks itself against the teacher, the data and the extraction settings
}
UPSTREAM_FIELDS = ("dataset_name_or_path", "model_name_or_path", "tokenizer_name_or_path", "teacher_name_or_path",
                   "student_name_or_path", "emulator_name_or_path")
# What a run writes into its output_dir (a fresh run over an earlier one removes these, and only these).
RUN_FILES = ("checkpoint-*", "incomplete-checkpoint-*", "best_fully_removed", "runs", COMPLETE_MARKER, SETTINGS_FILE, CHECKPOINTS_FILE,
             "config.json", "generation_config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
             "pytorch_model*.bin", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "training_args.bin",
             "all_results.json", "train_results.json", "eval_results.json", "final_results.json", "learning_curve.json",
             "progress.json")


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in ("*.safetensors", "*.bin") for p in Path(folder).glob(pattern) if p.name != "training_args.bin")


def weight_file_stats(folder: Path) -> dict[str, list[int]]:
    """{file name: [size, mtime_ns]} of the weight files: the cheap look before a hash."""
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in weight_files(folder)}


def weights_sha256(folder: Path) -> str:
    """sha256 over a model folder's weight files (names and bytes), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no weight files (*.safetensors, *.bin) to fingerprint")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def artefact_fingerprint(name_or_path: str) -> str:
    """What identifies an upstream artefact: a finished run's weight hash (from its marker), a
    saved dataset's split fingerprints, a text file's sha256, a local model's weight hash; a Hub
    id is recorded as its name (the Hub versions it)."""
    path = Path(name_or_path)
    if not path.exists():
        return f"hub:{name_or_path}"
    if path.is_file():
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    marker = read_json(path / COMPLETE_MARKER)
    if marker and marker.get("weights_sha256"):
        return "weights:" + current_weights_sha256(path, marker)
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        fingerprints = {split: (read_json(path / split / "state.json") or {}).get("_fingerprint") for split in splits}
        return "dataset:" + hashlib.sha256(json.dumps(fingerprints, sort_keys=True).encode()).hexdigest()
    if list(path.glob("*.safetensors")) or list(path.glob("*.bin")):
        return "weights:" + weights_sha256(path)
    return "folder:" + str(path.resolve())


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _plain(value):
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


def run_record(*argument_sets) -> dict:
    """{"settings": {field: value}, "upstream": {field: fingerprint}} of a launch."""
    settings, upstream = {}, {}
    for arguments in argument_sets:
        for spec in dataclasses.fields(arguments):
            name, value = spec.name, getattr(arguments, spec.name)
            if name in IGNORED_FIELDS or name.startswith("_") or name.endswith("_token"):
                continue
            settings[name] = _plain(value)
            if name in UPSTREAM_FIELDS and value:
                upstream[name] = artefact_fingerprint(str(value))
    return {"settings": settings, "upstream": upstream}


def record_differences(old: dict | None, new: dict) -> list[str]:
    """Human-readable lines naming what differs between two records."""
    if not old:
        return ["the earlier run recorded no settings (made before run records, or not a run of icot_hf)"]
    lines = []
    for part in ("settings", "upstream"):
        before, after = old.get(part, {}), new.get(part, {})
        for key in sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                what = "upstream " if part == "upstream" else ""
                lines.append(f"{what}{key}: {before.get(key, '<unset>')!r} -> {after.get(key, '<unset>')!r}")
    return lines


def remove_run_files(output_dir: Path) -> None:
    """Delete what an earlier run of ours wrote into `output_dir`; leave everything else."""
    for pattern in RUN_FILES:
        for path in output_dir.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def current_weights_sha256(folder: Path, marker: dict) -> str:
    """The hash of the weights in `folder` now: the marker's when the weight files still have the
    sizes and modification times it recorded (no read), else computed afresh (a file truncated,
    replaced or corrupted after the run finished then no longer passes for the finished run)."""
    if marker.get("weight_files") and marker.get("weights_sha256") and weight_file_stats(folder) == marker["weight_files"]:
        return marker["weights_sha256"]
    try:
        return weights_sha256(folder)
    except FileNotFoundError:
        return "missing"


def weights_changed(folder: Path, marker: dict) -> str | None:
    """Why the finished run's weights are no longer what it wrote, or None."""
    if not marker.get("weights_sha256"):
        return None
    now = current_weights_sha256(folder, marker)
    if now == marker["weights_sha256"]:
        return None
    if now == "missing":
        return "its weight files are gone"
    return f"its weight files changed after it finished (sha256 {marker['weights_sha256'][:12]}... then, {now[:12]}... now)"


def is_our_run(output_dir: Path) -> bool:
    """Only our run record makes a folder ours: a `checkpoint-*` alone may be another tool's
    Trainer run (whose files a fresh run would otherwise delete)."""
    return any(isinstance(read_json(output_dir / name), dict) for name in (COMPLETE_MARKER, SETTINGS_FILE))


def checkpoint_identity(checkpoint: Path) -> str | None:
    """sha256 of a checkpoint's trainer_state.json (written last by the Trainer), or None."""
    try:
        return hashlib.sha256((checkpoint / "trainer_state.json").read_bytes()).hexdigest()
    except OSError:
        return None


def record_checkpoint(output_dir: Path, checkpoint: Path, pending: bool = False) -> None:
    """Note a checkpoint of this run: `pending` just before the Trainer writes it (so a run killed
    mid-save still knows the name was its own), then its identity once it is written."""
    path = Path(output_dir) / CHECKPOINTS_FILE
    record = read_json(path) or {}
    record[Path(checkpoint).name] = "pending" if pending else checkpoint_identity(Path(checkpoint))
    write_json_atomically(path, record)


def written_by_this_run(checkpoint: Path) -> bool:
    """Whether this run's record names `checkpoint`: written and unchanged since, or announced
    just before a save that the process did not live to confirm (the caller checks it is complete)."""
    checkpoint = Path(checkpoint)
    identity = (read_json(checkpoint.parent / CHECKPOINTS_FILE) or {}).get(checkpoint.name)
    return identity == "pending" or (identity is not None and identity == checkpoint_identity(checkpoint))


def lock_output_dir(output_dir: Path) -> None:
    """Own `output_dir` for the rest of this process: an exclusive, non-blocking flock on its
    lock file, which records who holds it. A second launch into the folder stops here, naming
    the holder; a lock whose process died (killed, crashed) is released by the kernel, so a
    re-run after a crash is never blocked by a stale lock."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no locking
        return
    path = output_dir / LOCK_FILE
    if str(path) in _held_locks:
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = read_json(path) or {}
        handle.close()
        raise SystemExit(f"{output_dir} is in use by another run (PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                         f"{holder.get('started', '?')}): two runs in one output_dir would mix their checkpoints and weights. Wait "
                         "for it to end, stop it, or choose another output_dir.") from None
    import socket
    import time

    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
    handle.flush()
    _held_locks[str(path)] = handle


def only_a_killed_start(output_dir: Path) -> bool:
    """`output_dir` holds nothing, or only what a launch of ours killed while it wrote its record
    left: the lock file and the record's temporary (found by killing a run at each write: such a
    folder used to be refused as not ours, blocking the same command's re-run)."""
    names = {p.name for p in output_dir.iterdir()}
    return names <= {LOCK_FILE} or (LOCK_FILE in names and names <= {LOCK_FILE, SETTINGS_FILE + ".tmp"})


def release_output_dir(output_dir: Path) -> None:
    handle = _held_locks.pop(str(Path(output_dir) / LOCK_FILE), None)
    if handle is not None:
        handle.close()  # closing the file releases the flock


def write_json_atomically(path: Path, value: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, default=float))
    os.replace(temporary, path)


def begin_run(script_args, training_args) -> bool:
    """Decide what this launch does with `training_args.output_dir` (see the module docstring).
    Returns False when the folder already holds this very run, finished: nothing to do. Under a
    distributed launch the main process decides and writes first; the others then see its
    `run_settings.json` and agree."""
    with training_args.main_process_first(desc="output_dir check"):
        return _begin_run(script_args, training_args, training_args.process_index == 0)


def _begin_run(script_args, training_args, is_main_process: bool) -> bool:
    output_dir = Path(training_args.output_dir)
    record = run_record(script_args, training_args)
    folder_existed, lock_existed = output_dir.is_dir(), (output_dir / LOCK_FILE).exists()
    finished = read_json(output_dir / COMPLETE_MARKER)
    started = read_json(output_dir / SETTINGS_FILE)
    rerun = bool(getattr(script_args, "rerun_if_changed", False))
    fresh = bool(getattr(script_args, "overwrite_output_dir", False))
    explicit_resume = training_args.resume_from_checkpoint

    if output_dir.is_dir() and not only_a_killed_start(output_dir) and not is_our_run(output_dir):
        raise FileExistsError(f"{output_dir} is not empty and holds no icot_hf run (no {SETTINGS_FILE} or {COMPLETE_MARKER}): "
                              "choose another output_dir; nothing was written or removed (--overwrite_output_dir and "
                              "--rerun_if_changed only ever replace a run of ours)")
    if is_main_process:  # after the check above, so a folder that is not ours never gets a lock file
        lock_output_dir(output_dir)
        finished = read_json(output_dir / COMPLETE_MARKER)  # as the holder of the lock sees them
        started = read_json(output_dir / SETTINGS_FILE)
    damaged = weights_changed(output_dir, finished) if finished is not None else None
    if damaged and not fresh:
        if not rerun:
            raise SystemExit(f"{output_dir} holds a finished run, but {damaged}: it cannot be reused. Pass --overwrite_output_dir "
                             "true to train it again, or choose another output_dir.")
        logger.warning("%s: the finished run is stale: %s; starting a fresh run", output_dir, damaged)
        fresh = True
    if not fresh and finished is not None and finished.get("run") == record:
        logger.warning("%s already holds this run, finished with the same settings and upstream models: nothing to do "
                       "(--overwrite_output_dir trains it again)", output_dir)
        return False
    previous = finished.get("run") if finished is not None else started
    resumable = finished is not None or any(output_dir.glob("checkpoint-*"))  # a run that stopped before its first checkpoint left nothing to keep
    if not fresh and not explicit_resume and resumable and previous != record:
        differences = record_differences(previous, record)
        if not rerun:
            state = "finished" if finished is not None else "interrupted"
            raise SystemExit(f"{output_dir} holds a {state} run with different settings:\n  " + "\n  ".join(differences) +
                             "\nPass --overwrite_output_dir true for a fresh run (it replaces that run's files), "
                             "--resume_from_checkpoint <checkpoint> to continue it with the new settings, or choose another output_dir.")
        logger.warning("%s: the earlier run differs (%s); starting a fresh run", output_dir, "; ".join(differences))
        fresh = True
    if is_main_process:  # carried out by start_run, once everything the run needs has loaded
        _unstarted[str(output_dir)] = {"fresh": fresh, "record": record, "folder_existed": folder_existed, "lock_existed": lock_existed}
    return True


def start_run(training_args) -> None:
    """Carry out what `begin_run` decided for `training_args.output_dir`, just before training:
    remove an earlier run's files (a fresh run), clear the completion marker, write the record.
    Until this point a failed launch has changed nothing in the folder."""
    with training_args.main_process_first(desc="output_dir start"):
        output_dir = Path(training_args.output_dir)
        decided = _unstarted.pop(str(output_dir), None)
        if decided is None:  # not the main process, or a Trainer run without begin_run
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if decided["fresh"]:
            remove_run_files(output_dir)
        (output_dir / COMPLETE_MARKER).unlink(missing_ok=True)
        write_json_atomically(output_dir / SETTINGS_FILE, decided["record"])


def abandon_unstarted_runs() -> None:
    """For each folder `begin_run` took and `start_run` never started (the launch failed in
    between): release the lock and remove what the launch itself created there, the lock file
    and, if it was new and holds nothing else, the folder."""
    for name, decided in list(_unstarted.items()):
        output_dir = Path(name)
        release_output_dir(output_dir)
        if not decided["lock_existed"]:
            (output_dir / LOCK_FILE).unlink(missing_ok=True)
        if not decided["folder_existed"] and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()
        del _unstarted[name]


def finish_run(output_dir: str | os.PathLike, metrics: dict) -> None:
    """Write the completion marker, last: the metrics, the run's record and its weights' hash."""
    output_dir = Path(output_dir)
    marker = dict(metrics)
    marker["run"] = read_json(output_dir / SETTINGS_FILE)
    try:
        marker["weights_sha256"] = weights_sha256(output_dir)
        marker["weight_files"] = weight_file_stats(output_dir)
    except FileNotFoundError:
        marker["weights_sha256"] = None
    write_json_atomically(output_dir / COMPLETE_MARKER, marker)
    release_output_dir(output_dir)

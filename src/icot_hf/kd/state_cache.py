"""Teacher-state cache: the frozen teacher's states, extracted once per training example.

The mind-reading student and the emulator read the same teacher states epoch after epoch,
and on a CPU the teacher's forward over the long explicit view costs more than the student's
step on the short implicit one. `attach_teacher_states` runs the teacher once over a tokenised
training split, saves the (L, H) states of every example as a `datasets` dataset in
`cache_dir`, and returns the split with a `teacher_states` column; the collator stacks it and
the trainers read it instead of running the teacher (evaluation still runs the teacher).

The cache records what it was built from (`state_cache.json`: a hash of the teacher's weights,
the extraction settings, the training split's fingerprint and size). A later run with anything
different stops with the fields that differ, rather than train on another teacher's states,
or, when the recipe runs with `--rerun_if_changed`, rebuilds the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from ..data import remove_dead_staging

CACHE_COLUMN = "teacher_states"
INFO_FILE = "state_cache.json"
CACHE_FILES = ("dataset_info.json", "state.json", INFO_FILE)  # and data-*.arrow: what a cache folder holds
logger = logging.getLogger(__name__)


def teacher_fingerprint(teacher) -> str:
    """sha256 over the teacher's parameters and buffers, by name: any changed weight changes it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_settings(teacher, dataset: Dataset, delta, subset: str) -> dict:
    return {"teacher_sha256": teacher_fingerprint(teacher), "teacher_layers": teacher.config.num_hidden_layers,
            "teacher_hidden_size": teacher.config.hidden_size, "delta": str(delta), "subset": subset,
            "data_fingerprint": dataset._fingerprint, "examples": len(dataset)}


@torch.no_grad()
def extract_all(teacher, dataset: Dataset, collator, delta, subset: str, batch_size: int) -> np.ndarray:
    """(N, L, H) float32 states of every example, in dataset order."""
    from .teacher_states import extract_teacher_states

    device = next(teacher.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="Caching teacher states"):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset)))).to_list()
        batch = {k: v.to(device) for k, v in collator(rows).items() if k.startswith("explicit_")}
        states = extract_teacher_states(teacher, batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"],
                                        delta=delta, pattern=subset)
        chunks.append(states.float().cpu().numpy())
    return np.concatenate(chunks)


def is_only_cache_files(cache_dir: Path) -> bool:
    return all(f.name in CACHE_FILES or (f.name.startswith("data-") and f.suffix == ".arrow") for f in cache_dir.iterdir())


def attach_teacher_states(dataset: Dataset, teacher, collator, delta, subset: str, cache_dir: str | os.PathLike, batch_size: int = 128,
                          rebuild_if_changed: bool = False) -> Dataset:
    """`dataset` with a `teacher_states` column, from `cache_dir` (built there on first use).

    A cache built from another teacher, data or extraction settings is refused, or with
    `rebuild_if_changed` (a recipe's `--rerun_if_changed`, which `make reproduce` passes, so a
    retrained teacher gets fresh states) replaced: the new cache is built beside it and swapped in,
    and the old folder is removed only when it holds nothing but a cache's own files."""
    cache_dir = Path(cache_dir)
    settings = cache_settings(teacher, dataset, delta, subset)
    info = cache_dir / INFO_FILE
    if info.is_file():
        saved = json.loads(info.read_text())
        different = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if not different:
            return join_states(dataset, cache_dir)
        detail = "; ".join(f"{k}: cache {old!r}, now {new!r}" for k, (old, new) in different.items())
        if not rebuild_if_changed:
            raise ValueError(f"{cache_dir}: the teacher-state cache was built from something else ({detail}). "
                             "Point teacher_state_cache at a new folder, delete this one, or pass --rerun_if_changed true to rebuild it.")
        if not is_only_cache_files(cache_dir):
            raise FileExistsError(f"{cache_dir}: the teacher-state cache was built from something else ({detail}) and the folder "
                                  "holds files a cache does not write, so it is not replaced; point teacher_state_cache at a new folder")
        logger.warning("%s: rebuilding the teacher-state cache (%s)", cache_dir, detail)
    elif cache_dir.exists() and any(cache_dir.iterdir()):
        raise FileExistsError(f"{cache_dir} is a non-empty folder without {INFO_FILE}; give teacher_state_cache a new folder")
    build_cache(teacher, dataset, collator, delta, subset, cache_dir, settings, batch_size)
    return join_states(dataset, cache_dir)


def build_cache(teacher, dataset, collator, delta, subset, cache_dir: Path, settings: dict, batch_size: int) -> None:
    """Extract the states into a staging folder, then move it into place: a crash never leaves a
    half-written cache at `cache_dir` (its info file is written last and moved with it)."""
    teacher.eval()
    states = Dataset.from_dict({CACHE_COLUMN: extract_all(teacher, dataset, collator, delta, subset, batch_size)})
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(cache_dir)  # what a build killed midway left (its process is gone)
    # named as remove_dead_staging knows them (`.NAME.staging-PID-...`), so a kill never leaves one for good
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.staging-{os.getpid()}-", dir=cache_dir.parent))
    old = None  # where a stale cache waits while the new one moves in
    try:
        states.save_to_disk(str(staging))
        (staging / INFO_FILE).write_text(json.dumps(settings, indent=2))
        if cache_dir.exists():  # empty, or a stale cache of ours (checked by the caller)
            old = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}.staging-{os.getpid()}-replaced", dir=cache_dir.parent)) / "cache"
            os.replace(cache_dir, old)
        try:
            os.replace(staging, cache_dir)
        except OSError:
            if old is not None:
                os.replace(old, cache_dir)  # put the old folder back rather than lose it
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)


def join_states(dataset: Dataset, cache_dir: Path) -> Dataset:
    states = load_from_disk(str(cache_dir))
    if len(states) != len(dataset):
        raise ValueError(f"{cache_dir}: {len(states)} cached states for {len(dataset)} examples; delete the cache to rebuild it")
    return concatenate_datasets([dataset, states], axis=1)

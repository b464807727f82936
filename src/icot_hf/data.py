"""ICoT data: the text format, `datasets` loading, tokenised views and collators.

One example is `input`, `cot`, `answer`; on disk a line `input||cot #### answer`.
Models see it through two token views, with the separator `S`:

    explicit view   input S cot S answer S     (teacher training, teacher states)
    implicit view   input S answer S           (student, emulator, coupled, inference)

Labels are -100 up to and including the first `S`, so the loss covers only what
follows it. Each view also stores the positions of its separators, so nothing later
has to search for `S` (which may equal the pad token).
"""

from __future__ import annotations

import bisect
import codecs
import difflib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .tokenization import separator_token_id

logger = logging.getLogger(__name__)

COLUMNS = ("input", "cot", "answer")
VIEWS = ("explicit", "implicit")


class ICoTFormatError(ValueError):
    """A data line or dataset that does not follow the ICoT format."""


# ----------------------------------------------------------------------------- text format


def parse_icot_line(line: str, source: str = "<string>", line_number: int = 0) -> dict[str, str]:
    """`input||cot #### answer` -> {input, cot, answer}; errors name the file and line."""
    where = f"{source}:{line_number}"
    text = line.rstrip("\r\n")
    if "||" not in text:
        raise ICoTFormatError(f"{where}: no '||' between input and chain of thought; expected 'input||cot #### answer'")
    question, rest = text.split("||", 1)
    if "||" in rest:
        raise ICoTFormatError(f"{where}: more than one '||'; expected exactly one, between input and chain of thought")
    if "####" not in rest:
        raise ICoTFormatError(f"{where}: no '####' before the answer; expected 'input||cot #### answer'")
    if rest.count("####") > 1:
        raise ICoTFormatError(f"{where}: more than one '####'; expected exactly one, before the answer")
    cot, answer = rest.rsplit("####", 1)
    question, cot, answer = question.strip(), cot.strip(), answer.strip()
    if not question:
        raise ICoTFormatError(f"{where}: empty input before '||'")
    if not answer:
        raise ICoTFormatError(f"{where}: empty answer after '####'")
    return {"input": question, "cot": cot, "answer": answer}


def format_icot_line(example: dict[str, str]) -> str:
    return f"{example['input']}||{example['cot']} #### {example['answer']}"


def read_icot_text(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read one ICoT text file; blank lines are skipped, anything else must parse. Lines may
    end in LF, CRLF or a lone CR, and a UTF-8 byte-order mark at the start is dropped."""
    path = Path(path)
    examples = []
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data[:4096]:
        raise ICoTFormatError(f"{path}: the file looks UTF-16 encoded (zero bytes between characters"
                              f"{', a UTF-16 byte-order mark' if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else ''}); "
                              "re-encode it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8")
    for number, raw in enumerate(re.split(rb"\r\n|\r|\n", data), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ICoTFormatError(
                f"{path}:{number}: bytes that are not UTF-8 ({error.reason} at byte {error.start}); re-encode the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        examples.append(parse_icot_line(line, str(path), number))
    if not examples:
        raise ICoTFormatError(f"{path}: no examples; the file is empty")
    return examples


def write_icot_text(examples: Iterable[dict[str, str]], path: str | os.PathLike) -> None:
    """Write examples as text through a temporary file, so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8")
    try:
        with handle:
            for example in examples:
                handle.write(format_icot_line(example) + "\n")
        os.replace(handle.name, path)
    except BaseException:  # a full disk or a Ctrl-C: no temporary file left behind
        Path(handle.name).unlink(missing_ok=True)
        raise


def dataset_from_text_files(files: dict[str, str | os.PathLike]) -> DatasetDict:
    """{split: path} of ICoT text files -> DatasetDict with columns input, cot, answer."""
    splits = {}
    for split, path in files.items():
        rows = read_icot_text(path)
        splits[split] = Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS})
    return DatasetDict(splits)


DATA_SETTINGS_FILE = "icot_data_settings.json"


def remove_dead_staging(output_dir: Path) -> None:
    """Remove the staging folders of saves into `output_dir` whose process is gone (killed
    mid-save). Only folders named by `save_dataset_dict` (`.NAME.staging-PID-...`) are touched."""
    pattern = re.compile(rf"^\.{re.escape(output_dir.name)}\.staging-(\d+)-\w+$")
    for path in output_dir.parent.iterdir():
        match = pattern.match(path.name)
        if match and path.is_dir() and not _process_alive(int(match.group(1))):
            logger.warning("removing %s, left by an interrupted save (process %s is gone)", path, match.group(1))
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def data_settings_status(output_dir: str | os.PathLike, settings: dict) -> tuple[str, str]:
    """Whether `output_dir` already holds the data `settings` would make: ("absent" | "same" |
    "changed" | "unrecorded", a sentence). `unrecorded`: a saved dataset no data script of ours
    recorded (hand-made, or older), which a pipeline must not reuse or replace silently."""
    output_dir = Path(output_dir)
    if not (output_dir / "dataset_dict.json").is_file():
        return "absent", f"{output_dir} holds no dataset yet"
    try:
        recorded = json.loads((output_dir / DATA_SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return "unrecorded", f"{output_dir} holds a dataset without {DATA_SETTINGS_FILE}: it was not made by this script with these settings"
    if recorded == settings:
        return "same", f"{output_dir} already holds this data (same settings)"
    changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
    return "changed", f"{output_dir} was made with other settings ({', '.join(f'{k}: {recorded.get(k)!r} -> {settings.get(k)!r}' for k in changed)})"


def overwrite_decision(output_dir: str | os.PathLike, settings: dict, script: str, overwrite: bool, rerun_if_changed: bool) -> bool | None:
    """Whether a data script replaces what `output_dir` holds (`--overwrite`), or under
    `--rerun_if_changed`: None when it already holds this data (nothing to do), True when data it
    made with other settings must be replaced; a dataset no data script recorded stops the run
    (never reused or replaced)."""
    if not rerun_if_changed:
        return overwrite
    state, why = data_settings_status(output_dir, settings)
    if state == "same":
        print(f"{why}: nothing to do")
        return None
    if state == "unrecorded":
        raise SystemExit(f"{script}: {why}; it is neither reused nor replaced. Move it away, or point the configs' "
                         "dataset_name_or_path at it to train on it as it is.")
    if state == "changed":
        print(f"{why}: making it again")
    return overwrite or state == "changed"


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_dataset_dict(dataset: DatasetDict, output_dir: str | os.PathLike, overwrite: bool = False, settings: dict | None = None) -> None:
    """Save to a sibling temporary folder, then swap it in: never a half-written dataset.
    `settings` (what made it) are saved beside it, so a later run can tell it is stale.

    Only a saved DatasetDict is ever replaced, and only with `overwrite`: a non-empty folder
    that is not one (a user's own files) stops the save before anything is written."""
    output_dir = Path(output_dir)
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FileExistsError(f"{output_dir} is a file; give --output_dir a folder that does not exist yet")
        ours = (output_dir / "dataset_dict.json").is_file()
        if any(output_dir.iterdir()) and not ours:
            raise FileExistsError(f"{output_dir} is a non-empty folder that is not a saved dataset; nothing was written. "
                                  "Give --output_dir a new or empty folder.")
        if ours and not overwrite:
            raise FileExistsError(f"{output_dir} already holds a dataset; pass --overwrite to replace it, or pick another --output_dir")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.staging-{os.getpid()}-", dir=output_dir.parent))
    try:
        dataset.save_to_disk(str(staging))
        if settings is not None:
            (staging / DATA_SETTINGS_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))
        if output_dir.exists():
            old = output_dir.with_name(f".{output_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output_dir, old)
            os.replace(staging, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def input_shape(question: str) -> str:
    """What kind of problem an input is, for spotting lines of another task in a file:
    `4x4 multiplication` for space-separated digit operands, otherwise `other`."""
    left, sep, right = question.partition(" * ")
    a, b = left.split(), right.split()
    if sep and a and b and all(d.isdigit() and len(d) == 1 for d in a + b):
        return f"{len(a)}x{len(b)} multiplication"
    return "other"


def dataset_warnings(dataset: DatasetDict) -> list[str]:
    """What a conversion should tell the user about data that parses but looks wrong: problems
    shared between splits (a test score on training problems) and splits that mix problem kinds
    (a 5x5 line in a 4x4 file). Counts, with the first example of each."""
    warnings = []
    seen: dict[str, str] = {}
    for split in dataset:
        inputs = dataset[split]["input"]
        shapes: dict[str, list[int]] = {}
        for index, question in enumerate(inputs):
            shapes.setdefault(input_shape(question), []).append(index)
        if len(shapes) > 1:
            ranked = sorted(shapes.items(), key=lambda item: -len(item[1]))
            others = ", ".join(f"{len(rows)} {shape} (first: example {rows[0] + 1}, {inputs[rows[0]][:40]!r})" for shape, rows in ranked[1:])
            warnings.append(f"[{split}] mixes problem kinds: {len(ranked[0][1])} {ranked[0][0]}, {others}")
        for other, other_inputs in seen.items():
            shared = set(inputs) & set(other_inputs)
            if shared:
                example = next(q for q in inputs if q in shared)
                warnings.append(f"[{split}] shares {len(shared)} problem(s) with [{other}] (e.g. {example[:40]!r}): "
                                f"scores on one measure problems seen in the other")
        seen[split] = inputs
        empty = [i for i, cot in enumerate(dataset[split]["cot"]) if not cot.strip()]
        if empty:
            warnings.append(f"[{split}] has {len(empty)} example(s) with an empty chain of thought (first: example {empty[0] + 1}): "
                            "fine to evaluate on, but the distillation stages cannot read teacher states from them")
    return warnings


def without_empty_cot(dataset: Dataset, split_name: str, training: bool) -> Dataset:
    """For stages that read the teacher's states at the CoT's positions: an example with an empty
    CoT has none (its states would be read at the separators). In a training split that is an
    error; from an evaluation split such examples are dropped, with a count (the paper's GSM8K
    valid/test files hold a few)."""
    empty = [i for i, cot in enumerate(dataset["cot"]) if not cot.strip()]
    if not empty:
        return dataset
    if training:
        raise ICoTFormatError(f"{split_name}: {len(empty)} example(s) with an empty chain of thought (first: example {empty[0] + 1}, "
                              f"{dataset[empty[0]]['input'][:60]!r}); this stage reads the teacher's states at the CoT's positions, "
                              "so every training example needs one: remove them from the data")
    logger.warning("%s: leaving out %d example(s) with an empty chain of thought (no teacher states to read)", split_name, len(empty))
    return dataset.select(sorted(set(range(len(dataset))) - set(empty)))


def validate_columns(dataset: Dataset | DatasetDict, source: str) -> None:
    splits = dataset.items() if isinstance(dataset, DatasetDict) else [("data", dataset)]
    for split, part in splits:
        missing = [c for c in COLUMNS if c not in part.column_names]
        if missing:
            raise ICoTFormatError(
                f"{source} [{split}]: missing column(s) {missing}; an ICoT dataset needs columns {list(COLUMNS)} "
                f"(has {part.column_names}). Rename columns with dataset.rename_column or convert text files with "
                "dataset_scripts/convert_icot_text.py"
            )
        if len(part) == 0:
            raise ICoTFormatError(f"{source} [{split}]: the split is empty")


def load_icot_dataset(name_or_path: str, split: str | None = None) -> DatasetDict | Dataset:
    """A saved DatasetDict folder, an ICoT text file, or a Hub dataset id."""
    path = Path(name_or_path)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        dataset = load_from_disk(str(path))
    elif path.is_file():
        dataset = dataset_from_text_files({split or "train": path})
    elif path.exists():
        raise ICoTFormatError(f"{path}: not a saved dataset (no dataset_dict.json) and not a text file")
    elif name_or_path.startswith((".", "/", "~")) or (len(path.parts) > 1 and path.parent.is_dir()):
        # A local path with a typo would otherwise become a Hub lookup and a network error.
        siblings = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
        close = difflib.get_close_matches(path.name, siblings, n=1)
        raise ICoTFormatError(f"{name_or_path}: no such dataset folder or file" + (f"; did you mean {str(path.parent / close[0])!r}?" if close else ""))
    else:
        dataset = load_dataset(name_or_path)
    validate_columns(dataset, name_or_path)
    if split is not None and isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ICoTFormatError(f"{name_or_path}: no split {split!r}; it has {list(dataset)}")
        return dataset[split]
    return dataset


# ----------------------------------------------------------------------------- token views


def _encode(tokenizer, texts: Sequence[str], separator_id: int | None = None, column: str = "text", offsets: list | None = None) -> list[list[int]]:
    # A leading space makes BPE tokenizers (GPT-2 style) see each part as it appears
    # mid-sentence, as in the paper's code; word-level tokenizers ignore it. Given a list as
    # `offsets`, it receives each text's character offsets (of " " + text) from the same call.
    encoded = tokenizer([" " + t for t in texts], add_special_tokens=False, return_offsets_mapping=offsets is not None)
    ids = encoded["input_ids"]
    if offsets is not None:
        offsets.extend(encoded["offset_mapping"])
    if separator_id is not None:  # the separator's text typed inside a part would read as a separator
        for text, row in zip(texts, ids):
            if separator_id in row:
                raise ICoTFormatError(f"{text[:80]!r}: the {column} contains the separator token "
                                      f"{tokenizer.convert_ids_to_tokens(separator_id)!r}, which marks where the parts end; "
                                      "remove it from the text")
    unk = tokenizer.unk_token_id
    if unk is not None:  # a word-level vocabulary would turn unknown symbols into <unk> silently
        for text, row in zip(texts, ids):
            if unk in row and tokenizer.unk_token not in text:
                unknown = sorted({w for w in text.split() if tokenizer.convert_tokens_to_ids(w) == unk})
                raise ICoTFormatError(
                    f"{text[:80]!r}: symbol(s) {unknown or '(some)'} are not in the tokenizer's vocabulary and would become "
                    f"{tokenizer.unk_token}; build the digit tokenizer with build_digit_tokenizer(extra_symbols=[...]) "
                    "or use a tokenizer that covers them"
                )
    return ids


# ----------------------------------------------------------------------------- reasoning steps

GSM_STEP = re.compile(r"<<[^<>]*>>")
MULTIPLICATION_STEP_SEPARATOR = re.compile(r" \+ ")


def split_steps(cot: str) -> list[str]:
    """A CoT's reasoning steps: GSM8K's `<<...>>` expressions (its ICoT-format CoT
    `<<48/2=24>> <<48+24=72>>`), else the CoT split at ` + ` (k-by-k multiplication: each partial
    product with its running sum). Coconut turns whole steps into latents; ICoT-SI can remove
    whole steps (`removal_granularity: steps`)."""
    cot = cot.strip()
    if not cot:
        return []
    if "<<" in cot:
        return GSM_STEP.findall(cot)
    return [step.strip() for step in cot.split(" + ") if step.strip()]


def step_starts(cot: str) -> list[int]:
    """Character offsets in `cot` where each step after the first begins: what lies before a
    start (a ` + `, the space between two `<<...>>`) belongs to the step before it."""
    if "<<" in cot:
        return [match.start() for match in GSM_STEP.finditer(cot)][1:]
    return [match.end() for match in MULTIPLICATION_STEP_SEPARATOR.finditer(cot)]


def step_token_ends(offsets: Sequence[tuple[int, int]], span: range, boundaries: Sequence[int]) -> list[int]:
    """For the tokens `span` of a tokenised CoT (character `offsets` as the tokenizer gives them,
    in the string that was tokenised) and the characters where steps 2, 3, ... begin in that
    string: how many CoT tokens lie in steps 1..k, for each k (the last is the CoT's length). A
    token belongs to the step its last character lies in."""
    counts = [0] * (len(boundaries) + 1)
    for token in span:
        counts[bisect.bisect_right(boundaries, offsets[token][1] - 1)] += 1
    return list(np.cumsum(counts).tolist())


def _needs_offsets(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} gives no character offsets, which finding each token's CoT step needs "
                         "(removal_granularity: steps): use a fast tokenizer (AutoTokenizer.from_pretrained(..., use_fast=True))")


SEQUENCE_FORMATS = ("compact", "reference")


def sequence_format_of(model) -> str:
    """The sequence format a model was trained on (the recipes record it in its config)."""
    return getattr(model.config, "icot_sequence_format", None) or "compact"


def reference_answer(answer: str) -> str:
    """The answer as the paper's code writes it: '#### ' + answer, commas removed."""
    return ("#### " + answer).replace(",", "")


def answer_from_generation(text: str) -> str:
    """A generated answer as the metric reads it: the reference format's '####' prefix and
    commas removed (a compact-format answer passes through unchanged)."""
    text = text.strip()
    if text.startswith("####"):
        text = text[4:].strip().replace(",", "")
    return text


def _reference_views(examples, tokenizer, separator_id: int, views: Sequence[str], step_ends: bool = False) -> dict[str, list]:
    """The paper's sequences (its data.py), tokenised whole as it does:
    explicit ' ' + input + ' ' + S + ' ' + cot + ' ' + S + ' ' + answer + ' ' + S, implicit
    without the CoT, answer = '#### ' + digits with commas removed. A BPE tokenizer keeps the
    space before S as a token of its own (GPT-2: 220) and splits ' ####' in two."""
    separator = tokenizer.convert_ids_to_tokens(separator_id)
    out: dict[str, list] = {}
    for view in views:
        texts = []
        for question, cot, answer in zip(examples["input"], examples["cot"], examples["answer"]):
            parts = [question, reference_answer(answer)] if view == "implicit" else [question, cot, reference_answer(answer)]
            texts.append("".join(f" {part} {separator}" for part in parts))
        with_steps = step_ends and view == "explicit"
        if with_steps:
            _needs_offsets(tokenizer)
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=with_steps)
        ids_col = encoded["input_ids"]
        labels_col, seps_col, ends_col = [], [], []
        expected = 2 if view == "implicit" else 3
        for row, (text, ids) in enumerate(zip(texts, ids_col)):
            seps = [i for i, token in enumerate(ids) if token == separator_id]
            if len(seps) != expected:
                raise ICoTFormatError(f"{text[:80]!r}: {len(seps)} separator tokens after tokenisation, expected {expected}: the "
                                      f"tokenizer must keep {separator!r} whole (a special token) and the text must not contain it")
            labels_col.append([-100] * (seps[0] + 1) + ids[seps[0] + 1 :])
            seps_col.append(seps)
            if with_steps:  # the CoT begins after ' ' + input + ' ' + S + ' '
                cot = examples["cot"][row]
                start = len(f" {examples['input'][row]} {separator} ")
                ends_col.append(step_token_ends(encoded["offset_mapping"][row], range(seps[0] + 1, seps[1]), [start + b for b in step_starts(cot)]))
        out[f"{view}_input_ids"], out[f"{view}_labels"], out[f"{view}_separators"] = ids_col, labels_col, seps_col
        if with_steps:
            out["explicit_step_ends"] = ends_col
    return out


def build_views(
    examples: dict[str, list[str]],
    tokenizer,
    separator_id: int,
    views: Sequence[str] = VIEWS,
    max_length: int | None = None,
    sequence_format: str = "compact",
    step_ends: bool = False,
) -> dict[str, list]:
    """Batched `datasets.map` function: token ids, labels and separator positions per view.

    `compact` (icot_hf's default): each part tokenised on its own with a leading space, S
    appended by id. `reference`: the paper's code's strings exactly (`_reference_views`).
    `step_ends` adds `explicit_step_ends`: the CoT tokens through each reasoning step
    (`split_steps`), which removal by whole steps reads."""
    if sequence_format == "reference":
        out = _reference_views(examples, tokenizer, separator_id, views, step_ends)
        if max_length is not None:
            out["length"] = [max(len(out[f"{v}_input_ids"][i]) for v in views) for i in range(len(examples["input"]))]
        return out
    inputs = _encode(tokenizer, examples["input"], separator_id, "input")
    answers = _encode(tokenizer, examples["answer"], separator_id, "answer")
    if step_ends:
        _needs_offsets(tokenizer)
    cot_offsets = [] if step_ends else None  # the CoT's character offsets, from the one tokenisation of it
    cots = _encode(tokenizer, examples["cot"], separator_id, "cot", offsets=cot_offsets) if "explicit" in views else None
    out: dict[str, list] = {}
    if step_ends:  # offsets are of " " + cot: each step start moves by one
        out["explicit_step_ends"] = [step_token_ends(offsets, range(len(offsets)), [1 + b for b in step_starts(cot)])
                                     for cot, offsets in zip(examples["cot"], cot_offsets)]
    for view in views:
        ids_col, labels_col, seps_col = [], [], []
        for i, (question, answer) in enumerate(zip(inputs, answers)):
            parts = [question, answer] if view == "implicit" else [question, cots[i], answer]
            ids, seps = [], []
            for part in parts:
                ids.extend(part)
                seps.append(len(ids))
                ids.append(separator_id)
            first = seps[0]
            labels = [-100] * (first + 1) + ids[first + 1 :]
            ids_col.append(ids)
            labels_col.append(labels)
            seps_col.append(seps)
        out[f"{view}_input_ids"] = ids_col
        out[f"{view}_labels"] = labels_col
        out[f"{view}_separators"] = seps_col
    if max_length is not None:
        longest = [max(len(out[f"{v}_input_ids"][i]) for v in views) for i in range(len(inputs))]
        out["length"] = longest
    return out


def tokenize_dataset(
    dataset: Dataset,
    tokenizer,
    views: Sequence[str] = VIEWS,
    separator_token: str | None = None,
    max_length: int | None = None,
    on_overflow: str = "error",
    num_proc: int | None = None,
    split_name: str = "dataset",
    sequence_format: str = "compact",
    step_ends: bool = False,
) -> Dataset:
    """Tokenise `dataset` into the given views (cached by `datasets` like any map), in the
    `compact` or the paper's `reference` sequence format (see `build_views`).

    Sequences longer than `max_length` (the model's context) raise an error naming the
    first offending row, or are dropped with a logged count when on_overflow="drop".
    `step_ends` adds each example's `explicit_step_ends` (see `build_views`).
    """
    if on_overflow not in ("error", "drop"):
        raise ValueError(f"on_overflow must be 'error' or 'drop', got {on_overflow!r}")
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown view(s) {sorted(unknown)}; choose from {VIEWS}")
    if sequence_format not in SEQUENCE_FORMATS:
        raise ValueError(f"sequence_format must be one of {SEQUENCE_FORMATS}, got {sequence_format!r}")
    validate_columns(dataset, split_name)
    separator_id = separator_token_id(tokenizer, separator_token)
    tokenized = dataset.map(
        build_views,
        batched=True,
        fn_kwargs={"tokenizer": tokenizer, "separator_id": separator_id, "views": tuple(views), "max_length": max_length,
                   "sequence_format": sequence_format, "step_ends": step_ends and "explicit" in views},
        remove_columns=[c for c in dataset.column_names if c not in COLUMNS],
        num_proc=num_proc,
        desc=f"Tokenising {split_name} ({'+'.join(views)} view)",
    )
    if max_length is None:
        return tokenized
    lengths = torch.from_numpy(tokenized.data.column("length").to_numpy().copy())
    too_long = (lengths > max_length).nonzero().flatten().tolist()
    if too_long:
        if on_overflow == "error":
            row = too_long[0]
            raise ValueError(
                f"{split_name}: {len(too_long)} example(s) exceed the model's context of {max_length} tokens "
                f"(first: row {row}, {int(lengths[row])} tokens, input {tokenized[row]['input'][:60]!r}). "
                "Use a model with a longer context, shorten the data, or set on_overflow='drop'."
            )
        keep = (lengths <= max_length).nonzero().flatten().tolist()
        logger.warning("%s: dropped %d of %d examples longer than %d tokens", split_name, len(too_long), len(lengths), max_length)
        tokenized = tokenized.select(keep)
    if len(tokenized) == 0:
        raise ValueError(f"{split_name}: no examples left after tokenisation")
    return tokenized.remove_columns("length")


def model_context_length(config) -> int | None:
    """Tokens a model's positions cover. A wrapper's (an ICoT-SI model with kept positions) is its
    base LM's less the positions its skipped chain of thought takes."""
    if getattr(config, "model_type", None) == "icot_stepwise":
        inner = model_context_length(config.base_config)
        return None if inner is None else inner - int(config.position_gap)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ----------------------------------------------------------------------------- collation


def pad_sequences(sequences: Sequence[Sequence[int]], pad_value: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest; returns (tensor, attention_mask)."""
    width = max(len(s) for s in sequences)
    tensor = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if side == "right":
            tensor[row, :n] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, :n] = 1
        else:
            tensor[row, width - n :] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, width - n :] = 1
    return tensor, mask


class ICoTCollator:
    """Pads the chosen views of tokenised examples into `{view}_input_ids`, `_attention_mask`,
    `_labels` and `_separators` (positions shifted for left padding)."""

    def __init__(self, pad_token_id: int, views: Sequence[str] = VIEWS, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id = pad_token_id
        self.views = tuple(views)
        self.padding_side = padding_side

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for view in self.views:
            ids, mask = pad_sequences([f[f"{view}_input_ids"] for f in features], self.pad_token_id, self.padding_side)
            labels, _ = pad_sequences([f[f"{view}_labels"] for f in features], -100, self.padding_side)
            separators = torch.tensor([f[f"{view}_separators"] for f in features], dtype=torch.long)
            if self.padding_side == "left":
                separators = separators + (ids.shape[1] - mask.sum(1, keepdim=True))
            batch[f"{view}_input_ids"] = ids
            batch[f"{view}_attention_mask"] = mask
            batch[f"{view}_labels"] = labels
            batch[f"{view}_separators"] = separators
        if features and "explicit_step_ends" in features[0]:  # padded with each row's CoT length: steps past its last remove it all
            ends = [f["explicit_step_ends"] for f in features]
            width = max(len(e) for e in ends)
            batch["explicit_step_ends"] = torch.tensor([list(e) + [e[-1]] * (width - len(e)) for e in ends], dtype=torch.long)
        if features and "teacher_states" in features[0]:  # a teacher-state cache column (state_cache.py)
            batch["teacher_states"] = torch.tensor(np.asarray([f["teacher_states"] for f in features]), dtype=torch.float32)
        return batch


def prompt_batch(tokenizer, questions: Sequence[str], separator_id: int, pad_token_id: int, sequence_format: str = "compact") -> dict[str, torch.Tensor]:
    """Left-padded `input S` prompts for generation from raw question strings, in the format
    the model was trained on (`reference`: ' ' + input + ' ' + S, tokenised whole)."""
    if sequence_format == "reference":
        separator = tokenizer.convert_ids_to_tokens(separator_id)
        ids = tokenizer([f" {q} {separator}" for q in questions], add_special_tokens=False)["input_ids"]
    else:
        ids = [q + [separator_id] for q in _encode(tokenizer, questions, separator_id, "question")]
    input_ids, attention_mask = pad_sequences(ids, pad_token_id, side="left")
    return {"input_ids": input_ids, "attention_mask": attention_mask}

"""Stale or ignored inputs are named, and the smaller odd inputs get a clear error or the right
behaviour: data reused by `make reproduce` is checked against the settings that made it, stage
times are shown only beside the models they timed, and a separator typed inside a question, an
empty CoT, a UTF-16 file, shared or mixed problems, a killed save and a full disk each say so."""

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest
from datasets import Dataset, DatasetDict

from conftest import REPO
from icot_hf.cli import run as run_cli
from icot_hf.data import (ICoTFormatError, dataset_warnings, parse_icot_line, prompt_batch, read_icot_text, save_dataset_dict,
                          tokenize_dataset, without_empty_cot, write_icot_text)
from icot_hf.tokenization import separator_token_id

LINE = "1 2 * 3 4||3 6 + 0 4 8 #### 3 0 4 0"


def make_data(out, *extra):
    return subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", "20",
                           "--valid_size", "4", "--test_size", "4", "--output_dir", str(out), "--rerun_if_changed", *map(str, extra)],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))


def test_data_is_reused_only_with_the_settings_that_made_it(tmp_path):
    out = tmp_path / "data"
    first = make_data(out)
    assert first.returncode == 0, first.stderr
    settings = json.loads((out / "icot_data_settings.json").read_text())
    assert settings["seed"] == 1234 and settings["sizes"] == {"train": 20, "valid": 4, "test": 4}
    same = make_data(out)
    assert same.returncode == 0 and "already holds this data (same settings): nothing to do" in same.stdout
    changed = make_data(out, "--seed", 7)
    assert changed.returncode == 0 and "other settings (seed: 1234 -> 7)" in changed.stdout
    assert json.loads((out / "icot_data_settings.json").read_text())["seed"] == 7
    # a dataset no data script recorded (hand-made, or from before the record): neither reused nor replaced
    hand_made = tmp_path / "hand_made"
    DatasetDict({"train": Dataset.from_dict({"input": ["1 2 * 3 4"], "cot": ["3 6"], "answer": ["3 0 4 0"]})}).save_to_disk(str(hand_made))
    before = {p.name: p.read_bytes() for p in hand_made.rglob("*") if p.is_file()}
    refused = make_data(hand_made)
    assert refused.returncode == 2 and "without icot_data_settings.json" in refused.stderr and "neither reused nor replaced" in refused.stderr
    assert {p.name: p.read_bytes() for p in hand_made.rglob("*") if p.is_file()} == before


def test_stage_times_only_while_the_timed_marker_is_current(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        from evaluate_models import read_stage_seconds
    finally:
        sys.path.remove(str(REPO / "recipes"))
    monkeypatch.chdir(tmp_path)
    for stage in ("teacher", "stepwise"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "training_complete.json").write_text(f'{{"{stage}": 1}}')
    digest = {s: hashlib.sha256((tmp_path / s / "training_complete.json").read_bytes()).hexdigest() for s in ("teacher", "stepwise")}
    (tmp_path / "stage_seconds.txt").write_text(
        "teacher 1093\n"  # an older run's line, with no marker: not shown
        f"teacher 50 teacher/training_complete.json {digest['teacher']}\n"
        f"stepwise 70 stepwise/training_complete.json {digest['stepwise']}\n"
        "evaluate 12\n")
    assert read_stage_seconds(tmp_path / "stage_seconds.txt") == {"teacher": 50, "stepwise": 70}
    (tmp_path / "stepwise" / "training_complete.json").write_text('{"stepwise": 2}')  # retrained since, by hand
    assert read_stage_seconds(tmp_path / "stage_seconds.txt") == {"teacher": 50}


def test_the_separator_typed_inside_a_question_is_an_error(tokenizer):
    separator = tokenizer.convert_ids_to_tokens(separator_token_id(tokenizer))
    data = Dataset.from_dict({"input": [f"1 2 {separator} 3 4"], "cot": ["3 6"], "answer": ["3 0"]})
    with pytest.raises(ICoTFormatError, match="the input contains the separator token"):
        tokenize_dataset(data, tokenizer)
    with pytest.raises(ICoTFormatError, match="the question contains the separator token"):
        prompt_batch(tokenizer, [f"1 2 {separator} 3 4"], separator_token_id(tokenizer), tokenizer.pad_token_id)


def test_an_empty_cot_is_refused_where_states_are_read(tokenizer):
    # the paper's GSM8K valid/test files hold a few such lines: they parse, and evaluate
    assert parse_icot_line("1 2 * 3 4|| #### 3 0 4 0", "f.txt", 3)["cot"] == ""
    data = Dataset.from_dict({"input": ["1 2 * 3 4", "5 6 * 7 8"], "cot": ["", "3 5"], "answer": ["3 0 4 0", "1"]})
    assert dataset_warnings(DatasetDict({"valid": data})) == [
        "[valid] has 1 example(s) with an empty chain of thought (first: example 1): fine to evaluate on, but the distillation "
        "stages cannot read teacher states from them"]
    with pytest.raises(ICoTFormatError, match=r"d\[train\]: 1 example\(s\) with an empty chain of thought .*remove them"):
        without_empty_cot(data, "d[train]", training=True)
    assert without_empty_cot(data, "d[valid]", training=False)["cot"] == ["3 5"]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16"])
def test_a_utf16_file_is_named_as_such(tmp_path, encoding):
    path = tmp_path / "wide.txt"
    path.write_bytes((LINE + "\n").encode(encoding))
    with pytest.raises(ICoTFormatError, match="wide.txt: the file looks UTF-16 encoded.*re-encode it as UTF-8"):
        read_icot_text(path)


def test_conversion_warns_of_shared_and_mixed_problems(tmp_path):
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    train.write_text(LINE + "\n" + LINE.replace("1 2", "5 6") + "\n")
    test.write_text(LINE + "\n" + "1 2 3 4 5 * 1 2 3 4 5||1 #### 2\n" + LINE.replace("1 2", "7 8") + "\n")
    run = subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "convert_icot_text.py"), "--train", str(train), "--test", str(test),
                          "--output_dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "warning: [test] mixes problem kinds: 2 2x2 multiplication, 1 5x5 multiplication (first: example 2" in run.stderr
    assert "warning: [test] shares 1 problem(s) with [train] (e.g. '1 2 * 3 4')" in run.stderr
    clean = DatasetDict({"train": Dataset.from_dict({"input": ["1 2 * 3 4"], "cot": ["1"], "answer": ["2"]}),
                         "test": Dataset.from_dict({"input": ["5 6 * 3 4"], "cot": ["1"], "answer": ["2"]})})
    assert dataset_warnings(clean) == []


def test_a_killed_saves_staging_folder_is_removed_by_the_next_save(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    staging = tmp_path / f".data.staging-{dead.stdout.strip()}-abc123"
    staging.mkdir()
    (staging / "data-00000-of-00001.arrow").write_bytes(b"x" * 100)
    someone_elses = tmp_path / ".data.backup"  # not named by a save of ours: left alone
    someone_elses.mkdir()
    save_dataset_dict(DatasetDict({"train": Dataset.from_dict({"input": ["1"], "cot": ["2"], "answer": ["3"]})}), tmp_path / "data")
    assert not staging.exists() and someone_elses.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.backup", "data"]


def test_a_full_disk_leaves_no_temporary_file_and_says_so(tmp_path, monkeypatch, capsys):
    class FullDisk:
        def __iter__(self):
            yield {"input": "1", "cot": "2", "answer": "3"}
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_icot_text(FullDisk(), tmp_path / "text" / "train.txt")
    assert list((tmp_path / "text").iterdir()) == []

    def save_checkpoint():  # what torch.save says when the disk fills mid-checkpoint
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 576 vs 458")

    monkeypatch.delenv("ICOT_HF_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_cli(save_checkpoint)
    assert stop.value.code == 2
    assert "error: the disk filled up (or a file-size limit was reached) while writing" in capsys.readouterr().err

    def a_bug():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other RuntimeError keeps its traceback
        run_cli(a_bug)

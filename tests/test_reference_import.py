"""Importing checkpoints of the paper's code (icot_hf.reference_checkpoints, recipes/import_reference.py).

The folders in tests/fixtures/reference_trajectory/checkpoints/ were written by the reference code's
own save_pretrained at the end of its training runs (make_fixture.py); `expected/*` in
trajectory.safetensors are those models' logits and greedy generations on valid.txt, computed by
the reference code. The imported models must give the same, and survive save_pretrained."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from test_reference_trajectory import FIXTURE, compact_tokenizer

pytestmark = pytest.mark.skipif(not (FIXTURE / "trajectory.safetensors").is_file(), reason="no trajectory fixture")
BASE = str(FIXTURE / "base_gpt2")
CHECKPOINTS = FIXTURE / "checkpoints"
LOGITS_TOL = 1e-4


@pytest.fixture(scope="module")
def expected():
    return {k[len("expected/"):]: v for k, v in load_file(FIXTURE / "trajectory.safetensors").items() if k.startswith("expected/")}


def until_separators(row, separator, count):
    """A generated row up to and including its `count`-th separator (the reference pads with -1)."""
    row = [t for t in row if t >= 0]
    seen = 0
    for i, token in enumerate(row):
        seen += token == separator
        if seen == count:
            return row[: i + 1]
    return row


def close(ours, theirs):
    difference = (ours.float() - theirs.float()).abs().max().item()
    assert difference <= LOGITS_TOL, f"max |icot_hf - reference| = {difference:.2e}"


def imported_lm_against_the_reference(kind, expected, max_new_tokens):
    """Import `kind` (a plain causal LM), check its logits on the fixture batch, and return its
    greedy continuations of the `input S` prompts (new tokens only) for the caller to compare."""
    from icot_hf.reference_checkpoints import import_causal_lm

    model = import_causal_lm(CHECKPOINTS / kind, kind, base_model=BASE)
    ids = expected["batch/input_ids_all"]
    with torch.no_grad():
        close(model(ids).logits, expected[f"{kind}_logits"])
    separator = compact_tokenizer().eos_token_id
    s1 = int((ids[0] == separator).nonzero()[0])
    prompts = ids[:, : s1 + 1]
    generated = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=max_new_tokens, do_sample=False,
                               eos_token_id=None, pad_token_id=separator)
    return generated[:, s1 + 1 :], s1, separator


def test_teacher_logits_and_greedy_cot_equal_the_reference(expected):
    generated, s1, separator = imported_lm_against_the_reference("teacher", expected, 48)
    for ours, theirs in zip(generated.tolist(), expected["teacher_greedy"].tolist()):
        # the reference stops after the second separator (CoT S answer S); compare up to there
        theirs = until_separators(theirs[s1 + 1 :], separator, 2)
        assert ours[: len(theirs)] == theirs


def test_coupled_model_logits_greedy_answers_and_round_trip(expected, tmp_path):
    from icot_hf import ImplicitCoTForCausalLM
    from icot_hf.reference_checkpoints import import_coupled

    tokenizer = compact_tokenizer()
    separator = tokenizer.eos_token_id
    model = import_coupled(CHECKPOINTS / "coupled" / "student", CHECKPOINTS / "coupled" / "emulator", tokenizer, base_model=BASE)
    assert model.config.icot_sequence_format == "reference" and model.config.icot_imported_from["kind"] == "coupled"
    ids = expected["batch/input_ids_nocot"]
    s1 = (ids == separator).int().argmax(1)
    with torch.no_grad():
        close(model(input_ids=ids, attention_mask=torch.ones_like(ids), separator_positions=s1).logits, expected["coupled_logits"])
    prompts = ids[:, : int(s1[0]) + 1]
    answers = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=16)[:, prompts.shape[1] :].tolist()
    theirs = [until_separators(row[prompts.shape[1] :], separator, 1) for row in expected["coupled_greedy"].tolist()]
    assert [a[: len(t)] for a, t in zip(answers, theirs)] == theirs

    model.save_pretrained(tmp_path / "coupled")
    reloaded = ImplicitCoTForCausalLM.from_pretrained(tmp_path / "coupled")
    with torch.no_grad():
        close(reloaded(input_ids=ids, attention_mask=torch.ones_like(ids), separator_positions=s1).logits, expected["coupled_logits"])
    questions = [line.split("||")[0] for line in (FIXTURE / "valid.txt").read_text().splitlines()]
    decoded = [tokenizer.decode([t for t in row if t != separator]).strip() for row in theirs]
    assert reloaded.answer(questions, tokenizer) == [d.replace("####", "").strip() for d in decoded]


def test_stepwise_model_logits_and_greedy_answers(expected):
    generated, _, _ = imported_lm_against_the_reference("stepwise", expected, 16)
    assert torch.equal(generated, expected["stepwise_greedy"])


def test_wrong_component_is_named(tmp_path):
    from icot_hf.reference_checkpoints import import_causal_lm, import_emulator, import_student

    with pytest.raises(ValueError, match="student checkpoint, not a teacher"):
        import_causal_lm(CHECKPOINTS / "mind_reading", "teacher", base_model=BASE)
    with pytest.raises(ValueError, match="not a thought-emulator checkpoint"):
        import_emulator(CHECKPOINTS / "teacher", base_model=BASE)
    with pytest.raises(ValueError, match="not a mind-reading student"):
        import_student(CHECKPOINTS / "emulator", base_model=BASE)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        import_causal_lm(tmp_path, "teacher", base_model=BASE)


class Payload:
    """Unpickling this would create a folder: the stand-in for code a crafted checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    from icot_hf.reference_checkpoints import UnsafeCheckpointError, import_causal_lm

    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "config.json").write_text((CHECKPOINTS / "teacher" / "config.json").read_text())
    marker = tmp_path / "code_ran"
    torch.save({"base_model.transformer.wte.weight": torch.zeros(2), "x": Payload(str(marker))}, folder / "state_dict.bin")
    with pytest.raises(UnsafeCheckpointError, match="refused") as error:
        import_causal_lm(folder, "teacher", base_model=BASE)
    assert "state_dict.bin" in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()
    # the same through the command: one line, exit status 2, nothing written
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "import_reference.py"), "--teacher", str(folder), "--base_model", BASE,
                             "--tokenizer", BASE, "--output_dir", str(tmp_path / "out")], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "refused" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not marker.exists() and not (tmp_path / "out" / "teacher").exists()


def test_an_import_that_fails_midway_leaves_nothing_and_its_rerun_completes(tmp_path):
    """Offline without --tokenizer the checkpoints' "gpt2" cannot be fetched: nothing may be written
    (issue 37: it used to leave teacher/ behind, which then blocked the corrected re-run)."""
    tokenizer_dir = tmp_path / "tokenizer"
    compact_tokenizer().save_pretrained(tokenizer_dir)
    out = tmp_path / "imp"
    command = [sys.executable, str(REPO / "recipes" / "import_reference.py"), "--teacher", str(CHECKPOINTS / "teacher"),
               "--student", str(CHECKPOINTS / "coupled" / "student"), "--emulator", str(CHECKPOINTS / "coupled" / "emulator"),
               "--stepwise", str(CHECKPOINTS / "stepwise"), "--base_model", BASE, "--output_dir", str(out)]
    offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    failed = subprocess.run(command, capture_output=True, text=True, env=offline)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    fixed = subprocess.run([*command, "--tokenizer", str(tokenizer_dir)], capture_output=True, text=True, env=offline)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["coupled", "stepwise", "teacher"]
    # a half-done run: the teacher was imported, the rest is missing; the re-run completes the rest only
    shutil.rmtree(out / "coupled")
    teacher_before = {p: p.stat().st_mtime_ns for p in (out / "teacher").rglob("*")}
    rerun = subprocess.run([*command, "--tokenizer", str(tokenizer_dir)], capture_output=True, text=True, env=offline)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (out / "coupled" / "config.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in (out / "teacher").rglob("*")} == teacher_before


def test_import_command_writes_folders_that_load_and_answer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icot_hf import ImplicitCoTForCausalLM

    tokenizer_dir = tmp_path / "tokenizer"
    compact_tokenizer().save_pretrained(tokenizer_dir)
    out = tmp_path / "released"
    command = [sys.executable, str(REPO / "recipes" / "import_reference.py"), "--teacher", str(CHECKPOINTS / "teacher"),
               "--student", str(CHECKPOINTS / "coupled" / "student"), "--emulator", str(CHECKPOINTS / "coupled" / "emulator"),
               "--stepwise", str(CHECKPOINTS / "stepwise"), "--base_model", BASE, "--tokenizer", str(tokenizer_dir), "--output_dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["coupled", "stepwise", "teacher"]
    teacher = AutoModelForCausalLM.from_pretrained(out / "teacher")
    assert teacher.config.icot_sequence_format == "reference"
    coupled = ImplicitCoTForCausalLM.from_pretrained(out / "coupled")
    tokenizer = AutoTokenizer.from_pretrained(out / "coupled")
    assert len(coupled.answer(["5 6 3 2 * 7 4 3 4"], tokenizer)) == 1
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr  # the same import: finished, kept
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    other = [*command[:command.index("--teacher") + 1], str(CHECKPOINTS / "stepwise"), *command[command.index("--teacher") + 2:]]
    refused = subprocess.run(other, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert refused.returncode == 2 and "already there" in refused.stderr  # another import into the same folder: never overwritten
    # the README's evaluation command on the imported folders, with the paper's file format
    evaluation = subprocess.run([sys.executable, str(REPO / "recipes" / "evaluate_models.py"), "--task", "released", "--teacher_model",
                                 str(out / "teacher"), "--implicit_model", str(out / "coupled"), "--stepwise_model", str(out / "stepwise"),
                                 "--test_files", str(FIXTURE / "valid.txt"), "--batch_sizes", "1", "8", "--max_examples_batch1", "2",
                                 "--output_dir", str(tmp_path / "results")], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert len(json.dumps(results)) > 100 and (tmp_path / "results" / "results.md").is_file()

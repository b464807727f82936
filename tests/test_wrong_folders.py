"""Folders that are not what they are given as (a teacher passed as a student, another tool's
Trainer run as an output_dir): refused with what they hold, never loaded as random weights and
never emptied."""

import hashlib
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import REPO
from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from test_rerun import arguments


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=20, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(root / "teacher")
    student = ImplicitCoTStudent.from_base_model(GPT2LMHeadModel(config))
    student.save_pretrained(root / "student")
    emulator = ImplicitCoTEmulator.from_base_model(GPT2LMHeadModel(config))
    emulator.save_pretrained(root / "emulator")
    ImplicitCoTForCausalLM.from_emulator_and_student(emulator, student, separator_token_id=3, pad_token_id=3).save_pretrained(root / "coupled")
    typo = root / "typo"
    shutil.copytree(root / "student", typo)
    (typo / "config.json").write_text((typo / "config.json").read_text().replace('"icot_student"', '"gpt2_typo"'))
    return root


@pytest.mark.parametrize("cls, folder, says", [
    (ImplicitCoTForCausalLM, "teacher", "plain causal LM (gpt2)"),
    (ImplicitCoTStudent, "teacher", "pass it as teacher_name_or_path"),
    (ImplicitCoTEmulator, "teacher", "plain causal LM"),
    (ImplicitCoTStudent, "coupled", "coupled ImplicitCoTForCausalLM"),
    (ImplicitCoTEmulator, "coupled", "its parts are .student and .emulator"),
    (ImplicitCoTEmulator, "student", "mind-reading student"),
    (ImplicitCoTStudent, "typo", "gpt2_typo"),
])
def test_from_pretrained_refuses_another_kind_of_model(folders, cls, folder, says):
    with pytest.raises(ValueError, match="needs a folder saved from an " + cls.__name__) as error:
        cls.from_pretrained(folders / folder)
    assert says in str(error.value) and str(folders / folder) in str(error.value)


def test_from_pretrained_refuses_missing_or_foreign_weights(folders, tmp_path):
    for cls in (ImplicitCoTStudent, ImplicitCoTEmulator, ImplicitCoTForCausalLM):  # the right folders still load
        cls.from_pretrained(folders / {"ImplicitCoTStudent": "student", "ImplicitCoTEmulator": "emulator"}.get(cls.__name__, "coupled"))
    partial = tmp_path / "partial"
    shutil.copytree(folders / "student", partial)
    weights = {k: v for k, v in load_file(partial / "model.safetensors").items() if not k.startswith("state_mlps.0.")}
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing keys: .*state_mlps.0"):
        ImplicitCoTStudent.from_pretrained(partial)
    foreign = tmp_path / "foreign"
    shutil.copytree(folders / "emulator", foreign)
    shutil.copy(folders / "student" / "model.safetensors", foreign / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit ImplicitCoTEmulator"):
        ImplicitCoTEmulator.from_pretrained(foreign)


def test_couple_recipe_refuses_a_teacher_as_student_before_writing_anything(folders, tmp_path):
    out = tmp_path / "coupled_run"
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "couple.py"), "--dataset_name_or_path", str(tmp_path / "none"),
                             "--student_name_or_path", str(folders / "teacher"), "--emulator_name_or_path", str(folders / "teacher"),
                             "--output_dir", str(out), "--use_cpu", "true", "--report_to", "none"],
                            capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "student_name_or_path" in result.stderr and "plain causal LM" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_mind_reading_recipe_refuses_a_coupled_model_as_teacher(folders):
    from icot_hf.recipe_utils import ScriptArguments, check_upstream_folders

    with pytest.raises(ValueError, match="teacher_name_or_path: .* holds a coupled"):
        check_upstream_folders(ScriptArguments(teacher_name_or_path=str(folders / "coupled")))
    check_upstream_folders(ScriptArguments(teacher_name_or_path=str(folders / "teacher"), student_name_or_path=str(folders / "student"),
                                           emulator_name_or_path=str(folders / "emulator")))


def checksums(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags", [{}, {"rerun": True}, {"overwrite": True}, {"rerun": True, "overwrite": True}])
def test_another_tools_trainer_run_is_never_taken_for_ours(tmp_path, flags):
    """A checkpoint-* is not proof of a run of ours: only our run record is."""
    from icot_hf.run_record import begin_run

    (tmp_path / "data.txt").write_text("1 2 * 3 4||5 6 #### 7 8\n")
    theirs = tmp_path / "run"
    (theirs / "checkpoint-500").mkdir(parents=True)
    (theirs / "checkpoint-500" / "optimizer.pt").write_bytes(b"state")
    (theirs / "runs").mkdir()
    (theirs / "runs" / "events").write_bytes(b"tensorboard")
    for name, content in (("model.safetensors", b"their weights"), ("config.json", b"{}"), ("notes.txt", b"mine")):
        (theirs / name).write_bytes(content)
    before = checksums(theirs)
    with pytest.raises(FileExistsError, match="holds no icot_hf run"):
        begin_run(*arguments(tmp_path, **flags))
    assert checksums(theirs) == before


@pytest.mark.parametrize("damage", ["truncate", "same_size"])
def test_a_finished_run_whose_weights_changed_is_stale(tmp_path, damage):
    """The completion marker is checked against the weights (size and mtime, then the hash), so
    a model damaged after its run finished is neither reused nor passed downstream as finished."""
    import os

    from icot_hf.run_record import COMPLETE_MARKER, artefact_fingerprint, begin_run
    from test_rerun import finished_run, started

    run = finished_run(tmp_path, learning_rate=1e-3)
    fingerprint = artefact_fingerprint(str(run))
    assert not begin_run(*arguments(tmp_path, learning_rate=1e-3))  # intact: nothing to do
    weights = run / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(b"wei")
    else:  # same size, other bytes, a later mtime
        weights.write_bytes(b"WEIGHTS")
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert artefact_fingerprint(str(run)) != fingerprint  # downstream stages see the upstream changed
    with pytest.raises(SystemExit, match="changed after it finished"):
        begin_run(*arguments(tmp_path, learning_rate=1e-3))
    assert started(*arguments(tmp_path, learning_rate=1e-3, rerun=True))  # make reproduce: trains it again
    assert not (run / COMPLETE_MARKER).exists() and not weights.exists()


def test_two_launches_into_one_folder_the_second_stops_naming_the_first(tmp_path):
    """Two real processes: the first holds the folder (begin_run) and waits; the second stops with
    the holder's PID; once the first is killed (-9), the kernel has dropped its lock and a third
    launch proceeds."""
    import json
    import signal

    (tmp_path / "data.txt").write_text("1 2 * 3 4||5 6 #### 7 8\n")
    launch = (f"import sys, time; sys.path.insert(0, {str(REPO / 'tests')!r}); from test_rerun import arguments; "
              f"from icot_hf.run_record import begin_run; from pathlib import Path; begin_run(*arguments(Path({str(tmp_path)!r}))); "
              "print('holding', flush=True); time.sleep(float(sys.argv[1]))")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    first = subprocess.Popen([sys.executable, "-c", launch, "120"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().strip() == "holding"
        second = subprocess.run([sys.executable, "-c", launch, "0"], capture_output=True, text=True, env=env)
        assert second.returncode != 0 and f"PID {first.pid}" in second.stderr and "in use by another run" in second.stderr, second.stderr[-1500:]
        holder = json.loads((tmp_path / "run" / ".icot_run.lock").read_text())
        assert holder["pid"] == first.pid and holder["started"]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    third = subprocess.run([sys.executable, "-c", launch, "0"], capture_output=True, text=True, env=env)
    assert third.returncode == 0 and "holding" in third.stdout, third.stderr[-1500:]


def test_resume_only_from_checkpoints_this_run_wrote(tmp_path):
    from icot_hf.recipe_utils import last_checkpoint
    from icot_hf.run_record import record_checkpoint

    (tmp_path / "data.txt").write_text("1 2 * 3 4||5 6 #### 7 8\n")
    from icot_hf.run_record import begin_run

    assert begin_run(*arguments(tmp_path))
    run = tmp_path / "run"
    for step, ours in ((10, True), (20, False)):
        checkpoint = run / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        if ours:
            record_checkpoint(run, checkpoint)
    with pytest.raises(SystemExit, match="checkpoint-20 is not a checkpoint this run wrote"):
        last_checkpoint(str(run))
    shutil.rmtree(run / "checkpoint-20")
    assert last_checkpoint(str(run)).endswith("checkpoint-10")
    (run / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 10, "swapped": true}')  # replaced after the save
    with pytest.raises(SystemExit, match="not a checkpoint this run wrote"):
        last_checkpoint(str(run))
    record_checkpoint(run, run / "checkpoint-30", pending=True)  # announced, then the process died mid-save
    (run / "checkpoint-30").mkdir()
    (run / "checkpoint-30" / "trainer_state.json").write_text('{"global_step": 30}')
    assert last_checkpoint(str(run)).endswith("checkpoint-30")


def test_answer_refuses_what_is_not_a_list_of_questions(folders):
    from icot_hf import build_digit_tokenizer

    tokenizer = build_digit_tokenizer()
    model = ImplicitCoTForCausalLM.from_pretrained(folders / "coupled")
    for questions, error in (([1234], TypeError), ([None], TypeError), (None, TypeError), (["1 2 * 3 4"] * 2, None)):
        if error is None:
            assert len(model.answer(questions, tokenizer)) == 2
        else:
            with pytest.raises(error, match="answer\\(\\)"):
                model.answer(questions, tokenizer)
    for kwargs in ({"batch_size": 0}, {"num_beams": 0}):
        with pytest.raises(ValueError, match="must be integers >= 1"):
            model.answer(["1 2 * 3 4"], tokenizer, **kwargs)
    with pytest.raises(ValueError, match="question 1 is .* tokens with its separator; the model's context is 64"):
        model.answer(["1 2 * 3 4", " ".join(["7"] * 80)], tokenizer)


def test_max_train_samples_zero_is_refused():
    from icot_hf.recipe_utils import ScriptArguments

    with pytest.raises(ValueError, match="max_train_samples must be >= 1"):
        ScriptArguments(max_train_samples=0)

"""Re-run semantics of a recipe's output_dir (icot_hf/run_record.py): a finished run with the
same settings and upstream models is a no-op, anything else stops with what differs unless the
user asks for a fresh run or a resume; a fresh run removes only what a run writes, and only once
it starts training (a launch that fails before that changes nothing); the marker records the
settings, the upstream fingerprints and the weights' hash."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from icot_hf.recipe_utils import ScriptArguments
from icot_hf.run_record import COMPLETE_MARKER, LOCK_FILE, SETTINGS_FILE, abandon_unstarted_runs, begin_run, finish_run, run_record, start_run
from icot_hf.trainers import TeacherConfig


@pytest.fixture(autouse=True)
def _no_run_left_pending():
    yield
    abandon_unstarted_runs()


def started(script, training) -> bool:
    """begin_run, then (when it says to train) start_run, as train_and_save does before training."""
    if not begin_run(script, training):
        return False
    start_run(training)
    return True


def arguments(tmp_path, **changes):
    script = ScriptArguments(dataset_name_or_path=str(tmp_path / "data.txt"), model_config="{model_type: gpt2, n_layer: 1}",
                             teacher_name_or_path=changes.pop("teacher", None), rerun_if_changed=changes.pop("rerun", False),
                             overwrite_output_dir=changes.pop("overwrite", False))
    training = TeacherConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], **changes)
    return script, training


def finished_run(tmp_path, **changes):
    """A run of ours that finished: begin, write model files and a checkpoint, finish."""
    (tmp_path / "data.txt").write_text("1 2 * 3 4||5 6 #### 7 8\n")
    script, training = arguments(tmp_path, **changes)
    assert started(script, training)
    run = tmp_path / "run"
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-5").mkdir()
    finish_run(run, {"train_loss": 1.0})
    return run


def test_same_settings_is_a_no_op_and_the_marker_records_the_run(tmp_path):
    run = finished_run(tmp_path, learning_rate=1e-3)
    marker = json.loads((run / COMPLETE_MARKER).read_text())
    assert marker["train_loss"] == 1.0 and len(marker["weights_sha256"]) == 64
    assert marker["run"]["settings"]["learning_rate"] == 1e-3
    assert marker["run"]["upstream"]["dataset_name_or_path"].startswith("sha256:")
    assert not begin_run(*arguments(tmp_path, learning_rate=1e-3))
    assert (run / COMPLETE_MARKER).exists() and (run / "checkpoint-5").exists()


def test_changed_setting_stops_and_names_it(tmp_path):
    run = finished_run(tmp_path, learning_rate=1e-3)
    with pytest.raises(SystemExit, match=r"learning_rate: 0.001 -> 0.0003(.|\n)*--overwrite_output_dir"):
        begin_run(*arguments(tmp_path, learning_rate=3e-4))
    assert (run / COMPLETE_MARKER).exists() and (run / "model.safetensors").exists()  # nothing touched


def test_output_location_and_logging_are_not_settings(tmp_path):
    finished_run(tmp_path, logging_steps=10)
    assert not begin_run(*arguments(tmp_path, logging_steps=50, per_device_eval_batch_size=3))


def test_fresh_run_removes_only_what_a_run_writes(tmp_path):
    run = finished_run(tmp_path, learning_rate=1e-3)
    (run / "notes.txt").write_text("mine")
    assert begin_run(*arguments(tmp_path, learning_rate=3e-4, overwrite=True))
    assert (run / "model.safetensors").exists() and (run / COMPLETE_MARKER).exists()  # decided, not yet done
    start_run(arguments(tmp_path)[1])
    assert (run / "notes.txt").read_text() == "mine"
    assert not (run / "model.safetensors").exists() and not (run / "checkpoint-5").exists()
    assert not (run / COMPLETE_MARKER).exists()
    assert json.loads((run / SETTINGS_FILE).read_text())["settings"]["learning_rate"] == 3e-4


def test_rerun_if_changed_refreshes_only_a_changed_run(tmp_path):
    run = finished_run(tmp_path, learning_rate=1e-3)
    assert not begin_run(*arguments(tmp_path, learning_rate=1e-3, rerun=True))
    assert started(*arguments(tmp_path, learning_rate=3e-4, rerun=True))
    assert not (run / "checkpoint-5").exists()


def test_retrained_upstream_model_makes_the_run_stale(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "model.safetensors").write_bytes(b"teacher v1")
    finish_run(teacher, {})
    finished_run(tmp_path, teacher=str(teacher))
    assert not begin_run(*arguments(tmp_path, teacher=str(teacher)))
    (teacher / "model.safetensors").write_bytes(b"teacher v2")
    finish_run(teacher, {})
    with pytest.raises(SystemExit, match="upstream teacher_name_or_path"):
        begin_run(*arguments(tmp_path, teacher=str(teacher)))


def test_interrupted_run_resumes_only_with_the_same_settings(tmp_path):
    (tmp_path / "data.txt").write_text("1 2 * 3 4||5 6 #### 7 8\n")
    script, training = arguments(tmp_path, learning_rate=1e-3)
    assert started(script, training)
    (tmp_path / "run" / "checkpoint-10").mkdir()  # killed after a checkpoint
    assert started(*arguments(tmp_path, learning_rate=1e-3))
    assert (tmp_path / "run" / "checkpoint-10").exists()
    with pytest.raises(SystemExit, match="interrupted run"):
        begin_run(*arguments(tmp_path, learning_rate=3e-4))
    # an explicit resume continues it with the new settings
    assert begin_run(*arguments(tmp_path, learning_rate=3e-4, resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-10")))
    assert (tmp_path / "run" / "checkpoint-10").exists()


def test_a_launch_that_stops_before_training_leaves_the_folder_as_it_found_it(tmp_path):
    """Issue 37: `--overwrite_output_dir` or `--rerun_if_changed` over a finished run, then a
    malformed data line found while loading: the finished run is still there, byte for byte; a
    launch into a new folder that stops the same way leaves no folder."""
    run = finished_run(tmp_path, learning_rate=1e-3)
    abandon_unstarted_runs()
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE}
    for changes in ({"overwrite": True}, {"rerun": True, "learning_rate": 3e-4}):
        assert begin_run(*arguments(tmp_path, **changes))
        abandon_unstarted_runs()  # what icot_hf.cli.run does when the launch raises before training
        assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != LOCK_FILE} == before
    script, training = arguments(tmp_path)
    training.output_dir = str(tmp_path / "new_run")
    assert begin_run(script, training)
    assert (tmp_path / "new_run" / LOCK_FILE).exists()  # held while the launch loads its inputs
    abandon_unstarted_runs()
    assert not (tmp_path / "new_run").exists()
    assert started(script, training)  # the corrected re-run starts as a first run would
    assert json.loads((tmp_path / "new_run" / SETTINGS_FILE).read_text())["settings"]["learning_rate"] == training.learning_rate


def test_a_folder_that_is_not_a_run_is_never_written(tmp_path):
    (tmp_path / "data.txt").write_text("1 2 * 3 4||5 6 #### 7 8\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="holds no icot_hf run"):
            begin_run(*arguments(tmp_path, overwrite=overwrite))
    assert os.listdir(tmp_path / "run") == ["notes.txt"]


def test_record_covers_the_stage_arguments(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    record = run_record(*arguments(tmp_path, learning_rate=2e-3))
    assert record["settings"]["learning_rate"] == 2e-3 and record["settings"]["view"] == "explicit"
    assert "output_dir" not in record["settings"] and "overwrite_output_dir" not in record["settings"]


def teacher_recipe(tmp_path, train_size: int, *settings: str) -> list[str]:
    """Made 2x2 data in tmp_path/data, and the teacher recipe's command line training a tiny GPT-2 on it
    into tmp_path/teacher with `settings`."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", str(train_size),
                    "--valid_size", "4", "--test_size", "4", "--output_dir", str(data)], check=True, capture_output=True)
    return [sys.executable, str(REPO / "recipes" / "teacher.py"), "--dataset_name_or_path", str(data), "--output_dir", str(tmp_path / "teacher"),
            "--model_config", "{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}", "--eval_strategy", "no",
            "--report_to", "none", "--use_cpu", "true", *settings]


@pytest.mark.slow
def test_recipe_rerun_through_the_command_line(tmp_path):
    """The real teacher recipe: same command twice (second: nothing to do, model untouched);
    a changed learning rate stops with its name; --overwrite_output_dir trains it afresh."""
    out = tmp_path / "teacher"
    base = teacher_recipe(tmp_path, 200, "--max_steps", "3", "--per_device_train_batch_size", "8", "--save_strategy", "no")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")

    def launch(*extra):
        return subprocess.run(base + list(extra), env=env, capture_output=True, text=True, timeout=600)

    assert launch("--learning_rate", "1e-3").returncode == 0
    first = json.loads((out / COMPLETE_MARKER).read_text())
    weights_time = (out / "model.safetensors").stat().st_mtime_ns
    again = launch("--learning_rate", "1e-3")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == weights_time
    changed = launch("--learning_rate", "3e-4")
    assert changed.returncode != 0 and "learning_rate: 0.001 -> 0.0003" in changed.stderr
    assert json.loads((out / COMPLETE_MARKER).read_text()) == first  # the finished run is intact
    fresh = launch("--learning_rate", "3e-4", "--overwrite_output_dir", "true")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert json.loads((out / COMPLETE_MARKER).read_text())["run"]["settings"]["learning_rate"] == 3e-4


def test_a_run_resumed_from_its_last_steps_checkpoint_trains_no_further(tmp_path, tokenizer):
    """A run killed after its last checkpoint but before its final save is resumed from that
    checkpoint: it must end there (transformers' loop trains one batch before it checks max_steps;
    measured under a constant learning rate: a step 3 of 2 with other weights). Issue 37's kills."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from conftest import multiplication_dataset, tiny_config
    from icot_hf.data import ICoTCollator, tokenize_dataset
    from icot_hf.trainers import TeacherTrainer

    def trainer():
        args = TeacherConfig(output_dir=str(tmp_path / "out"), max_steps=2, save_strategy="steps", save_steps=1, per_device_train_batch_size=2,
                             learning_rate=1e-2, lr_scheduler_type="constant", use_cpu=True, report_to="none", eval_strategy="no")
        model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=1, width=16))
        return TeacherTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id),
                              train_dataset=tokenize_dataset(multiplication_dataset(2, 16), tokenizer))

    trainer().train()
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 2 and not (tmp_path / "out" / "checkpoint-3").exists()
    saved = load_file(tmp_path / "out" / "checkpoint-2" / "model.safetensors")
    now = resumed.model.state_dict()
    assert all(torch.equal(now[name], tensor) for name, tensor in saved.items() if name in now)


def test_a_launch_killed_while_writing_its_record_does_not_block_its_rerun(tmp_path):
    """Killed at the third write of a run (its lock taken, run_settings.json.tmp opened, nothing in
    it): the folder holds only what our launch wrote, and the same command starts (it used to be
    refused as 'not empty and holds no icot_hf run'). A file of anyone else's there still stops it."""
    (tmp_path / "data.txt").write_text("1 2 * 3 4||5 6 #### 7 8\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("")
    (run / (SETTINGS_FILE + ".tmp")).write_text("")
    script, training = arguments(tmp_path)
    assert started(script, training)
    assert json.loads((run / SETTINGS_FILE).read_text())["settings"]["learning_rate"] == training.learning_rate
    assert not (run / (SETTINGS_FILE + ".tmp")).exists()
    abandon_unstarted_runs()
    other = tmp_path / "other"
    other.mkdir()
    (other / (SETTINGS_FILE + ".tmp")).write_text("")  # no lock of ours beside it: not ours
    training.output_dir = str(other)
    with pytest.raises(FileExistsError, match="holds no icot_hf run"):
        begin_run(script, training)


def test_a_run_killed_while_writing_its_metrics_reruns_to_the_end(tmp_path):
    """Killed just after opening all_results.json (empty, no completion marker): the re-run resumes
    from its last checkpoint and ends (transformers' save_metrics read the empty file back and failed)."""
    out = tmp_path / "teacher"
    command = teacher_recipe(tmp_path, 32, "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "steps",
                             "--save_steps", "1")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    assert subprocess.run(command, env=env, capture_output=True, timeout=600).returncode == 0
    (out / COMPLETE_MARKER).unlink()
    (out / "all_results.json").write_text("")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "all_results.json").read_text()) and (out / COMPLETE_MARKER).is_file()

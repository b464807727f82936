"""Teacher-state cache: the cached states are the teacher's, a trainer reading them computes
the same loss as one running the teacher, and a cache built from anything else is refused, or
rebuilt when the run asks for it (`--rerun_if_changed`, as `make reproduce` does after a retrained
teacher), never over files a cache did not write."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from icot_hf import ImplicitCoTStudent
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.kd.state_cache import attach_teacher_states
from icot_hf.kd.teacher_states import extract_teacher_states
from icot_hf.kd import MindReadingConfig, MindReadingTrainer


@pytest.fixture
def setup(tokenizer, small_dataset):
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=4)).eval()
    data = tokenize_dataset(small_dataset, tokenizer, views=("explicit", "implicit"))
    return teacher, data, ICoTCollator(tokenizer.pad_token_id, views=("explicit", "implicit"))


def test_cached_states_are_the_teachers_and_are_reused(setup, tmp_path, monkeypatch):
    teacher, data, collator = setup
    cached = attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache", batch_size=5)
    batch = collator(cached.select(range(8)).to_list())
    direct = extract_teacher_states(teacher, batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"])
    torch.testing.assert_close(batch["teacher_states"], direct, atol=1e-5, rtol=1e-5)
    # A second run reads the folder and does not run the teacher.
    monkeypatch.setattr(teacher, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("the teacher ran")))
    again = attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache")
    assert again["teacher_states"][3] == cached["teacher_states"][3]


@pytest.mark.parametrize("change, field", [("delta", "delta"), ("weights", "teacher_sha256"), ("data", "data_fingerprint")])
def test_a_cache_built_from_something_else_is_refused(setup, tmp_path, change, field):
    teacher, data, collator = setup
    attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache")
    delta = 2 if change == "delta" else "dynamic"
    if change == "weights":
        with torch.no_grad():
            teacher.transformer.h[1].mlp.c_fc.bias[0] += 1e-3
    if change == "data":
        data = data.select(range(len(data) - 1))
    with pytest.raises(ValueError, match=f"built from something else.*{field}"):
        attach_teacher_states(data, teacher, collator, delta, "diagonal", tmp_path / "cache")


def nudge(teacher):
    with torch.no_grad():
        teacher.transformer.h[1].mlp.c_fc.bias[0] += 1e-2


def test_a_changed_teacher_gets_a_rebuilt_cache_when_asked(setup, tmp_path):
    teacher, data, collator = setup
    old = attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache")
    nudge(teacher)
    new = attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache", rebuild_if_changed=True)
    batch = collator(new.select(range(8)).to_list())
    direct = extract_teacher_states(teacher, batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"])
    torch.testing.assert_close(batch["teacher_states"], direct, atol=1e-5, rtol=1e-5)
    assert torch.tensor(new["teacher_states"][0]).ne(torch.tensor(old["teacher_states"][0])).any()
    # the new cache is in place and matches the new teacher: a plain run reads it without complaint
    attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no staging or replaced folders left


def test_a_stale_cache_folder_with_foreign_files_is_not_replaced(setup, tmp_path):
    teacher, data, collator = setup
    attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache")
    (tmp_path / "cache" / "my_notes.txt").write_text("mine")
    nudge(teacher)
    with pytest.raises(FileExistsError, match="holds files a cache does not write"):
        attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache", rebuild_if_changed=True)
    assert (tmp_path / "cache" / "my_notes.txt").read_text() == "mine"


def test_a_failed_swap_keeps_the_old_cache(setup, tmp_path, monkeypatch):
    import icot_hf.kd.state_cache as state_cache

    teacher, data, collator = setup
    attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache")
    before = (tmp_path / "cache" / "state_cache.json").read_text()
    nudge(teacher)
    real_replace = state_cache.os.replace

    def failing_replace(src, dst):
        if str(dst) == str(tmp_path / "cache") and "replaced" not in str(src):
            raise OSError("disk full")  # the new cache cannot move in
        return real_replace(src, dst)

    monkeypatch.setattr(state_cache.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache", rebuild_if_changed=True)
    monkeypatch.undo()
    assert (tmp_path / "cache" / "state_cache.json").read_text() == before  # the old cache is back, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_trainer_reading_the_cache_computes_the_same_loss(setup, tmp_path, tokenizer):
    teacher, data, collator = setup
    student = ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=4)),
                                                 teacher_num_layers=4, teacher_hidden_size=32).eval()
    trainer = MindReadingTrainer(model=student, teacher=teacher, args=MindReadingConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True),
                                 data_collator=collator, separator_id=tokenizer.eos_token_id)
    cached = attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache")
    with_cache = collator(cached.select(range(12)).to_list())
    without = {k: v for k, v in with_cache.items() if k != "teacher_states"}
    with torch.no_grad():
        torch.testing.assert_close(trainer.compute_loss(student, with_cache), trainer.compute_loss(student, without), atol=1e-6, rtol=1e-6)
        # and the loss reads the cached column, not the teacher: other states give another loss
        shuffled = dict(with_cache, teacher_states=with_cache["teacher_states"].roll(1, dims=0))
        assert abs(float(trainer.compute_loss(student, shuffled)) - float(trainer.compute_loss(student, without))) > 1e-4


def test_a_build_killed_midway_leaves_nothing_for_good(setup, tmp_path):
    """A build killed mid-save (SIGKILL: no cleanup runs) leaves its staging folder; the next build
    removes it (found by killing a mind-reading run at each write: `.states.*` folders piled up)."""
    import subprocess
    import sys

    teacher, data, collator = setup
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    left = tmp_path / f".cache.staging-{dead}-abc123"
    left.mkdir()
    (left / "data-00000-of-00001.arrow").write_bytes(b"half")
    (tmp_path / "notes").mkdir()  # someone else's folder beside it: kept
    attach_teacher_states(data, teacher, collator, "dynamic", "diagonal", tmp_path / "cache", batch_size=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "notes"]

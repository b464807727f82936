"""Each stage's Trainer runs a few steps on tiny models and its loss falls."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import multiplication_dataset, tiny_config
from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.trainers import (
    CoupledConfig, CoupledTrainer, MindReadingConfig, MindReadingTrainer, TeacherConfig, TeacherTrainer,
    ThoughtEmulationConfig, ThoughtEmulationTrainer,
)

COMMON = dict(max_steps=40, per_device_train_batch_size=16, learning_rate=5e-3, logging_steps=5, save_strategy="no", report_to="none", seed=0, use_cpu=True)


@pytest.fixture(scope="module")
def tiny_data(tokenizer):
    return tokenize_dataset(multiplication_dataset(2, 400, seed=3), tokenizer)


def losses(trainer):
    values = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(values) >= 4
    return values


def test_teacher_trainer_loss_falls(tmp_path, tokenizer, tiny_data):
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    trainer = TeacherTrainer(model=model, args=TeacherConfig(output_dir=str(tmp_path), **COMMON), data_collator=ICoTCollator(tokenizer.pad_token_id),
                             train_dataset=tiny_data, processing_class=tokenizer, separator_id=tokenizer.eos_token_id)
    trainer.train()
    values = losses(trainer)
    assert values[-1] < 0.8 * values[0]
    assert any("token_accuracy" in entry for entry in trainer.state.log_history)


@pytest.fixture(scope="module")
def teacher(tokenizer, tiny_data, tmp_path_factory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    args = TeacherConfig(output_dir=str(tmp_path_factory.mktemp("teacher")), **dict(COMMON, max_steps=60))
    TeacherTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id), train_dataset=tiny_data).train()
    return model.eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_mind_reading_trainer(tmp_path, tokenizer, tiny_data, teacher, kind):
    student = ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer)), teacher_num_layers=3, teacher_hidden_size=32)
    args = MindReadingConfig(output_dir=str(tmp_path), eval_exact_match_samples=16, **COMMON)
    trainer = MindReadingTrainer(model=student, teacher=teacher, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id), train_dataset=tiny_data,
                                 eval_dataset=tiny_data.select(range(32)), processing_class=tokenizer, separator_id=tokenizer.eos_token_id)
    trainer.train()
    values = losses(trainer)
    assert values[-1] < 0.8 * values[0]
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_exact_match"] <= 1.0 and "eval_loss" in metrics
    assert not any(p.requires_grad for p in trainer.teacher.parameters()) and not trainer.teacher.training
    trainer.save_model(str(tmp_path / "final"))
    assert not any(k.startswith("teacher") for k in ImplicitCoTStudent.from_pretrained(tmp_path / "final").state_dict())


def test_mind_reading_rejects_mismatched_teacher(tmp_path, tokenizer, tiny_data, teacher):
    student = ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=2)), teacher_num_layers=2)
    with pytest.raises(ValueError, match="the teacher has 3 layers of width 32 but the student was configured for 2 x 32"):
        MindReadingTrainer(model=student, teacher=teacher, args=MindReadingConfig(output_dir=str(tmp_path), **COMMON), train_dataset=tiny_data)


def test_emulator_trainer_loss_falls_and_logs_per_layer(tmp_path, tokenizer, tiny_data, teacher):
    emulator = ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)), mixture_size=4)
    args = ThoughtEmulationConfig(output_dir=str(tmp_path), delta="1", subset="diagonal", **COMMON)
    trainer = ThoughtEmulationTrainer(model=emulator, teacher=teacher, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id), train_dataset=tiny_data)
    trainer.train()
    values = losses(trainer)
    assert values[-1] < 0.8 * values[0]
    assert {"mse_layer_0", "mse_layer_2"} <= set(trainer.state.log_history[0])


def test_a_fixed_emulator_runs_without_dropout_even_where_the_student_keeps_it(tmp_path, tokenizer, tiny_data):
    """fix_emulator: the frozen emulator is in eval mode as in the released coupled stage, and
    stays so through the Trainer's model.train(), also when disable_dropout is off for the student."""
    from transformers import GPT2Config

    config = GPT2Config(**{**tiny_config("gpt2", tokenizer).to_dict(), "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1})
    model = ImplicitCoTForCausalLM.from_emulator_and_student(
        ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(config)),
        ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config)),
        tokenizer.eos_token_id, tokenizer.pad_token_id,
    )
    args = CoupledConfig(output_dir=str(tmp_path), fix_emulator=True, disable_dropout=False, **COMMON)
    trainer = CoupledTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("implicit",)), train_dataset=tiny_data,
                             processing_class=tokenizer)
    trainer.model.train()
    rates = lambda module: {m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)}  # noqa: E731
    assert rates(trainer.model.emulator) == {0.0} and rates(trainer.model.student) == {0.1}


@pytest.mark.parametrize("fix_emulator", [False, True])
def test_coupled_trainer_loss_falls(tmp_path, tokenizer, tiny_data, fix_emulator):
    config = tiny_config("gpt2", tokenizer)
    torch.manual_seed(0)
    model = ImplicitCoTForCausalLM.from_emulator_and_student(
        ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(config)),
        ImplicitCoTStudent.from_base_model(AutoModelForCausalLM.from_config(config)),
        tokenizer.eos_token_id, tokenizer.pad_token_id,
    )
    before = {k: v.clone() for k, v in model.emulator.state_dict().items()}
    args = CoupledConfig(output_dir=str(tmp_path), fix_emulator=fix_emulator, eval_exact_match_samples=8, **COMMON)
    trainer = CoupledTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("implicit",)), train_dataset=tiny_data,
                             eval_dataset=tiny_data.select(range(16)), processing_class=tokenizer)
    trainer.train()
    values = losses(trainer)
    assert values[-1] < 0.8 * values[0]
    unchanged = all(torch.equal(before[k], v) for k, v in model.emulator.state_dict().items())
    assert unchanged == fix_emulator
    assert "eval_exact_match" in trainer.evaluate()


@pytest.mark.parametrize(
    "config_class, kwargs, message",
    [
        (MindReadingConfig, {"delta": "sometimes"}, "delta: delta must be 'dynamic' or a positive integer"),
        (MindReadingConfig, {"subset": "middle"}, "subset must be one of"),
        (ThoughtEmulationConfig, {"mixture_size": 0}, "mixture_size must be >= 1"),
        (ThoughtEmulationConfig, {"softmax_temperature": 0.0}, "softmax_temperature must be > 0"),
        (CoupledConfig, {"softmax_temperature": -1.0}, "softmax_temperature must be > 0"),
        (TeacherConfig, {"view": "both"}, "view must be 'explicit'"),
        (TeacherConfig, {"eval_exact_match_samples": -1}, "eval_exact_match_samples must be >= 0"),
    ],
)
def test_config_validation_names_the_field(tmp_path, config_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config_class(output_dir=str(tmp_path), **kwargs)


def test_report_to_tensorboard_logs_stage_metrics(tmp_path, tokenizer, tiny_data, teacher, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    emulator = ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)))
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = ThoughtEmulationConfig(output_dir=str(tmp_path), **dict(COMMON, max_steps=10, report_to="tensorboard"))
    ThoughtEmulationTrainer(model=emulator, teacher=teacher, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id), train_dataset=tiny_data).train()
    event_files = list(tmp_path.rglob("events.out.tfevents*"))
    assert event_files
    tags = set()
    for path in event_files:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/mse_layer_0", "train/mse_layer_2"} <= tags

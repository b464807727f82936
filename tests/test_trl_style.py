"""The trainers take what TRL's take: a model or its folder, `teacher_model` by folder, `args=None`
for the stage's defaults, raw `input`/`cot`/`answer` datasets (tokenised by the trainer) and a
`peft_config`; the whole ICoT-KD pipeline and ICoT-SI run that way, and the coupled folder loads
with `AutoModelForCausalLM` and answers."""

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

import icot_hf
from conftest import multiplication_dataset, tiny_config
from icot_hf import (CoupledConfig, CoupledTrainer, MindReadingConfig, MindReadingTrainer, StepwiseInternalizationConfig,
                     StepwiseInternalizationTrainer, TeacherConfig, TeacherTrainer, ThoughtEmulationConfig, ThoughtEmulationTrainer)

QUICK = dict(max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3, save_strategy="no", eval_strategy="no", report_to="none",
             use_cpu=True, logging_steps=3)


@pytest.fixture(scope="module")
def raw():
    return multiplication_dataset(2, 48, seed=5)


def test_a_pipeline_written_as_a_trl_user_would(tmp_path, tokenizer, raw):
    torch.manual_seed(0)
    base = tmp_path / "tiny-gpt2"  # a "pretrained" model folder, as a Hub id would be
    AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=2)).save_pretrained(base)
    tokenizer.save_pretrained(base)

    teacher = TeacherTrainer(model=str(base), args=TeacherConfig(output_dir=str(tmp_path / "teacher"), **QUICK), train_dataset=raw)
    teacher.train()
    teacher.save_model()
    assert {"explicit_input_ids", "implicit_input_ids"} <= set(teacher.train_dataset.column_names)  # tokenised by the trainer

    student = MindReadingTrainer(model=str(base), teacher_model=str(tmp_path / "teacher"), train_dataset=raw, processing_class=tokenizer,
                                 args=MindReadingConfig(output_dir=str(tmp_path / "student"), **QUICK),
                                 peft_config=LoraConfig(r=4, target_modules=["c_attn"]))
    assert isinstance(student.model, icot_hf.ImplicitCoTStudent) and student.model.has_lora  # wrapped for the teacher's shape
    student.train()
    student.save_model()

    emulator = ThoughtEmulationTrainer(model=str(base), teacher_model=str(tmp_path / "teacher"), train_dataset=raw,
                                       args=ThoughtEmulationConfig(output_dir=str(tmp_path / "emulator"), **QUICK))
    assert isinstance(emulator.model, icot_hf.ImplicitCoTEmulator)
    emulator.train()
    emulator.save_model()

    coupled = CoupledTrainer(student_model=str(tmp_path / "student"), emulator_model=str(tmp_path / "emulator"), train_dataset=raw,
                             processing_class=tokenizer, args=CoupledConfig(output_dir=str(tmp_path / "coupled"), **QUICK))
    coupled.train()
    coupled.save_model()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "coupled")
    assert isinstance(loaded, icot_hf.ImplicitCoTForCausalLM)
    answers = loaded.answer(["1 2 * 3 4", "5 6 * 7 8"], tokenizer)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    stepwise = StepwiseInternalizationTrainer(model=str(tmp_path / "teacher"), train_dataset=raw, eval_dataset=raw.select(range(8)),
                                              args=StepwiseInternalizationConfig(output_dir=str(tmp_path / "stepwise"), **QUICK))
    stepwise.train()
    assert stepwise.pad_token_id == tokenizer.pad_token_id and stepwise.separator_id == tokenizer.eos_token_id


def test_args_none_gives_the_stages_defaults_and_wrong_inputs_say_what_is_expected(tmp_path, tokenizer, raw, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=2))
    trainer = TeacherTrainer(model=model, train_dataset=raw, processing_class=tokenizer)
    assert isinstance(trainer.args, TeacherConfig) and trainer.args.output_dir.endswith("icot-teacher")
    with pytest.raises(TypeError, match="expects args=TeacherConfig"):
        TeacherTrainer(model=model, args=MindReadingConfig(output_dir="x"), train_dataset=raw, processing_class=tokenizer)
    with pytest.raises(ValueError, match="needs teacher_model="):
        MindReadingTrainer(model=model, train_dataset=raw, processing_class=tokenizer)
    with pytest.raises(ValueError, match="columns .*give raw examples"):
        TeacherTrainer(model=model, train_dataset=raw.rename_column("cot", "rationale"), processing_class=tokenizer)
    with pytest.raises(ValueError, match="pass processing_class"):
        TeacherTrainer(model=model, train_dataset=raw)


def test_compute_metrics_and_callbacks_see_the_stage_metrics(tmp_path, tokenizer, raw):
    from transformers import TrainerCallback

    seen, scored = [], []

    class Watch(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append(dict(metrics))

    def digits_right(prediction):  # a user's metric on the Trainer's (logits, labels)
        logits, labels = prediction.predictions, prediction.label_ids
        predicted, target = logits[:, :-1].argmax(-1), labels[:, 1:]
        mask = target != -100
        scored.append(int(mask.sum()))
        return {"digits_right": float((predicted[mask] == target[mask]).mean())}

    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer, layers=2))
    args = TeacherConfig(output_dir=str(tmp_path / "t"), **dict(QUICK, eval_strategy="steps", eval_steps=3), eval_exact_match_samples=8)
    trainer = TeacherTrainer(model=model, args=args, train_dataset=raw, eval_dataset=raw.select(range(16)), processing_class=tokenizer,
                             compute_metrics=digits_right, callbacks=[Watch()])
    trainer.train()
    assert len(seen) == 2 and scored and scored[0] > 16  # every labelled position of the 16 examples
    for metrics in seen:
        assert {"eval_loss", "eval_digits_right", "eval_exact_match", "eval_token_accuracy"} <= set(metrics), metrics
        assert 0.0 <= metrics["eval_digits_right"] <= 1.0


@pytest.mark.parametrize("config_class", [TeacherConfig, MindReadingConfig, ThoughtEmulationConfig, CoupledConfig, StepwiseInternalizationConfig])
def test_every_config_documents_its_fields_and_gives_an_example(config_class):
    import dataclasses

    from icot_hf.trainers.common_config import ICoTTrainingArguments

    doc = config_class.__doc__
    assert "Args:" in doc and "Example:" in doc and f"{config_class.__name__}(" in doc
    shared = {f.name for f in dataclasses.fields(ICoTTrainingArguments)}
    own = [f for f in dataclasses.fields(config_class) if f.name not in shared]
    assert own and all(f"        {f.name} (`" in doc for f in own), [f.name for f in own if f"        {f.name} (`" not in doc]
    for name in ("cpu_bf16", "label_logits_only", "eval_exact_match_samples"):  # the shared fields: on the base class
        assert f"        {name} (`" in ICoTTrainingArguments.__doc__

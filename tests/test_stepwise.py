"""Stepwise internalization: the removal schedule, smoothing bounds, masking, resume."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import multiplication_dataset, tiny_config
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.trainers import StepwiseInternalizationConfig, StepwiseInternalizationTrainer
from icot_hf.trainers.stepwise_trainer import remove_cot_tokens, removal_offsets, schedule_stage


def config(tmp_path, **kwargs):
    base = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1)
    return StepwiseInternalizationConfig(**{**base, **kwargs})


def test_schedule_by_epoch_and_by_steps(tmp_path):
    by_epoch = config(tmp_path, remove_per_stage=8, removal_unit="epoch")
    assert [schedule_stage(step, 10, by_epoch) for step in (0, 9, 10, 25, 31)] == [0, 0, 1, 2, 3]
    by_steps = config(tmp_path, remove_per_stage=5, removal_unit="steps", removal_interval_steps=4)
    assert [schedule_stage(step, 10, by_steps) for step in (0, 3, 4, 11, 12)] == [0, 0, 1, 2, 3]
    from_trained = config(tmp_path, remove_per_stage=5, removal_unit="steps", removal_interval_steps=4, removal_start_stage=1)
    assert [schedule_stage(step, 10, from_trained) for step in (0, 3, 4, 12)] == [1, 1, 2, 4]


def test_smoothing_offsets_stay_in_bounds_and_favour_zero():
    g = torch.Generator().manual_seed(0)
    offsets = removal_offsets(20000, 1.0, 5, g)
    assert offsets.min() >= 0 and offsets.max() <= 5
    counts = torch.bincount(offsets, minlength=6).double()
    assert (counts[:-1] > counts[1:]).all()  # decreasing like exp(-lambda * o)
    assert abs(counts[1] / counts[0] - torch.exp(torch.tensor(-1.0)).item()) < 0.05
    assert removal_offsets(10, 0.0, 5, g).eq(0).all()


def test_removal_shifts_tokens_and_masks_labels(tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 4, seed=0), tokenizer, views=("explicit",))
    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))(data.to_list())
    removed = torch.tensor([0, 2, 5, 100])  # the last removes the whole chain of thought
    ids, mask, labels, seps = remove_cot_tokens(batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"], removed, tokenizer.pad_token_id)
    for row in range(4):
        original = data[row]["explicit_input_ids"]
        s1, s2, _ = data[row]["explicit_separators"]
        r = min(int(removed[row]), s2 - s1 - 1)
        expected = original[: s1 + 1] + original[s1 + 1 + r :]
        assert ids[row][mask[row].bool()].tolist() == expected
        assert labels[row, : s1 + 1].eq(-100).all() and labels[row][mask[row].bool()][s1 + 1 :].tolist() == expected[s1 + 1 :]
        assert labels[row][~mask[row].bool()].eq(-100).all()
        assert (ids[row, seps[row]] == tokenizer.eos_token_id).all()
    assert seps[3, 1] == seps[3, 0] + 1  # no CoT left: the two separators are adjacent


def train(tmp_path, tokenizer, data, max_steps, resume=None):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    args = config(tmp_path, max_steps=max_steps, remove_per_stage=3, removal_unit="steps", removal_interval_steps=4,
                  save_strategy="steps", save_steps=6, seed=1, lr_scheduler_type="constant")
    trainer = StepwiseInternalizationTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("explicit",)),
                                             train_dataset=data, processing_class=tokenizer, separator_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_resume_mid_schedule_continues_at_the_same_position(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 200, seed=2), tokenizer, views=("explicit",))
    full = train(tmp_path / "full", tokenizer, data, max_steps=12)
    removed_full = [e["removed_tokens"] for e in full.state.log_history if "removed_tokens" in e]
    assert full.current_stage() == 3 and full.scheduled_removal() == 9
    assert full.scheduled_removal(11) == 6  # evaluation after step 12 uses the removal step 12 trained on
    train(tmp_path / "cut", tokenizer, data, max_steps=6)  # stops at a checkpoint in stage 1
    resumed = train(tmp_path / "cut", tokenizer, data, max_steps=12, resume=str(tmp_path / "cut" / "checkpoint-6"))
    removed_resumed = [e["removed_tokens"] for e in resumed.state.log_history if "removed_tokens" in e]
    assert removed_resumed[-6:] == removed_full[-6:]  # same schedule positions and smoothing draws
    assert resumed.scheduled_removal() == 9


@pytest.mark.parametrize("kwargs, message", [({"remove_per_stage": 0}, "remove_per_stage must be >= 1"), ({"removal_unit": "hour"}, "removal_unit must be")])
def test_config_validation(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **kwargs)

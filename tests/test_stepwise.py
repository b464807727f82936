"""Stepwise internalization: the removal schedule, smoothing bounds, masking, resume."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import multiplication_dataset, tiny_config
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.stepwise import StepwiseInternalizationConfig, StepwiseInternalizationTrainer
from icot_hf.stepwise.stepwise_trainer import remove_cot_tokens, removal_offsets, schedule_stage


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


def test_smoothing_offsets_follow_the_released_distribution():
    """P(o) proportional to exp(-lambda * o) over o = 0..max_offset: the released code's truncated
    geometric (1 - e^-lambda) e^(-lambda o), whose mass past max_offset is below 1e-14 at the paper's
    lambda 4 and offset cap 8. Checked where every offset has weight (lambda 0.5, cap 2, 40k draws:
    each frequency within 0.01 of its probability), so an offset range one short or a lambda off fails."""
    from icot_hf.stepwise.stepwise_trainer import removal_offsets

    draws = removal_offsets(40_000, 0.5, 2, torch.Generator().manual_seed(0))
    weights = torch.exp(-0.5 * torch.arange(3, dtype=torch.double))
    expected = weights / weights.sum()
    observed = torch.bincount(draws, minlength=3).double() / draws.numel()
    assert observed.numel() == 3 and (observed - expected).abs().max() < 0.01, (observed, expected)
    released = (1 - math.exp(-4.0)) * torch.exp(-4.0 * torch.arange(100, dtype=torch.double))
    assert float(released[9:].sum()) < 1e-14  # the released distribution's mass past the paper preset's cap


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
    assert ids.shape[1] == int(mask.sum(1).max())  # columns that are padding in every row are dropped
    everything = torch.full((4,), 100)
    ids_all, _, _, _ = remove_cot_tokens(batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"], everything, tokenizer.pad_token_id)
    assert ids_all.shape[1] == int((batch["explicit_separators"][:, 0] + 1 + batch["explicit_attention_mask"].sum(1) - batch["explicit_separators"][:, 1]).max())


def test_dropping_padding_columns_leaves_the_loss_unchanged(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)).eval()
    data = tokenize_dataset(multiplication_dataset(2, 6, seed=3), tokenizer, views=("explicit",))
    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))(data.to_list())
    removed = torch.full((6,), 100)
    ids, mask, labels, _ = remove_cot_tokens(batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"], removed, tokenizer.pad_token_id)
    width = batch["explicit_input_ids"].shape[1]
    assert ids.shape[1] < width
    padded = [torch.nn.functional.pad(t, (0, width - ids.shape[1]), value=v) for t, v in ((ids, tokenizer.pad_token_id), (mask, 0), (labels, -100))]
    with torch.no_grad():
        trimmed_loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        padded_loss = model(input_ids=padded[0], attention_mask=padded[1], labels=padded[2]).loss
    assert trimmed_loss == pytest.approx(float(padded_loss), rel=1e-5)


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


def reference_counter_schedule(steps: int, steps_per_removed_token: int) -> list[int]:
    """The released code's loop (Internalize_CoT_Step_by_Step, src/train.py), line for line: the
    counter is checked before the step is counted, reset to 0 on a removal, and the step counted
    either way."""
    scheduled, counter, out = 0, 0, []
    for _ in range(steps):
        if counter == steps_per_removed_token or steps_per_removed_token == 0:
            scheduled += 1
            counter = 0
        counter += 1
        out.append(scheduled)
    return out


@pytest.mark.parametrize("interval", [1, 3, 3156])
def test_reference_schedule_removes_one_token_at_the_reference_steps(tmp_path, interval):
    args = config(tmp_path, removal_schedule="reference", remove_per_stage=1, removal_interval_steps=interval)
    steps = 4 * (interval + 1) + 3
    assert [schedule_stage(step, 10, args) for step in range(steps)] == reference_counter_schedule(steps, interval)
    if interval == 3156:  # 4x4 at batch 32: the first removal trains at step 3156 (0-based), the second at 6312
        assert schedule_stage(3155, 10, args) == 0 and schedule_stage(3156, 10, args) == 1
        assert schedule_stage(6311, 10, args) == 1 and schedule_stage(6312, 10, args) == 2


def make_trainer(tmp_path, tokenizer, data, eval_data=None, **kwargs):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))
    args = config(tmp_path, seed=1, lr_scheduler_type="constant", **kwargs)
    return StepwiseInternalizationTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("explicit",)),
                                          train_dataset=data, eval_dataset=eval_data, processing_class=tokenizer,
                                          separator_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def test_optimizer_resets_while_cot_remains_and_never_after(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 64, seed=3), tokenizer, views=("explicit",))
    cot = data[0]["explicit_separators"][1] - data[0]["explicit_separators"][0] - 1  # 2x2: every CoT has the same length
    trainer = make_trainer(tmp_path, tokenizer, data, max_steps=2 * cot + 6, remove_per_stage=1, removal_schedule="reference",
                           removal_interval_steps=1, reset_optimizer=True)
    assert trainer.longest_cot() == cot
    resets, original = [], trainer.training_step

    def spy(model, inputs, num_items_in_batch=None):
        loss = original(model, inputs, num_items_in_batch)  # a reset clears the state before this step's update
        state = getattr(trainer.optimizer, "optimizer", trainer.optimizer).state
        if trainer.state.global_step > 0 and len(state) == 0:
            resets.append(trainer.current_stage())
        return loss

    trainer.training_step = spy
    trainer.train()
    # A stage every step; a reset at each stage change up to the one that removes the last
    # CoT token (stage `cot`); the stage changes after it no longer touch the optimizer.
    assert trainer.current_stage() > cot + 1
    assert resets == list(range(1, cot + 1))


class FakeScores:
    def __init__(self, values):
        self.values, self.calls = list(values), []

    def __call__(self, stage):
        self.calls.append(stage)
        value = self.values.pop(0)
        return {"sequence_accuracy": value, "token_accuracy": value}


def test_gate_advances_only_when_it_passes_or_at_the_cap(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 32, seed=4), tokenizer, views=("explicit",))
    trainer = make_trainer(tmp_path, tokenizer, data, eval_data=data, removal_schedule="gated", remove_per_stage=2,
                           removal_start_stage=1, gate_every_steps=5, max_stage_steps=12, gate_threshold=0.9)
    trainer.gate_scores = FakeScores([0.5, 0.95, 0.1, 0.2, 0.3, 0.99])
    stages = []
    for step in range(1, 31):
        trainer.state.global_step = step
        trainer.check_gate()
        stages.append(trainer.schedule.stage)
    # checks at steps 5 (0.5: stay), 10 (0.95: advance); then stage 2 from step 10: checks at 15 (0.1),
    # 20 (0.2), cap at 22 (0.3: advance anyway); stage 3 from 22: check at 27 (0.99: advance).
    assert trainer.gate_scores.calls == [1, 1, 2, 2, 2, 3]
    assert stages.index(2) + 1 == 10 and stages.index(3) + 1 == 22 and stages.index(4) + 1 == 27
    assert [(a["step"], a["reason"]) for a in trainer.schedule.advances] == [(10, "gate"), (22, "cap"), (27, "gate")]


def test_gate_stops_advancing_once_the_cot_is_gone(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 32, seed=4), tokenizer, views=("explicit",))
    trainer = make_trainer(tmp_path, tokenizer, data, eval_data=data, removal_schedule="gated", remove_per_stage=100, gate_every_steps=1)
    trainer.gate_scores = FakeScores([1.0] * 10)
    for step in range(1, 6):
        trainer.state.global_step = step
        trainer.check_gate()
    assert trainer.schedule.stage == 1 and trainer.fully_removed(1)


def test_gate_scores_are_teacher_forced_accuracy_at_the_stage(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 16, seed=5), tokenizer, views=("explicit",))
    trainer = make_trainer(tmp_path, tokenizer, data, eval_data=data, removal_schedule="gated", gate_samples=16)
    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))(data.to_list())
    ids, mask, labels, _ = remove_cot_tokens(batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"], torch.full((16,), 8), tokenizer.pad_token_id)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=mask).logits
    predicted, target = logits[:, :-1].argmax(-1), labels[:, 1:]
    rows = [all(predicted[r, t] == target[r, t] for t in range(target.shape[1]) if target[r, t] != -100) for r in range(16)]
    scores = trainer.gate_scores(1)
    assert scores["token_accuracy"] == pytest.approx(float((predicted == target)[target != -100].float().mean()))
    assert scores["sequence_accuracy"] == pytest.approx(sum(rows) / 16)


def train_gated(tmp_path, tokenizer, data, max_steps, resume=None):
    trainer = make_trainer(tmp_path, tokenizer, data, eval_data=data.select(range(32)), max_steps=max_steps, removal_schedule="gated",
                           remove_per_stage=2, gate_metric="token_accuracy", gate_threshold=0.3, gate_every_steps=2, max_stage_steps=4,
                           gate_samples=32, save_strategy="steps", save_steps=7, learning_rate=3e-3)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_gated_resume_mid_stage_gives_the_same_schedule(tmp_path, tokenizer):
    data = tokenize_dataset(multiplication_dataset(2, 200, seed=2), tokenizer, views=("explicit",))
    full = train_gated(tmp_path / "full", tokenizer, data, max_steps=16)
    assert len(full.schedule.advances) >= 2  # the schedule moved mid-run, so the resume crosses advances
    train_gated(tmp_path / "cut", tokenizer, data, max_steps=7)
    resumed = train_gated(tmp_path / "cut", tokenizer, data, max_steps=16, resume=str(tmp_path / "cut" / "checkpoint-7"))
    assert resumed.schedule.advances == full.schedule.advances
    assert (resumed.schedule.stage, resumed.schedule.stage_start_step) == (full.schedule.stage, full.schedule.stage_start_step)
    removed = lambda t: [e["removed_tokens"] for e in t.state.log_history if "removed_tokens" in e]  # noqa: E731
    assert removed(resumed)[-9:] == removed(full)[-9:]


def test_a_tie_in_exact_match_goes_to_the_lower_validation_loss():
    from icot_hf.stepwise.stepwise_trainer import beats_best

    assert beats_best(0.0, 2.0, None, None)  # the first fully-removed evaluation
    assert beats_best(0.2, 9.0, 0.1, 1.0) and not beats_best(0.1, 0.5, 0.2, 1.0)  # exact match first
    assert beats_best(0.1, 0.9, 0.1, 1.0) and not beats_best(0.1, 1.1, 0.1, 1.0) and not beats_best(0.1, 1.0, 0.1, 1.0)
    assert beats_best(0.1, 0.9, 0.1, None)  # a best saved before losses were kept (an older checkpoint)


def fully_removed_from_step_8(tmp_path, tokenizer, scores):
    """A fixed-schedule run whose evaluations after steps 2, 4, ..., 14 score `scores` in turn.
    Stage = step // 4 (x 4 tokens; a 2x2 CoT is 8): step index 8 on trains fully removed, so the
    evaluations after steps 10, 12, 14 are fully removed."""
    data = tokenize_dataset(multiplication_dataset(2, 64, seed=6), tokenizer, views=("explicit",))
    trainer = make_trainer(tmp_path, tokenizer, data, eval_data=data.select(range(8)), max_steps=14, removal_schedule="fixed",
                           removal_unit="steps", removal_interval_steps=4, remove_per_stage=4, eval_strategy="steps",
                           eval_steps=2, eval_exact_match_samples=8, learning_rate=3e-3)
    scores = iter(scores)
    trainer.exact_match = lambda dataset, limit: next(scores)
    return trainer


def test_the_kept_model_among_tied_fully_removed_evaluations_has_the_lowest_loss(tmp_path, tokenizer):
    trainer = fully_removed_from_step_8(tmp_path, tokenizer, [0.1, 0.9, 0.2, 0.3, 0.5, 0.5, 0.5])  # steps 10, 12, 14 tie
    trainer.train()
    losses = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e and e["step"] >= 10}
    assert sorted(losses) == [10, 12, 14] and len(set(losses.values())) == 3
    assert trainer.schedule.best_step == min(losses, key=losses.get)
    assert trainer.schedule.best_loss == pytest.approx(min(losses.values()))


def test_best_fully_removed_evaluation_is_kept_and_restored(tmp_path, tokenizer):
    from icot_hf.curves import learning_curve

    # The best before full removal (0.9 after step 4) must not count.
    trainer = fully_removed_from_step_8(tmp_path, tokenizer, [0.1, 0.9, 0.2, 0.3, 0.5, 0.6, 0.4])
    snapshots = {}
    original = trainer._save_best

    def spy(score, loss):
        snapshots[trainer.state.global_step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        original(score, loss)

    trainer._save_best = spy
    trainer.train()
    assert (trainer.schedule.best_step, trainer.schedule.best_exact_match) == (12, 0.6)
    assert sorted(snapshots) == [10, 12]  # step 10 is the first fully removed evaluation, 12 beats it
    final = trainer.model.state_dict()
    assert all(torch.equal(final[k], snapshots[12][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[10][k]) for k in final)
    best = json.loads((tmp_path / "best_fully_removed" / "best.json").read_text())
    assert best["step"] == 12 and best["eval_exact_match"] == 0.6 and best["eval_loss"] == pytest.approx(trainer.schedule.best_loss)
    curve = learning_curve(trainer)
    assert [p["step"] for p in curve["evaluations"]] == [2, 4, 6, 8, 10, 12, 14]
    assert [p["exact_match"] for p in curve["evaluations"]] == [0.1, 0.9, 0.2, 0.3, 0.5, 0.6, 0.4]
    assert [p["fully_removed"] for p in curve["evaluations"]] == [0, 0, 0, 0, 1, 1, 1]
    assert [p["removal_stage"] for p in curve["evaluations"]] == [0, 0, 1, 1, 2, 2, 3]
    assert curve["evaluations"][0]["examples"] == 16 and curve["best_fully_removed"] == {"step": 12, "exact_match": 0.6}


def test_keep_positions_trains_and_generates_with_the_kept_position_ids(tmp_path, tokenizer):
    from icot_hf.stepwise.stepwise_trainer import kept_position_ids

    data = tokenize_dataset(multiplication_dataset(2, 8, seed=7), tokenizer, views=("explicit",))
    trainer = make_trainer(tmp_path, tokenizer, data, eval_data=data, removal_schedule="gated", keep_positions=True, remove_per_stage=3,
                           removal_start_stage=1, max_new_tokens=40)
    model = trainer.model.eval()
    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))(data.to_list())
    removed = torch.full((8,), 3)
    ids, mask, labels, seps = remove_cot_tokens(batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"], removed, tokenizer.pad_token_id)
    positions = kept_position_ids(ids, batch["explicit_separators"], removed)
    for row in range(8):  # the input keeps 0..s1-1; the separator and what follows keep their pre-removal ids
        s1, length = int(seps[row, 0]), int(mask[row].sum())
        assert positions[row, :s1].tolist() == list(range(s1))
        assert positions[row, s1:length].tolist() == list(range(s1 + 3, length + 3))
    assert trainer.answer_batch(model, batch) is not None  # the trainer's exact-match path runs with kept positions


def test_generation_with_a_position_gap_is_greedy_decoding_with_those_ids(tokenizer, small_dataset):
    from icot_hf.generation import prompt_position_ids
    from icot_hf.trainers.teacher_trainer import implicit_prompts

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)).eval()
    data = tokenize_dataset(small_dataset, tokenizer, views=("explicit",))  # 2x2 and 3x3: prompts of two lengths
    batch = ICoTCollator(tokenizer.pad_token_id, views=("explicit",))(data.to_list()[:6])
    prompts, mask = implicit_prompts(batch, tokenizer.eos_token_id)
    gaps = torch.tensor([0, 3, 5, 1, 7, 2])
    model.generation_config.eos_token_id = None  # ten tokens in every row: compare whole continuations
    out = model.generate(input_ids=prompts, attention_mask=mask, position_ids=prompt_position_ids(mask, gaps), max_new_tokens=10,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for row in range(6):
        s1 = int(batch["explicit_separators"][row, 0])
        sequence, position = batch["explicit_input_ids"][row, : s1 + 1].tolist(), list(range(s1)) + [s1 + int(gaps[row])]
        with torch.no_grad():
            for _ in range(10):  # full forward passes, no cache: the separator at s1 + gap, then +1 a token
                token = int(model(input_ids=torch.tensor([sequence]), position_ids=torch.tensor([position])).logits[0, -1].argmax())
                sequence.append(token)
                position.append(position[-1] + 1)
        assert out[row, prompts.shape[1] :].tolist() == sequence[s1 + 1 :], row

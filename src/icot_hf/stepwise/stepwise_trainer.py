"""Stepwise internalization: remove CoT tokens from the front of the chain of thought as
training proceeds. The model stays a plain causal LM; inference is `generate` on `input S`.

At stage s, `s * remove_per_stage` leading CoT tokens are removed from every example, plus
a per-example smoothing offset o in [0, max_removal_offset] with P(o) ~ exp(-lambda * o).
Removal happens on the collated batch inside the training step (vectorised). With
`removal_granularity: steps` a stage removes whole reasoning steps instead (the offsets count
steps too): each example's `explicit_step_ends` (the CoT tokens through each step, computed at
tokenisation from `icot_hf.data.split_steps`) turns its step count into a token count, so a
step's tokens always go together. How s moves is the schedule (`removal_schedule`):

- fixed and reference: s is a function of the global step, so a resumed run continues at
  the same position;
- gated: s advances when a gate on validation data passes (or the stage's step cap is
  hit), so the schedule follows the model rather than the calendar. The stage, the step
  it began and the history of advances live in a `RemovalSchedule` that each checkpoint
  saves in its trainer_state.json and a resumed run restores.

The smoothing draws are seeded by (seed, global step) in every schedule. While chain of
thought remains, each advance resets the optimizer (reset_optimizer); once it is fully
removed, no more resets, and the evaluation with the best exact match is kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil

import numpy as np
import torch
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_callback import ExportableState

from .modeling_stepwise import ImplicitCoTStepwiseForCausalLM
from ..generation import generate_explicit
from ..trainers.base import ICoTTrainer
from .stepwise_config import StepwiseInternalizationConfig
from ..trainers.teacher_trainer import implicit_prompts

logger = logging.getLogger(__name__)
BEST_DIR = "best_fully_removed"
FRONTIER_DIR = "frontier"
FRONTIER_INDEX = "index.json"


def schedule_stage(global_step: int, steps_per_epoch: int, args: StepwiseInternalizationConfig) -> int:
    """Stage of the step-driven schedules (fixed, reference) before optimizer step `global_step`."""
    if args.removal_schedule == "reference":
        # The released code checks its counter before counting the step: the counter reaches
        # steps_per_removed_token (n) at step n (0-based), is reset to 0 and counts that step,
        # so the batches of steps n, 2n, 3n, ... are the first with one more token removed.
        # (Read as "every n + 1 steps" this puts every removal after the first a step late per
        # removal; the trajectory test against the released loop catches it.)
        return args.removal_start_stage + global_step // args.removal_interval_steps
    if args.removal_unit == "steps":
        return args.removal_start_stage + global_step // args.removal_interval_steps
    return args.removal_start_stage + global_step // max(steps_per_epoch, 1)


def removal_offsets(count: int, lam: float, max_offset: int, generator: torch.Generator) -> torch.Tensor:
    """Smoothing offsets o in [0, max_offset] with P(o) ~ exp(-lam * o) (all zero when lam <= 0)."""
    if lam <= 0 or max_offset == 0:
        return torch.zeros(count, dtype=torch.long)
    weights = torch.exp(-lam * torch.arange(max_offset + 1, dtype=torch.double))
    return torch.multinomial(weights / weights.sum(), count, replacement=True, generator=generator)


def steps_to_tokens(steps: torch.Tensor, step_ends: torch.Tensor) -> torch.Tensor:
    """Per row, the CoT tokens that its first `steps[b]` reasoning steps take (`step_ends`: the
    collated `explicit_step_ends`, each row padded with its CoT length, so steps past its last
    remove the whole CoT)."""
    steps = steps.to(step_ends.device)
    index = (steps - 1).clamp(min=0, max=step_ends.shape[1] - 1)
    tokens = step_ends.gather(1, index.unsqueeze(1)).squeeze(1)
    return torch.where(steps > 0, tokens, torch.zeros_like(tokens))


def remove_cot_tokens(input_ids, attention_mask, separators, removed, pad_token_id: int):
    """Drop `removed[b]` tokens right after the first separator of each right-padded row
    (capped at the row's CoT length), shifting the rest left; one gather, no row loop. The
    columns that are padding in every row after the cut are dropped: with the CoT gone a batch
    is about a third as wide, and a causal model's outputs on the kept tokens do not depend on
    right padding, so that is compute saved, not a change to the loss.
    Returns input_ids, attention_mask, labels (masked up to the first separator), separators."""
    s1, s2 = separators[:, 0], separators[:, 1]
    removed = torch.minimum(removed.to(s1.device), s2 - s1 - 1)
    width = input_ids.shape[1]
    columns = torch.arange(width, device=input_ids.device).unsqueeze(0)
    source = columns + removed.unsqueeze(1) * (columns > s1.unsqueeze(1))
    lengths = attention_mask.sum(1) - removed
    keep = columns < lengths.unsqueeze(1)
    ids = torch.where(keep, input_ids.gather(1, source.clamp(max=width - 1)), torch.full_like(input_ids, pad_token_id))
    labels = torch.where(keep & (columns > s1.unsqueeze(1)), ids, torch.full_like(ids, -100))
    new_separators = torch.stack([s1, s2 - removed, separators[:, 2] - removed], dim=1)
    kept_width = int(lengths.max())
    return ids[:, :kept_width], keep[:, :kept_width].long(), labels[:, :kept_width], new_separators


def kept_position_ids(input_ids, separators, removed):
    """keep_positions: the separator and everything after it keep the position ids they had
    before `removed[b]` CoT tokens were cut (capped at the row's CoT length), as in the
    reference's --keep_position; the input keeps 0..s1-1."""
    s1, s2 = separators[:, 0], separators[:, 1]
    removed = torch.minimum(removed.to(s1.device), s2 - s1 - 1)
    columns = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    return columns + removed.unsqueeze(1) * (columns >= s1.unsqueeze(1))


def teacher_forced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: labelled tokens predicted right, and labelled tokens (labels unshifted)."""
    target = labels[:, 1:]
    mask = target != -100
    right = (logits[:, :-1].argmax(-1) == target) & mask
    return right.sum(1), mask.sum(1)


def beats_best(score: float, loss: float | None, best_score: float | None, best_loss: float | None) -> bool:
    """Whether an evaluation replaces the best fully-removed one: higher exact match, or the same
    exact match at a lower validation loss. Exact match on a few hundred examples ties often
    while a model is still near 0% (a run at 1.2% tied four times); the loss then says which
    model is further on."""
    if best_score is None or score > best_score:
        return True
    return score == best_score and loss is not None and (best_loss is None or loss < best_loss)


class RemovalSchedule(TrainerCallback, ExportableState):
    """Where the schedule stands: the stage, the step it began, every advance so far, and
    the best fully-removed evaluation. Saved in each checkpoint's trainer_state.json
    (stateful_callbacks) and restored by the trainer on resume; `on_step_end` lets a gated
    trainer check its gate after each optimizer step."""

    def __init__(self, stage: int = 0, stage_start_step: int = 0):
        self.stage = stage
        self.stage_start_step = stage_start_step
        self.advances: list[dict] = []
        self.best_exact_match: float | None = None
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.trainer = None

    def state(self) -> dict:
        attributes = {k: getattr(self, k) for k in ("stage", "stage_start_step", "advances", "best_exact_match", "best_loss", "best_step")}
        return {"args": {}, "attributes": attributes}

    def restore(self, saved: dict) -> None:
        for key, value in saved.get("attributes", {}).items():
            setattr(self, key, value)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer is not None and args.removal_schedule == "gated":
            self.trainer.check_gate()


class StepwiseInternalizationTrainer(ICoTTrainer):
    """Trains a plain causal LM while internalising its chain of thought step by step (ICoT-SI).

    Args:
        model: a causal LM (usually the explicit-CoT teacher), or its Hub id or folder.
        args: a `StepwiseInternalizationConfig`; None for its defaults.
        train_dataset, eval_dataset, processing_class, separator_id, peft_config: as `TeacherTrainer`.
        pad_token_id: padding of the shortened sequences (default: the tokenizer's, else `S`).

    Example:
        >>> StepwiseInternalizationTrainer(model="outputs/teacher", train_dataset=raw_train,
        ...                                eval_dataset=raw_valid).train()
    """

    config_class = StepwiseInternalizationConfig
    stage_name = "stepwise"
    card_stage = "stepwise"

    def views(self, training_args):
        return ("explicit",)  # removal cuts the explicit view; prompts for exact match come from it too

    def reads_step_ends(self, training_args) -> bool:
        return training_args.removal_granularity == "steps"

    def __init__(self, *args, pad_token_id: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.removal_schedule == "gated" and self.eval_dataset is None:
            raise ValueError("removal_schedule 'gated' measures its gate on validation data: pass eval_dataset "
                             "(recipes: a dataset with a 'valid' split, or eval_split)")
        if pad_token_id is None:
            pad = getattr(self.processing_class, "pad_token_id", None)
            pad_token_id = pad if pad is not None else (self.separator_id or 0)
        self.pad_token_id = pad_token_id
        self.schedule = RemovalSchedule(stage=self.args.removal_start_stage)
        self.schedule.trainer = self
        self.add_callback(self.schedule)
        self._stage = None  # the stage of the last training step
        self._gate_batches = None
        self._cot_lengths = None
        self._cot_steps = None
        self._previous_batch_cot_gone = None  # set by each training batch (compute_loss)

    # ------------------------------------------------------------------ the schedule

    def steps_per_epoch(self) -> int:
        batches = math.ceil(len(self.train_dataset) / (self.args.train_batch_size * max(self.args.world_size, 1)))
        return max(batches // self.args.gradient_accumulation_steps, 1)

    def current_stage(self, step: int | None = None) -> int:
        if self.args.removal_schedule == "gated":
            return self.schedule.stage
        return schedule_stage(self.state.global_step if step is None else step, self.steps_per_epoch(), self.args)

    def scheduled_removal(self, step: int | None = None) -> int:
        return self.current_stage(step) * self.args.remove_per_stage

    def cot_lengths(self) -> np.ndarray:
        """Chain-of-thought length of every training example (read once)."""
        if self._cot_lengths is None:
            separators = np.asarray(self.train_dataset["explicit_separators"])
            self._cot_lengths = separators[:, 1] - separators[:, 0] - 1
        return self._cot_lengths

    def longest_cot(self) -> int:
        """Tokens in the longest chain of thought of the training set."""
        return int(self.cot_lengths().max())

    def by_steps(self) -> bool:
        return self.args.removal_granularity == "steps"

    def cot_steps(self) -> list[list[int]]:
        """Each training example's `explicit_step_ends` (read once; removal by whole steps)."""
        if self._cot_steps is None:
            if "explicit_step_ends" not in self.train_dataset.column_names:
                raise ValueError("removal_granularity: steps reads each example's explicit_step_ends: pass raw data (input/cot/answer), "
                                 "or tokenise with icot_hf.data.tokenize_dataset(..., step_ends=True)")
            self._cot_steps = self.train_dataset["explicit_step_ends"]
        return self._cot_steps

    def longest_cot_in_units(self) -> int:
        """The longest chain of thought in what a stage removes (tokens or steps): past it, all CoT is gone."""
        return max(len(ends) for ends in self.cot_steps()) if self.by_steps() else self.longest_cot()

    def fully_removed(self, stage: int) -> bool:
        return stage * self.args.remove_per_stage >= self.longest_cot_in_units()

    def tokens_removed(self, units: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per row, the CoT tokens that removing `units` (tokens, or whole steps) takes."""
        if not self.by_steps():
            return units
        if "explicit_step_ends" not in batch:
            raise ValueError("removal_granularity: steps needs explicit_step_ends in every batch: use icot_hf's collator "
                             "(icot_hf.data.ICoTCollator) on data tokenised with step_ends=True")
        return steps_to_tokens(units, batch["explicit_step_ends"])

    def median_tokens_removed(self, stage: int) -> int:
        """The CoT tokens `stage` removes from the median training example (all of a shorter one's)."""
        units = stage * self.args.remove_per_stage
        if not self.by_steps():
            return min(units, int(np.median(self.cot_lengths())))
        return int(np.median([ends[min(units, len(ends)) - 1] if units > 0 else 0 for ends in self.cot_steps()]))

    def removal_for_batch(self, batch_size: int) -> torch.Tensor:
        """Scheduled count plus smoothing offsets, seeded by (seed, global step): resumable."""
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
        offsets = removal_offsets(batch_size, self.args.removal_smoothing_lambda, self.args.max_removal_offset, generator)
        return self.scheduled_removal() + offsets

    def training_step(self, model, inputs, num_items_in_batch=None):
        stage = self.current_stage()
        if stage != self._stage:
            previous = self._stage if self._stage is not None else self._resumed_stage(stage)
            if previous != stage and self.args.reset_optimizer and self.optimizer is not None and not self._cot_was_gone(previous):
                getattr(self.optimizer, "optimizer", self.optimizer).state.clear()
            self._stage = stage
        return super().training_step(model, inputs, num_items_in_batch)

    def _cot_was_gone(self, previous_stage: int) -> bool:
        """Whether the chain of thought was already gone before this stage change, which ends
        the optimizer resets. As the released code decides it: every row of the previous
        training batch had its whole CoT removed (smoothing offsets included). After a resume
        (no previous batch seen), whether the previous stage removes the longest CoT."""
        if self._previous_batch_cot_gone is not None:
            return self._previous_batch_cot_gone
        return self.fully_removed(previous_stage)

    def _resumed_stage(self, stage: int) -> int:
        """After a resume, the stage of the step before: a stage that starts exactly at the
        resumed step still resets the optimizer, as it would have without the interruption."""
        if self.state.global_step == 0:
            return stage
        if self.args.removal_schedule == "gated":
            return stage - 1 if self.schedule.stage_start_step == self.state.global_step and stage > self.args.removal_start_stage else stage
        return self.current_stage(self.state.global_step - 1)

    # ------------------------------------------------------------------ the gate

    def gate_batches(self) -> list[dict[str, torch.Tensor]]:
        """The first gate_samples validation examples, collated once."""
        if self._gate_batches is None:
            subset = self.eval_dataset.select(range(min(self.args.gate_samples, len(self.eval_dataset))))
            size = self.args.per_device_eval_batch_size
            rows = [subset[i] for i in range(len(subset))]
            self._gate_batches = [self.data_collator(rows[i : i + size]) for i in range(0, len(rows), size)]
        return self._gate_batches

    @torch.no_grad()
    def gate_scores(self, stage: int) -> dict[str, float]:
        """Teacher-forced accuracy on the gate examples with `stage`'s removal, no smoothing."""
        model = self.model
        was_training = model.training
        model.eval()
        right_rows = right_tokens = tokens = rows = 0
        for batch in self.gate_batches():
            batch = {k: v.to(self.args.device) for k, v in batch.items()}
            removed = self.tokens_removed(torch.full((batch["explicit_input_ids"].shape[0],), stage * self.args.remove_per_stage), batch)
            ids, mask, labels, _ = remove_cot_tokens(batch["explicit_input_ids"], batch["explicit_attention_mask"], batch["explicit_separators"], removed, self.pad_token_id)
            logits = model(input_ids=ids, attention_mask=mask, **self.positions(ids, batch["explicit_separators"], removed)).logits
            right, total = teacher_forced_accuracy(logits, labels)
            right_rows += int((right == total).sum())
            right_tokens += int(right.sum())
            tokens += int(total.sum())
            rows += len(total)
        model.train(was_training)
        return {"sequence_accuracy": right_rows / max(rows, 1), "token_accuracy": right_tokens / max(tokens, 1)}

    def check_gate(self) -> None:
        """After an optimizer step: every gate_every_steps steps of a stage (and at its cap),
        measure the gate; advance when it passes or the cap is hit. A fully removed stage is
        the last one: it trains until max_steps."""
        schedule, step = self.schedule, self.state.global_step
        in_stage = step - schedule.stage_start_step
        if self.fully_removed(schedule.stage):
            return
        capped = in_stage >= self.args.max_stage_steps
        if in_stage % self.args.gate_every_steps != 0 and not capped:
            return
        scores = self.gate_scores(schedule.stage)
        value = scores[self.args.gate_metric]
        passed = value >= self.args.gate_threshold
        self.log({"eval_gate_" + k: v for k, v in scores.items()} | {"eval_gate_removal_stage": float(schedule.stage)})
        if passed or capped:
            removed = ({"removed_tokens": self.median_tokens_removed(schedule.stage), "removed_steps": schedule.stage * self.args.remove_per_stage}
                       if self.by_steps() else {"removed_tokens": schedule.stage * self.args.remove_per_stage})
            schedule.advances.append({"step": step, "from_stage": schedule.stage, **removed,
                                      "steps_in_stage": in_stage, "reason": "gate" if passed else "cap", self.args.gate_metric: value})
            if self.args.save_frontier_points:
                self._save_frontier_point(schedule.advances[-1] | {f"gate_{k}": v for k, v in scores.items()})
            logger.info("stepwise: stage %d -> %d at step %d after %d steps (%s %s = %.3f)", schedule.stage, schedule.stage + 1, step,
                        in_stage, "passed," if passed else "cap hit,", self.args.gate_metric, value)
            schedule.stage += 1
            schedule.stage_start_step = step

    # ------------------------------------------------------------------ frontier points

    def position_gap(self, stage: int) -> int:
        """The position gap a model trained through `stage` answers with: the tokens that stage
        removes from the median training example (rows of other lengths differ a little)."""
        return self.median_tokens_removed(stage)

    def frontier_index(self) -> list[dict]:
        path = os.path.join(self.args.output_dir, FRONTIER_DIR, FRONTIER_INDEX)
        if not os.path.isfile(path):
            return []
        with open(path) as f:
            return json.load(f)["points"]

    def _write_frontier_index(self, points: list[dict]) -> None:
        folder = os.path.join(self.args.output_dir, FRONTIER_DIR)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, FRONTIER_INDEX + ".tmp")
        with open(temporary, "w") as f:
            json.dump({"cot_tokens_total": self.longest_cot(), "points": points}, f, indent=2)
        os.replace(temporary, os.path.join(folder, FRONTIER_INDEX))

    def _save_frontier_point(self, advance: dict) -> None:
        """The model at the end of a removal stage, ready to answer: it writes the CoT that
        stage left and then the answer, its position gap in its config. Written to a temporary
        folder and renamed, then listed in the index, which keeps only points this run made
        before this step (a resumed run re-makes what came after its checkpoint; an older run's
        points in the folder are never listed)."""
        stage = advance["from_stage"]
        name = f"removed-{advance['removed_steps']:03d}-steps" if "removed_steps" in advance else f"removed-{advance['removed_tokens']:03d}"
        folder = os.path.join(self.args.output_dir, FRONTIER_DIR)
        target, temporary = os.path.join(folder, name), os.path.join(folder, name + ".tmp")
        model = self.accelerator.unwrap_model(self.model)
        before = getattr(model.config, "icot_position_gap", None)
        if self.args.keep_positions:
            model.config.icot_position_gap = self.position_gap(stage)
        self.save_model(temporary)
        if before is None:
            model.config.__dict__.pop("icot_position_gap", None)
        else:
            model.config.icot_position_gap = before
        if not self.is_world_process_zero():
            return
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(temporary, target)
        step = advance["step"]
        examples = step * self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        point = {"model_dir": name, "cot_tokens_removed": advance["removed_tokens"], "cot_tokens_total": self.longest_cot(),
                 "examples_seen": examples} | advance
        points = [p for p in self.frontier_index() if p["step"] < step and p["model_dir"] != name] + [point]
        self._write_frontier_index(sorted(points, key=lambda p: p["step"]))
        logger.info("stepwise: frontier point %s saved (step %d, %s)", name, step, advance["reason"])

    # ------------------------------------------------------------------ loss, evaluation, best model

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            removed = self.tokens_removed(self.removal_for_batch(inputs["explicit_input_ids"].shape[0]), inputs)
            separators = inputs["explicit_separators"]
            self._previous_batch_cot_gone = bool((removed.to(separators.device) >= separators[:, 1] - separators[:, 0] - 1).all())
        else:  # evaluate at the removal the last training step used, no smoothing
            removed = self.tokens_removed(torch.full((inputs["explicit_input_ids"].shape[0],), self.evaluated_stage() * self.args.remove_per_stage), inputs)
        ids, mask, labels, _ = remove_cot_tokens(inputs["explicit_input_ids"], inputs["explicit_attention_mask"], inputs["explicit_separators"], removed, self.pad_token_id)
        loss, outputs = self.causal_lm_loss(model, labels, input_ids=ids, attention_mask=mask, **self.positions(ids, inputs["explicit_separators"], removed))
        self.record(removed_tokens=float(removed.float().mean()))
        return (loss, outputs) if return_outputs else loss

    def positions(self, ids, separators, removed) -> dict:
        """`position_ids` for the model call under keep_positions, else nothing (the model's own)."""
        return {"position_ids": kept_position_ids(ids, separators, removed)} if self.args.keep_positions else {}

    def evaluated_stage(self) -> int:
        if self._stage is not None:
            return self._stage
        return self.current_stage(max(self.state.global_step - 1, 0))

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        stage = self.evaluated_stage()
        fully_removed = self.fully_removed(stage)
        self.log({f"{metric_key_prefix}_removal_stage": float(stage), f"{metric_key_prefix}_fully_removed": float(fully_removed)})
        score, loss = metrics.get(f"{metric_key_prefix}_exact_match"), metrics.get(f"{metric_key_prefix}_loss")
        if (self.args.keep_best_fully_removed and eval_dataset is None and fully_removed and score is not None
                and self.state.global_step > 0 and beats_best(score, loss, self.schedule.best_exact_match, self.schedule.best_loss)):
            self._save_best(score, loss)
        return metrics

    def _save_best(self, score: float, loss: float | None) -> None:
        """Write the new best fully-removed model beside the checkpoints, atomically."""
        self.schedule.best_exact_match, self.schedule.best_loss, self.schedule.best_step = score, loss, self.state.global_step
        target = os.path.join(self.args.output_dir, BEST_DIR)
        temporary = target + ".tmp"
        self.save_model(temporary)
        if self.is_world_process_zero():
            with open(os.path.join(temporary, "best.json"), "w") as f:
                json.dump({"step": self.state.global_step, "eval_exact_match": score, "eval_loss": loss}, f)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(temporary, target)
        logger.info("stepwise: best fully-removed model so far at step %d (exact match %.3f)", self.state.global_step, score)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        index = os.path.join(self.args.output_dir, FRONTIER_DIR, FRONTIER_INDEX)
        if (self.args.save_frontier_points or os.path.isfile(index)) and not resume_from_checkpoint and self.is_world_process_zero():
            self._write_frontier_index([])  # a fresh run lists only its own points (none, when it saves none)
        if self.args.removal_schedule == "gated" and self.args.max_steps > 0:
            stages = math.ceil(self.longest_cot_in_units() / self.args.remove_per_stage) - self.args.removal_start_stage + 1
            if stages * self.args.max_stage_steps >= self.args.max_steps:
                logger.warning("stepwise: %d stages x max_stage_steps %d >= max_steps %d: if stages hit their cap, the run ends before "
                               "the chain of thought is fully removed; lower max_stage_steps or raise max_steps",
                               stages, self.args.max_stage_steps, self.args.max_steps)
        result = super().train(resume_from_checkpoint, *args, **kwargs)
        self._restore_best()
        if self.args.keep_positions:
            self._record_position_gap()
        return result

    def _record_position_gap(self) -> None:
        """The final model skips the positions of the CoT it no longer writes: record how many
        (the median training CoT length, capped by what the last stage removed) for generation."""
        gap = self.position_gap(self.evaluated_stage())
        self.accelerator.unwrap_model(self.model).config.icot_position_gap = gap
        logger.info("stepwise: keep_positions model answers with a position gap of %d (saved as config.icot_position_gap)", gap)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A model that answers with a position gap (the final model and frontier points of a
        keep_positions run) is saved as an `ImplicitCoTStepwiseForCausalLM`, which applies the gap
        itself, so plain `generate` and `pipeline` answer as it was trained. Checkpoints (no gap
        recorded yet) and LoRA adapters are saved as the Trainer saves them."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        gap = getattr(getattr(model, "config", None), "icot_position_gap", 0) or 0
        if not gap or not isinstance(model, PreTrainedModel) or isinstance(model, ImplicitCoTStepwiseForCausalLM):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        wrapped = ImplicitCoTStepwiseForCausalLM.from_trained(model, gap, self.separator_id)
        wrapped.save_pretrained(output_dir, state_dict=None if state_dict is None else {f"lm.{k}": v for k, v in state_dict.items()})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _restore_best(self) -> None:
        """End with the best fully-removed evaluation's weights (the reference's choice of epoch)."""
        path = os.path.join(self.args.output_dir, BEST_DIR)
        if not (self.args.keep_best_fully_removed and self.schedule.best_step is not None and os.path.isdir(path)):
            return
        if self.schedule.best_step == self.state.global_step:
            return
        if self.is_deepspeed_enabled or self.args.use_peft:
            logger.warning("stepwise: the best fully-removed model is in %s; under DeepSpeed or LoRA it is not reloaded", path)
            return
        model = self.accelerator.unwrap_model(self.model)
        best = type(model).from_pretrained(path)
        model.load_state_dict(best.state_dict())
        logger.info("stepwise: restored the best fully-removed model (step %d, exact match %.3f)", self.schedule.best_step, self.schedule.best_exact_match)
        self.log({"best_fully_removed_step": float(self.schedule.best_step), "best_fully_removed_exact_match": self.schedule.best_exact_match})

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, "trainer_state.json")
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f).get("stateful_callbacks", {}).get(RemovalSchedule.__name__)
            if saved:
                self.schedule.restore(saved[0] if isinstance(saved, list) else saved)

    def answer_batch(self, model, batch):
        prompts, mask = implicit_prompts(batch, self.separator_id)
        pad = self.processing_class.pad_token_id
        gaps = 0
        if self.args.keep_positions:  # each row's separator sits after the CoT span this stage removes
            separators = batch["explicit_separators"]
            units = torch.full((separators.shape[0],), self.evaluated_stage() * self.args.remove_per_stage, device=separators.device)
            gaps = torch.minimum(separators[:, 1] - separators[:, 0] - 1, self.tokens_removed(units, batch).to(separators.device))
        return generate_explicit(model, prompts, mask, self.separator_id, self.separator_id if pad is None else pad,
                                 self.args.max_new_tokens, position_gap=gaps)["answer"]

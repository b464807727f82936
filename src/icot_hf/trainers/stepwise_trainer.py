"""Stepwise internalization: remove CoT tokens from the front of the chain of thought as
training proceeds. The model stays a plain causal LM; inference is `generate` on `input S`.

Schedule: at stage s (removal_start_stage + epoch, or + optimizer step // interval), `s * remove_per_stage`
leading CoT tokens are removed from every example, plus a per-example smoothing offset
o in [0, max_removal_offset] with P(o) proportional to exp(-lambda * o). Removal happens
on the collated batch inside the training step (vectorised), and both the stage and the
offsets are functions of the trainer's global step, so a run resumed from a checkpoint
continues at the same schedule position with the same draws.
"""

from __future__ import annotations

import math

import torch

from ..teacher import cut_after_separators, generation_kwargs, new_token_budget
from .base import ICoTTrainer, token_accuracy
from .stepwise_config import StepwiseInternalizationConfig
from .teacher_trainer import implicit_prompts


def schedule_stage(global_step: int, steps_per_epoch: int, args: StepwiseInternalizationConfig) -> int:
    if args.removal_unit == "steps":
        return args.removal_start_stage + global_step // args.removal_interval_steps
    return args.removal_start_stage + global_step // max(steps_per_epoch, 1)


def removal_offsets(count: int, lam: float, max_offset: int, generator: torch.Generator) -> torch.Tensor:
    """Smoothing offsets o in [0, max_offset] with P(o) ~ exp(-lam * o) (all zero when lam <= 0)."""
    if lam <= 0 or max_offset == 0:
        return torch.zeros(count, dtype=torch.long)
    weights = torch.exp(-lam * torch.arange(max_offset + 1, dtype=torch.double))
    return torch.multinomial(weights / weights.sum(), count, replacement=True, generator=generator)


def remove_cot_tokens(input_ids, attention_mask, separators, removed, pad_token_id: int):
    """Drop `removed[b]` tokens right after the first separator of each right-padded row
    (capped at the row's CoT length), shifting the rest left; one gather, no row loop.
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
    return ids, keep.long(), labels, new_separators


class StepwiseInternalizationTrainer(ICoTTrainer):
    """Trains a plain causal LM while internalising its chain of thought step by step."""

    def __init__(self, *args, separator_id: int | None = None, pad_token_id: int = 0, **kwargs):
        if kwargs.get("args") is not None and not isinstance(kwargs["args"], StepwiseInternalizationConfig):
            raise TypeError("StepwiseInternalizationTrainer expects args=StepwiseInternalizationConfig(...)")
        super().__init__(*args, **kwargs)
        self.separator_id = separator_id
        self.pad_token_id = pad_token_id
        self._stage = None

    def steps_per_epoch(self) -> int:
        batches = math.ceil(len(self.train_dataset) / (self.args.train_batch_size * max(self.args.world_size, 1)))
        return max(batches // self.args.gradient_accumulation_steps, 1)

    def current_stage(self, step: int | None = None) -> int:
        return schedule_stage(self.state.global_step if step is None else step, self.steps_per_epoch(), self.args)

    def scheduled_removal(self, step: int | None = None) -> int:
        return self.current_stage(step) * self.args.remove_per_stage

    def removal_for_batch(self, batch_size: int) -> torch.Tensor:
        """Scheduled count plus smoothing offsets, seeded by (seed, global step): resumable."""
        generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + self.state.global_step)
        offsets = removal_offsets(batch_size, self.args.removal_smoothing_lambda, self.args.max_removal_offset, generator)
        return self.scheduled_removal() + offsets

    def training_step(self, model, inputs, num_items_in_batch=None):
        stage = self.current_stage()
        if stage != self._stage:
            if self._stage is not None and self.args.reset_optimizer and self.optimizer is not None:
                getattr(self.optimizer, "optimizer", self.optimizer).state.clear()
            self._stage = stage
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            removed = self.removal_for_batch(inputs["explicit_input_ids"].shape[0])
        else:  # evaluate at the removal of the last trained step (evaluation runs after it), no smoothing
            removed = torch.full((inputs["explicit_input_ids"].shape[0],), self.scheduled_removal(max(self.state.global_step - 1, 0)))
        ids, mask, labels, _ = remove_cot_tokens(inputs["explicit_input_ids"], inputs["explicit_attention_mask"], inputs["explicit_separators"], removed, self.pad_token_id)
        outputs = model(input_ids=ids, attention_mask=mask, labels=labels)
        self.record(token_accuracy=token_accuracy(outputs.logits.detach(), labels), removed_tokens=float(removed.float().mean()))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def answer_batch(self, model, batch):
        prompts, mask = implicit_prompts(batch, self.separator_id)
        pad = self.processing_class.pad_token_id
        generated = model.generate(input_ids=prompts, attention_mask=mask,
                                   **generation_kwargs(self.separator_id, self.separator_id if pad is None else pad, prompts.shape[1], 2, new_token_budget(model, prompts.shape[1], self.args.max_new_tokens)))
        return cut_after_separators(generated[:, prompts.shape[1] :], self.separator_id, 2)

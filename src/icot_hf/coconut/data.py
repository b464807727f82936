"""Coconut's data: reasoning steps, the curriculum's sequences and the collator.

Steps. Coconut replaces whole reasoning steps, so a CoT must be cut into steps:
- GSM8K (the ICoT-format CoT `<<48/2=24>> <<48+24=72>>`): each `<<...>>` is one step;
- k-by-k multiplication (`8 0 7 6 + 0 4 4 2 0 ( 8 4 1 9 0 ) + ...`): each partial product with its
  running sum, i.e. the CoT split at ` + `.
`split_steps` picks by content (`<<` present or not); data already in Coconut's JSON form
(`question`, `steps`, `answer`) keeps its steps.

Sequences, as the released dataset.py writes them (stage k, c latents per step):

    question\\n <|start-latent|> <|latent|> x (k * c) <|end-latent|> step_{k+1}\\n ... step_n\\n ### answer <eos>

with labels only on what follows the end marker. Past `max_latent_stage` every step goes and the
latents stop growing (`pad_latent_to_max` keeps `max_latent_stage * c` of them even where a problem
has fewer steps). With probability `uniform_prob` an example takes a random stage in 0..its step
count instead. The collator left-pads rows so their first latent shares a column (the latent
forward then runs one pass per latent for the whole batch) and gives position ids that skip that
padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import split_steps  # the steps Coconut replaces (one definition for every method)


@dataclass
class CoconutFormat:
    """The text around each part (the released defaults: GSM8K with GPT-2's tokenizer)."""

    question_suffix: str = "\n"
    step_suffix: str = "\n"
    answer_prefix: str = "### "


def tokenize_example(example: dict, tokenizer, text_format: CoconutFormat) -> dict:
    """One raw example (`input`/`cot`/`answer` or Coconut's `question`/`steps`/`answer`) as the
    released `get_dataset` tokenises it."""
    question = example["question"] if "question" in example else example["input"]
    steps = example["steps"] if "steps" in example else split_steps(example["cot"])
    return {
        "question_ids": tokenizer.encode(question + text_format.question_suffix, add_special_tokens=True),
        "step_ids": [tokenizer.encode(step + text_format.step_suffix, add_special_tokens=False) for step in steps],
        "answer_ids": tokenizer.encode(text_format.answer_prefix + example["answer"], add_special_tokens=False) + [tokenizer.eos_token_id],
    }


@dataclass
class CurriculumSettings:
    c_thought: int = 1
    max_latent_stage: int = 3
    pad_latent_to_max: bool = True
    uniform_prob: float = 0.0


def latent_steps(scheduled_stage: int, n_steps: int, settings: CurriculumSettings) -> tuple[int, int]:
    """(steps removed, steps replaced by latents) for a problem of `n_steps` steps at a stage."""
    if scheduled_stage > settings.max_latent_stage:
        replaced = settings.max_latent_stage if settings.pad_latent_to_max else min(n_steps, settings.max_latent_stage)
        return n_steps, replaced
    return scheduled_stage, scheduled_stage


def stage_example(example: dict, stage: int, settings: CurriculumSettings, ids: dict[str, int]) -> dict:
    """The training sequence of one tokenised example at `stage` (its labels and positions)."""
    skipped, replaced = latent_steps(stage, len(example["step_ids"]), settings)
    latents = replaced * settings.c_thought
    prefix = list(example["question_ids"]) + [ids["start"]] + [ids["latent"]] * latents + [ids["end"]]
    rest = [token for step in example["step_ids"][skipped:] for token in step] + list(example["answer_ids"])
    tokens = prefix + rest
    return {"input_ids": tokens, "labels": [-100] * len(prefix) + rest, "attention_mask": [1] * len(tokens)}


def question_prompt(example: dict, stage: int, settings: CurriculumSettings, ids: dict[str, int]) -> list[int]:
    """The prompt the released evaluation generates from: the question and the stage's thought block."""
    n_steps = settings.max_latent_stage if settings.pad_latent_to_max else min(settings.max_latent_stage, len(example["step_ids"]))
    latents = min(n_steps, stage) * settings.c_thought
    return list(example["question_ids"]) + [ids["start"]] + [ids["latent"]] * latents + [ids["end"]]


class CurriculumDataset(torch.utils.data.Dataset):
    """The tokenised examples at the curriculum's current stage: `set_curriculum_epoch` picks the stage (and,
    with `uniform_prob`, each example's random stage, drawn from (seed, epoch) so every process and
    a resumed run draw the same)."""

    def __init__(self, examples, settings: CurriculumSettings, ids: dict[str, int], epochs_per_stage: int, start_epoch: int = 0,
                 seed: int = 0):
        self.examples, self.settings, self.ids = examples, settings, ids
        self.epochs_per_stage, self.start_epoch, self.seed = epochs_per_stage, start_epoch, seed
        self.n_steps = np.array([len(steps) for steps in examples["step_ids"]])
        self.set_curriculum_epoch(0)

    def stage_of(self, epoch: int) -> int:
        return (self.start_epoch + epoch) // self.epochs_per_stage

    def set_curriculum_epoch(self, epoch: int) -> None:
        # Not `set_epoch`: the Trainer's data loaders call a dataset's `set_epoch` themselves (the evaluation loader
        # with 0), which moved the evaluation examples back to stage 0 before every evaluation.
        self.epoch, self.stage = epoch, self.stage_of(epoch)
        self.stages = np.full(len(self.n_steps), self.stage)
        if self.settings.uniform_prob > 0:
            rng = np.random.default_rng([self.seed, self.start_epoch + epoch])
            mixed = rng.random(len(self.n_steps)) < self.settings.uniform_prob
            random_stage = np.floor(rng.random(len(self.n_steps)) * (self.n_steps + 1)).astype(int)
            self.stages = np.where(mixed, random_stage, self.stages)

    def __len__(self) -> int:
        return len(self.n_steps)

    def __getitem__(self, index: int) -> dict:
        return stage_example(self.examples[int(index)], int(self.stages[index]), self.settings, self.ids)


@dataclass
class CoconutCollator:
    """Pads a batch as the released collator does: rows with thoughts are left-padded so their
    first latent shares a column, then every row is right-padded; position ids count from each
    row's first real token (0 on padding), labels are -100 on padding."""

    pad_token_id: int
    latent_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        firsts = [f["input_ids"].index(self.latent_token_id) if self.latent_token_id in f["input_ids"] else None for f in features]
        align = max((i for i in firsts if i is not None), default=0)
        lefts = [align - i if i is not None else 0 for i in firsts]
        width = max(left + len(f["input_ids"]) for left, f in zip(lefts, features))
        batch = {"input_ids": [], "attention_mask": [], "position_ids": [], "labels": []}
        for left, f in zip(lefts, features):
            n = len(f["input_ids"])
            right = width - left - n
            batch["input_ids"].append([self.pad_token_id] * left + list(f["input_ids"]) + [self.pad_token_id] * right)
            batch["attention_mask"].append([0] * left + [1] * n + [0] * right)
            batch["position_ids"].append([0] * left + list(range(n)) + [0] * right)
            batch["labels"].append([-100] * left + list(f.get("labels", [-100] * n)) + [-100] * right)
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}

"""Explicit-CoT teacher (and no-CoT baseline): a plain causal LM trained with next-token loss
on `input S cot S answer S` (or `input S answer S` with view="implicit")."""

from __future__ import annotations

from ..generation import cut_after_separators, generation_kwargs, new_token_budget
from .base import ICoTTrainer
from .teacher_config import TeacherConfig


class TeacherTrainer(ICoTTrainer):
    """Loss on the chain of thought and the answer (labels masked up to the first separator);
    with `view="implicit"` the no-CoT baseline (loss on the answer only).

    Args:
        model: a causal LM, or its Hub id or folder (loaded with `model_init_kwargs`).
        args: a `TeacherConfig`; None for its defaults, written to `<model name>-teacher`.
        train_dataset, eval_dataset: raw examples (`input`, `cot`, `answer` columns) or
            tokenised views (`icot_hf.data.tokenize_dataset`).
        processing_class: the tokenizer (default: the one saved with a named model).
        separator_id: the id of the separator `S` (default: the tokenizer's eos).
        peft_config: a peft `LoraConfig`, to train adapters only.

    Example:
        >>> trainer = TeacherTrainer(model="gpt2", args=TeacherConfig(output_dir="teacher"),
        ...                          train_dataset=load_icot_dataset("data/4x4_mult", split="train"))
        >>> trainer.train()
    """

    config_class = TeacherConfig
    stage_name = "teacher"

    def views(self, training_args):
        return ("explicit", "implicit") if training_args.view == "explicit" else ("implicit",)

    @property
    def card_stage(self) -> str:
        return "teacher" if self.args.view == "explicit" else "no_cot"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        view = self.args.view
        loss, outputs = self.causal_lm_loss(model, inputs[f"{view}_labels"], input_ids=inputs[f"{view}_input_ids"],
                                            attention_mask=inputs[f"{view}_attention_mask"])
        return (loss, outputs) if return_outputs else loss

    def answer_batch(self, model, batch):
        prompts, mask = implicit_prompts(batch, self.separator_id)
        separators = 2 if self.args.view == "explicit" else 1
        pad = self.processing_class.pad_token_id
        generated = model.generate(
            input_ids=prompts, attention_mask=mask,
            **generation_kwargs(self.separator_id, self.separator_id if pad is None else pad, prompts.shape[1], separators, new_token_budget(model, prompts.shape[1], self.args.max_new_tokens)),
        )
        return cut_after_separators(generated[:, prompts.shape[1] :], self.separator_id, separators)


def implicit_prompts(batch, separator_id: int):
    """Left-padded `input S` prompts cut from a right-padded collated batch (vectorised)."""
    import torch

    ids = batch["implicit_input_ids"] if "implicit_input_ids" in batch else batch["explicit_input_ids"]
    separators = batch["implicit_separators"] if "implicit_separators" in batch else batch["explicit_separators"]
    lengths = separators[:, 0] + 1
    width = int(lengths.max())
    shift = width - lengths  # left padding per row
    columns = torch.arange(width, device=ids.device).unsqueeze(0) - shift.unsqueeze(1)
    mask = (columns >= 0).long()
    gathered = ids.gather(1, columns.clamp(min=0))
    prompts = torch.where(mask.bool(), gathered, torch.full_like(gathered, separator_id))
    return prompts, mask

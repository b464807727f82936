"""Generation from the `input S` prompt that every icot_hf model answers: stop each row at its own
end of answer (a count of separators), keep prompt + answer inside the model's context, and
the batched explicit-CoT and no-CoT generation the teacher, the baseline and evaluation use.
"""

from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

class SeparatorCountCriteria(StoppingCriteria):
    """Stop each row once it has generated `count` separators (per-row, so a batch
    finishes rows independently and `generate` pads the finished ones)."""

    def __init__(self, separator_id: int, prompt_length: int, count: int):
        self.separator_id = separator_id
        self.prompt_length = prompt_length
        self.count = count

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length :]
        return (generated == self.separator_id).sum(dim=1) >= self.count


def cut_after_separators(generated: torch.Tensor, separator_id: int, count: int) -> list[list[int]]:
    """Per row: the tokens after the (count-1)-th generated separator, up to the count-th."""
    results = []
    for row in generated.tolist():
        seen, piece = 0, []
        for token in row:
            if token == separator_id:
                seen += 1
                if seen == count:
                    break
                continue
            if seen == count - 1:
                piece.append(token)
        results.append(piece)
    return results


def new_token_budget(model, prompt_length: int, max_new_tokens: int) -> int:
    """`max_new_tokens`, capped so prompt + generation fits the model's context (a GPT-2
    asked for more crashes with an index error in its position embedding)."""
    from .data import model_context_length

    context = model_context_length(getattr(model, "config", None))
    if context is None:
        return max_new_tokens
    if prompt_length >= context:
        raise ValueError(f"prompts of {prompt_length} tokens fill the model's {context}-token context: nothing can be generated; "
                         "shorten the inputs or use a model with a longer context")
    return min(max_new_tokens, context - prompt_length)


def generation_kwargs(separator_id: int, pad_token_id: int, prompt_length: int, separators_to_generate: int, max_new_tokens: int, num_beams: int = 1) -> dict:
    """Keyword arguments for `generate` that stop each row at its own end of answer
    (pass `max_new_tokens` through `new_token_budget` first)."""
    return dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=num_beams,
        pad_token_id=pad_token_id,
        eos_token_id=separator_id if separators_to_generate == 1 else None,
        stopping_criteria=StoppingCriteriaList([SeparatorCountCriteria(separator_id, prompt_length, separators_to_generate)]),
        use_cache=True,
    )


def prompt_position_ids(attention_mask: torch.Tensor, position_gap) -> torch.Tensor:
    """Position ids of left-padded `input S` prompts whose separator sits `position_gap` places
    later than its index (a model trained with ICoT-SI's keep_positions: the removed chain of
    thought's positions stay skipped); generation continues from the separator's position."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    gap = torch.as_tensor(position_gap, device=positions.device).reshape(-1)
    positions[:, -1] += gap if gap.numel() > 1 else gap.item()
    return positions


@torch.no_grad()
def generate_explicit(model, input_ids, attention_mask, separator_id: int, pad_token_id: int, max_new_tokens: int = 256, num_beams: int = 1,
                      position_gap=0) -> dict[str, list[list[int]]]:
    """Batched explicit-CoT generation from left-padded `input S` prompts.

    Each row stops after its answer (the second generated separator, the third in the
    sequence). Returns the token ids of each row's chain of thought and answer.
    `position_gap` (an int or one per row) shifts the separator's position id and so
    everything generated after it (see `prompt_position_ids`).
    """
    prompt_length = input_ids.shape[1]
    extra = {}
    largest_gap = int(torch.as_tensor(position_gap).max())
    if largest_gap:
        extra["position_ids"] = prompt_position_ids(attention_mask, position_gap)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **extra,
        **generation_kwargs(separator_id, pad_token_id, prompt_length, 2, new_token_budget(model, prompt_length + largest_gap, max_new_tokens), num_beams),
    )
    generated = output[:, prompt_length:]
    return {
        "cot": cut_after_separators(generated, separator_id, 1),
        "answer": cut_after_separators(generated, separator_id, 2),
    }


@torch.no_grad()
def generate_direct(model, input_ids, attention_mask, separator_id: int, pad_token_id: int, max_new_tokens: int = 64, num_beams: int = 1) -> list[list[int]]:
    """Batched answer generation with no chain of thought (the no-CoT baseline)."""
    prompt_length = input_ids.shape[1]
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **generation_kwargs(separator_id, pad_token_id, prompt_length, 1, new_token_budget(model, prompt_length, max_new_tokens), num_beams),
    )
    return cut_after_separators(output[:, prompt_length:], separator_id, 1)

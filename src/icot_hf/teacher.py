"""The teacher's side of ICoT-KD: which hidden states to distil, and explicit-CoT generation.

The teacher is any causal LM trained on the explicit view `input S cot S answer S`.
For a model with L layers we take, for each layer l, the hidden state *entering* layer
l (`output_hidden_states[l]`) at one position of the chain of thought. The default
"diagonal" pattern walks from the first separator s1 to the second s2 as the layers go
up: t_l = round(s1 + l * delta), clamped to s2, with delta = (s2 - s1) / (L - 1)
("dynamic") or a fixed integer. Each state is normalised by a LayerNorm with no
weights (eps 1e-5), as in the paper's released code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria, StoppingCriteriaList

PATTERNS = ("diagonal", "first_column", "last_column", "top_row", "bottom_row")


def parse_delta(delta: str | int | float) -> str | int:
    """'dynamic' or a positive integer (given as int or numeric string)."""
    if isinstance(delta, str) and delta.strip().lower() == "dynamic":
        return "dynamic"
    try:
        value = int(delta)
    except (TypeError, ValueError):
        raise ValueError(f"delta must be 'dynamic' or a positive integer, got {delta!r}") from None
    if value < 1 or value != float(delta):
        raise ValueError(f"delta must be 'dynamic' or a positive integer, got {delta!r}")
    return value


def state_grid_positions(
    first_separator: torch.Tensor,
    second_separator: torch.Tensor,
    num_layers: int,
    delta: str | int = "dynamic",
    pattern: str = "diagonal",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer index, position) of the state taken for each row and layer, both (B, L).

    diagonal      layer l at t_l (see module docstring)
    first_column  layer l at s1            last_column  layer l at s2
    bottom_row    layer 0 at t_l           top_row      layer L-1 at t_l
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    delta = parse_delta(delta)
    s1 = first_separator.long().unsqueeze(1)
    s2 = second_separator.long().unsqueeze(1)
    layers = torch.arange(num_layers, device=s1.device).unsqueeze(0)
    if delta == "dynamic":
        step = (s2 - s1).double() / max(num_layers - 1, 1)
    else:
        step = torch.full_like(s1, delta, dtype=torch.double)
    diagonal = torch.round(s1.double() + layers.double() * step).long()
    diagonal = torch.minimum(diagonal, s2)
    batch_layers = layers.expand(s1.shape[0], -1)
    if pattern == "diagonal":
        return batch_layers, diagonal
    if pattern == "first_column":
        return batch_layers, s1.expand(-1, num_layers)
    if pattern == "last_column":
        return batch_layers, s2.expand(-1, num_layers)
    if pattern == "bottom_row":
        return torch.zeros_like(batch_layers), diagonal
    return torch.full_like(batch_layers, num_layers - 1), diagonal


def normalize_states(states: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine weights, eps 1e-5, over the hidden dimension."""
    return F.layer_norm(states, states.shape[-1:], eps=1e-5)


class _StatesRead(Exception):
    """Raised by the last needed layer's pre-hook: the rest of the forward is not needed."""


def _runs_under_deepspeed(model) -> bool:
    return "deepspeed" in type(model).__module__


def read_layer_inputs(model, input_ids, attention_mask, layer_index: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """(B, L, H): the input of decoder layer `layer_index[b, j]` at `position[b, j]`.

    Pre-hooks on the decoder blocks gather those vectors as the forward reaches each block,
    and the forward stops at the input of the last block needed: the later blocks, the final
    norm and the output layer (whose logits nobody reads) never run. For any decoder-only
    causal LM whose blocks `get_decoder_layers` finds. (Under DeepSpeed, whose ZeRO-3 hooks
    expect whole forwards, the caller uses the full forward instead.)
    """
    from .hooks import get_decoder_layers

    layers = get_decoder_layers(model)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    columns = {int(l): (layer_index[0] == l).nonzero().flatten() for l in layer_index[0].unique()}
    last = max(columns)
    states = [None] * layer_index.shape[1]

    def hook_for(layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            for j in columns[layer].tolist():
                states[j] = hidden[rows, position[:, j]]
            if layer == last:
                raise _StatesRead
        return hook

    handles = [layers[l].register_forward_pre_hook(hook_for(l), with_kwargs=True) for l in columns]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StatesRead:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(states, dim=1)


@torch.no_grad()
def extract_teacher_states(
    teacher,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    separators: torch.Tensor,
    delta: str | int = "dynamic",
    pattern: str = "diagonal",
    num_layers: int | None = None,
) -> torch.Tensor:
    """Run the frozen teacher on explicit-view tokens and gather (B, L, H) normalised states.

    `separators` holds each row's separator positions (B, >=2) in this padded batch.
    Only the blocks up to the last layer read run (`read_layer_inputs`); no loop over rows.
    """
    hidden = None
    under_deepspeed = _runs_under_deepspeed(teacher)  # a DeepSpeed engine's .config is its own dict
    if num_layers is None and not under_deepspeed:
        num_layers = getattr(getattr(teacher, "config", None), "num_hidden_layers", None)
    if under_deepspeed or num_layers is None:  # the whole forward, every hidden state
        hidden = teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False).hidden_states
        num_layers = num_layers or (len(hidden) - 1)
    layer_index, position = state_grid_positions(separators[:, 0], separators[:, 1], num_layers, delta, pattern)
    if hidden is None:
        states = read_layer_inputs(teacher, input_ids, attention_mask, layer_index, position)
    else:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(position)
        states = torch.stack(hidden[:num_layers])[layer_index, rows, position]  # entry l of hidden is the input of layer l
    return normalize_states(states.float())


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

"""The teacher's hidden states that ICoT-KD distils.

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
    from ..hooks import get_decoder_layers

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

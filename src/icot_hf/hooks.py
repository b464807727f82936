"""Hidden-state substitution on any decoder-only causal LM, with forward pre-hooks.

ICoT-KD edits one vector per row (the hidden state at the first separator) at the
input of every decoder layer. Rather than fork each architecture's forward, we find
the model's list of decoder blocks and register a pre-hook on each; the hook sees
the block's hidden states as `args[0]` and returns them edited. Substitution is one
`index_put` over (row, position) pairs, or one slice assignment when all rows share the
position: no Python loop over rows. In training it copies (autograd); in inference it
writes in place past layer 0 (see `can_edit_in_place`). It only fires on
the pass whose sequence length is the one it was armed for (training forward or the
prefill of `generate`), never on the length-1 decode steps that follow.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# Attribute paths of the decoder-block list, most common first.
LAYER_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Phi-3, Gemma, SmolLM, OLMo
    "transformer.h",  # GPT-2, GPT-J, GPT-Neo, Falcon, BLOOM, CodeGen
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.layers",
    "transformer.blocks",  # MPT
    "model.language_model.layers",
    "layers",
    "h",
)


def _unwrap(model: nn.Module) -> nn.Module:
    """Step through DDP/DeepSpeed (`.module`) and peft (`get_base_model()`) wrappers."""
    while True:
        if callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def get_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, in order; a clear error for an unknown layout."""
    root = _unwrap(model)
    for path in LAYER_PATHS:
        node = root
        for name in path.split("."):
            node = getattr(node, name, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList) and len(node) > 0:
            return node
    raise ValueError(
        f"icot_hf cannot find the decoder layers of {type(root).__name__}: none of {', '.join(LAYER_PATHS)} "
        "is a ModuleList. Add its path to icot_hf.hooks.LAYER_PATHS."
    )


@dataclass(frozen=True)
class RowIndex:
    """Where each row's one edited vector sits in (B, T, H) hidden states: hidden[b, positions[b]].

    `column` is set when every row uses the same position, as left-padded prompts do in
    `generate`: a plain slice then replaces advanced indexing, about half the cost per layer.
    """

    rows: torch.Tensor
    positions: torch.Tensor
    column: int | None

    @classmethod
    def build(cls, positions: torch.Tensor, batch_size: int, device: torch.device) -> "RowIndex":
        """Positions are repeated to a batch `generate` expanded (beam search, num_return_sequences)."""
        positions = positions.to(device)
        if positions.shape[0] != batch_size:
            positions = positions.repeat_interleave(batch_size // positions.shape[0])
        column = int(positions[0]) if bool((positions == positions[0]).all()) else None
        return cls(torch.arange(batch_size, device=device), positions, column)

    def gather(self, hidden: torch.Tensor, copy: bool = True) -> torch.Tensor:
        """hidden[b, positions[b]] for every row (B, H): a copy, or with `copy=False` a view
        where one column serves every row (for readers done before the column is edited)."""
        if self.column is not None:
            column = hidden[:, self.column]
            return column.clone() if copy else column
        return hidden[self.rows, self.positions]


def substitute_rows(hidden: torch.Tensor, index: RowIndex, vectors: torch.Tensor, layer: int) -> torch.Tensor:
    """Layer `layer`'s input `hidden` (B, T, H) with hidden[b, positions[b]] = vectors[b]: a
    differentiable copy, or written into `hidden` itself where `can_edit_in_place(layer)`."""
    vectors = vectors.to(hidden.dtype)
    if not can_edit_in_place(layer):
        return hidden.index_put((index.rows, index.positions), vectors)
    if index.column is not None:
        hidden[:, index.column] = vectors
        return hidden
    return hidden.index_put_((index.rows, index.positions), vectors)


def can_edit_in_place(layer: int) -> bool:
    """Whether layer `layer`'s input may be edited in place: in inference (no autograd graph
    to keep right) and past layer 0, whose input is the previous layer's fresh output. Layer
    0's input can be a caller's `inputs_embeds`, so it is always copied.

    Why bother: profiled on the 8 x 128 4x4 model at batch 64 (2 threads), allocating and
    filling a fresh (B, T, H) copy per layer was most of the hooks' cost; with the row index
    reuse below, in-place edits took the time inside the hooks from 3.9% of the prefill to
    about 2% (README, Benchmarks).
    With `output_hidden_states=True`, the recorded input of layer l >= 1 then shows the
    substituted state, as the layer saw it.
    """
    return layer > 0 and not torch.is_grad_enabled()


# A layer edit takes (layer index, hidden states (B, T, H), row index) and returns the
# edited hidden states.
LayerEdit = Callable[[int, torch.Tensor, RowIndex], torch.Tensor]


@contextmanager
def edit_layer_inputs(model: nn.Module, positions: torch.Tensor, edit: LayerEdit, sequence_length: int):
    """Within the block, run `edit` at the input of every decoder layer of `model` on
    passes of length `sequence_length` (the armed pass); other passes are untouched.

    The row index is built once per batch size and reused by every layer: in a 64-row
    prefill of an 8 x 128 model, rebuilding it per layer (an `arange`, a device move, a
    repeat) cost about as much as the substitution itself.
    """
    layers = get_decoder_layers(model)
    indices: dict[int, RowIndex] = {}
    handles = []

    def make_hook(layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] != sequence_length:
                return None
            index = indices.get(hidden.shape[0])
            if index is None:
                index = indices[hidden.shape[0]] = RowIndex.build(positions, hidden.shape[0], hidden.device)
            edited = edit(layer, hidden, index)
            if args:
                return (edited, *args[1:]), kwargs
            return args, dict(kwargs, hidden_states=edited)

        return hook

    try:
        for layer_index, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(make_hook(layer_index), with_kwargs=True))
        yield layers
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def substitute_states(model: nn.Module, positions: torch.Tensor, vectors: torch.Tensor, sequence_length: int):
    """Replace hidden[b, positions[b]] at the input of layer l with vectors[b, l] (B, L, H)."""
    num_layers = len(get_decoder_layers(model))
    if vectors.shape[1] != num_layers:
        raise ValueError(f"got states for {vectors.shape[1]} layers but the model has {num_layers} decoder layers")
    by_layer = vectors.transpose(0, 1)  # (L, B, H): layer l's vectors in one slice, no copy

    def edit(layer, hidden, index):
        layer_vectors = by_layer[layer]
        if layer_vectors.shape[0] != hidden.shape[0]:
            layer_vectors = layer_vectors.repeat_interleave(hidden.shape[0] // layer_vectors.shape[0], dim=0)
        return substitute_rows(hidden, index, layer_vectors, layer)

    with edit_layer_inputs(model, positions, edit, sequence_length):
        yield

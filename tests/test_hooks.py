"""Hidden-state substitution: exact against a by-hand reference, prefill only, any padding."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from icot_hf.hooks import get_decoder_layers, substitute_states


def reference_logits(model, input_ids, attention_mask, positions, vectors):
    """Same substitution by a different route: wrap each layer's forward, copy row by row."""
    layers = get_decoder_layers(model)
    originals = [layer.forward for layer in layers]
    try:
        for index, layer in enumerate(layers):
            def patched(hidden_states, *args, _index=index, _forward=originals[index], **kwargs):
                hidden_states = hidden_states.clone()
                for row in range(hidden_states.shape[0]):
                    hidden_states[row, positions[row]] = vectors[row, _index]
                return _forward(hidden_states, *args, **kwargs)
            layer.forward = patched
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    finally:
        for layer, forward in zip(layers, originals):
            layer.forward = forward


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_substitution_matches_reference(tokenizer, kind, side):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer, layers=3)).eval()
    lengths = [9, 6, 11]
    width = max(lengths)
    input_ids = torch.randint(3, len(tokenizer), (3, width))
    attention_mask = torch.zeros(3, width, dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "right":
            attention_mask[row, :n] = 1
        else:
            attention_mask[row, width - n :] = 1
    offsets = [0 if side == "right" else width - n for n in lengths]
    positions = torch.tensor([offsets[0] + 4, offsets[1] + 2, offsets[2] + 7])  # different separator per row
    vectors = torch.randn(3, 3, 32)
    expected = reference_logits(model, input_ids, attention_mask, positions, vectors)
    with substitute_states(model, positions, vectors, width):
        got = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    mask = attention_mask.bool()
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-5)
    plain = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    assert not torch.allclose(plain[mask], got[mask])  # the substitution did something
    assert not get_decoder_layers(model)[0]._forward_pre_hooks  # hooks removed afterwards


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("separators", [[4, 6], [6, 6]])  # per-row positions; one shared column (the slice path)
def test_inference_in_place_path_matches_copy_and_spares_callers_tensors(tokenizer, kind, separators):
    """Without autograd, layers >= 1 are edited in place: same logits as the copying path, and
    a caller's inputs_embeds (layer 0's input for Llama) is left untouched."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer, layers=3)).eval()
    input_ids = torch.randint(3, len(tokenizer), (2, 7))
    positions, vectors = torch.tensor(separators), 3 * torch.randn(2, 3, 32)
    embeds = model.get_input_embeddings()(input_ids).detach()
    before = embeds.clone()
    with substitute_states(model, positions, vectors, 7):
        copied = model(inputs_embeds=embeds).logits  # autograd on: every layer copies
        with torch.no_grad():
            in_place = model(inputs_embeds=embeds).logits
    torch.testing.assert_close(in_place, copied.detach(), atol=1e-6, rtol=1e-6)
    assert torch.equal(embeds, before)
    plain = model(inputs_embeds=embeds).logits
    assert not torch.allclose(plain, copied)  # the substitution did something


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_no_substitution_during_decode_steps(tokenizer, kind):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, tokenizer, layers=2)).eval()
    prompt = torch.randint(3, len(tokenizer), (2, 6))
    positions = torch.tensor([5, 5])
    vectors = 5 * torch.randn(2, 2, 32)
    calls = []
    layer0 = get_decoder_layers(model)[0]
    spy = layer0.register_forward_pre_hook(lambda m, args, kwargs: calls.append((args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True)
    with substitute_states(model, positions, vectors, prompt.shape[1]):
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=0)
    spy.remove()
    assert calls == [6, 1, 1, 1, 1]  # one prefill, then length-1 decode steps
    # Recomputing the whole sequence with substitution only at the separator gives the same greedy tokens,
    # so decode steps (which never contain position 5) were left alone.
    with substitute_states(model, positions, vectors, out.shape[1]):
        logits = model(out, position_ids=torch.arange(out.shape[1]).expand(2, -1)).logits
    assert torch.equal(logits[:, 5:-1].argmax(-1), out[:, 6:])


def test_unknown_architecture_error_names_the_class():
    class Strange(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks_somewhere = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="cannot find the decoder layers of Strange"):
        get_decoder_layers(Strange())


def test_layers_found_through_peft(tokenizer):
    peft = pytest.importorskip("peft")
    model = AutoModelForCausalLM.from_config(tiny_config("llama", tokenizer, layers=2))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert len(get_decoder_layers(wrapped)) == 2

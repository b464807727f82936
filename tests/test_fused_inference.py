"""The emulator's inference step (no autograd: fused_inference.py) computes what its training
path computes, for both architectures, a mixture table of one vector (folded into the MLP bias)
or several, left-padded ragged prompts, and weights changed after a first call (in place or
moved to another dtype)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from icot_hf import ImplicitCoTEmulator


def both_paths(emulator, ids, mask, positions, states=None):
    with torch.enable_grad():
        training = emulator(ids, mask, positions, teacher_states=states)
    with torch.no_grad():
        inference = emulator(ids, mask, positions, teacher_states=states)
    return training, inference


@pytest.mark.parametrize("mixture_size", [1, 3])
def test_inference_step_equals_the_training_path(base_config, mixture_size):
    torch.manual_seed(0)
    emulator = ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(base_config), mixture_size=mixture_size).eval()
    with torch.no_grad():  # a trained-looking table and LSTM, not the init's near-zeros
        for p in emulator.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ids = torch.randint(3, base_config.vocab_size, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # a left-padded row
    positions = torch.tensor([6, 6, 4])  # one row's separator elsewhere: the indexed (not column) path
    states = torch.randn(3, emulator.num_layers, base_config.hidden_size)
    training, inference = both_paths(emulator, ids, mask, positions, states)
    torch.testing.assert_close(inference.predicted_states, training.predicted_states.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inference.loss, training.loss.detach(), rtol=1e-5, atol=1e-5)
    assert not inference.predicted_states.requires_grad

    same_column = torch.tensor([6, 6, 6])  # every row at the last column: the sliced path
    training, inference = both_paths(emulator, ids, mask, same_column)
    torch.testing.assert_close(inference.predicted_states, training.predicted_states.detach(), rtol=1e-5, atol=1e-5)


def test_fused_weights_follow_parameter_changes(tokenizer):
    torch.manual_seed(1)
    emulator = ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))).eval()
    ids = torch.randint(3, len(tokenizer), (2, 6))
    mask, positions = torch.ones_like(ids), torch.tensor([5, 5])
    with torch.no_grad():
        before = emulator(ids, mask, positions).predicted_states.clone()
        emulator.mixture.weight.add_(1.0)  # in place, as an optimizer step or load_state_dict does
        emulator.lstm.weight_hh.mul_(2.0)
        after = emulator(ids, mask, positions).predicted_states
    training, _ = both_paths(emulator, ids, mask, positions)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, training.predicted_states.detach(), rtol=1e-5, atol=1e-5)
    emulator.to(torch.float64)  # swaps each parameter's .data: same object, same version, new storage
    training, inference = both_paths(emulator, ids, mask, positions)
    assert inference.predicted_states.dtype == torch.float64
    torch.testing.assert_close(inference.predicted_states, training.predicted_states.detach(), rtol=1e-9, atol=1e-9)


def test_zero3_sharded_weights_take_the_module_path(tokenizer, monkeypatch):
    """Under DeepSpeed ZeRO-3 a module's weights are gathered only when the module runs: with
    sharded (ds_id-tagged) parameters the emulator runs its modules, not the fused path."""
    import icot_hf.kd.fused_inference as fused

    emulator = ImplicitCoTEmulator.from_base_model(AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer))).eval()
    with torch.no_grad():
        assert fused.can_fuse_emulator(emulator)
        emulator.lstm.weight_hh.ds_id = 7
        assert not fused.can_fuse_emulator(emulator)
        monkeypatch.setattr(fused.InferenceStep, "__call__", lambda *a: (_ for _ in ()).throw(AssertionError("fused path used")))
        ids = torch.randint(3, len(tokenizer), (2, 5))
        states = emulator(ids, torch.ones_like(ids), torch.tensor([4, 4])).predicted_states
        assert states.shape == (2, emulator.num_layers, emulator.config.base_config.hidden_size)

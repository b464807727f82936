"""Student, emulator and composite as PreTrainedModels: save/load, Auto classes, shape checks."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from conftest import tiny_config
from icot_hf import (
    ImplicitCoTEmulator, ImplicitCoTEmulatorConfig, ImplicitCoTForCausalLM, ImplicitCoTStudent, ImplicitCoTStudentConfig,
)
from icot_hf.data import ICoTCollator, tokenize_dataset


def make_pair(config):
    torch.manual_seed(0)
    return ImplicitCoTEmulator(ImplicitCoTEmulatorConfig(base_config=config, mixture_size=3)), ImplicitCoTStudent(ImplicitCoTStudentConfig(base_config=config))


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_student_and_emulator_round_trip(tmp_path, base_config):
    emulator, student = make_pair(base_config)
    for model in (emulator, student):
        path = tmp_path / type(model).__name__
        model.save_pretrained(path)
        assert (path / "model.safetensors").exists()
        for loaded in (type(model).from_pretrained(path), AutoModel.from_pretrained(path)):
            assert type(loaded) is type(model)
            assert_same_weights(model, loaded)
        assert type(AutoConfig.from_pretrained(path).base_config) is type(base_config)


def test_composite_round_trip_and_outputs(tmp_path, base_config, tokenizer, small_dataset):
    emulator, student = make_pair(base_config)
    model = ImplicitCoTForCausalLM.from_emulator_and_student(emulator, student, tokenizer.eos_token_id, tokenizer.pad_token_id).eval()
    model.save_pretrained(tmp_path / "icot")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "icot")
    assert type(loaded) is ImplicitCoTForCausalLM
    assert_same_weights(model, loaded)
    batch = ICoTCollator(tokenizer.pad_token_id, views=("implicit",))(tokenize_dataset(small_dataset, tokenizer, views=("implicit",)).to_list()[:4])
    args = (batch["implicit_input_ids"], batch["implicit_attention_mask"], batch["implicit_separators"][:, 0])
    torch.testing.assert_close(model(*args).logits, loaded(*args).logits)
    assert model.answer(["1 2 * 3 4"], tokenizer) == loaded.answer(["1 2 * 3 4"], tokenizer)


def test_saved_folder_carries_remote_code(tmp_path, tokenizer):
    emulator, student = make_pair(tiny_config("gpt2", tokenizer))
    model = ImplicitCoTForCausalLM.from_emulator_and_student(emulator, student, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.save_pretrained(tmp_path / "icot")
    config = (tmp_path / "icot" / "config.json").read_text()
    assert '"auto_map"' in config and "modeling_icot.ImplicitCoTForCausalLM" in config
    assert (tmp_path / "icot" / "modeling_icot.py").exists() and (tmp_path / "icot" / "hooks.py").exists()
    # A fresh interpreter that never imports icot_hf loads it through trust_remote_code.
    code = (
        "import sys, torch; sys.path = [p for p in sys.path if 'src' not in p]\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained(r'{tmp_path / 'icot'}', trust_remote_code=True)\n"
        "assert 'icot_hf' not in sys.modules, 'icot_hf was imported'\n"
        "print(type(m).__name__, sum(p.numel() for p in m.parameters()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["ImplicitCoTForCausalLM", str(sum(p.numel() for p in model.parameters()))]


def test_mismatched_teacher_shapes_are_clear_errors(tokenizer):
    config = tiny_config("gpt2", tokenizer, layers=3)
    with pytest.raises(ValueError, match="teacher has 4 layers but the student has 3: give teacher_layers"):
        ImplicitCoTStudentConfig(base_config=config, teacher_num_layers=4)
    with pytest.raises(ValueError, match="hidden size \\(32\\) must equal the teacher's \\(64\\)"):
        ImplicitCoTEmulatorConfig(base_config=config, teacher_hidden_size=64)
    mapped = ImplicitCoTStudentConfig(base_config=config, teacher_num_layers=6, teacher_layers=[1, 3, 5], teacher_hidden_size=48)
    student = ImplicitCoTStudent(mapped)
    ids = torch.randint(3, 10, (2, 5))
    out = student(ids, torch.randn(2, 6, 48), separator_positions=torch.tensor([2, 3]))
    assert out.logits.shape == (2, 5, len(tokenizer))
    with pytest.raises(ValueError, match="got states for 4 layers"):
        ImplicitCoTStudent(ImplicitCoTStudentConfig(base_config=config))(ids, torch.randn(2, 4, 32), separator_positions=torch.tensor([2, 3]))


def test_emulator_loss_is_half_sum_of_squares(tokenizer):
    emulator, _ = make_pair(tiny_config("gpt2", tokenizer))
    ids = torch.randint(3, 10, (2, 6))
    target = torch.randn(2, 3, 32)
    out = emulator(ids, separator_positions=torch.tensor([3, 5]), teacher_states=target)
    expected = ((out.predicted_states - target) ** 2).sum(dim=(1, 2)).mean() / 2
    torch.testing.assert_close(out.loss, expected)
    assert out.per_layer_mse.shape == (3,)
    # states at the separator ignore what follows it (causal), so trailing tokens do not matter
    longer = emulator(torch.cat([ids, ids], 1), separator_positions=torch.tensor([3, 5]))
    torch.testing.assert_close(longer.predicted_states, out.predicted_states)

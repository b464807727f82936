"""LoRA via peft on the base LM inside the student, emulator and composite."""

import json
import os

import torch
from transformers import AutoModelForCausalLM

from conftest import multiplication_dataset, tiny_config
from icot_hf import ImplicitCoTEmulator, ImplicitCoTForCausalLM, ImplicitCoTStudent
from icot_hf.data import ICoTCollator, tokenize_dataset
from icot_hf.kd import CoupledConfig, CoupledTrainer


def pretrained_base(tmp_path, tokenizer, name, seed=0):
    """A 'pretrained' Llama-family base saved locally, as a Hub model would be."""
    torch.manual_seed(seed)
    path = tmp_path / name
    AutoModelForCausalLM.from_config(tiny_config("llama", tokenizer)).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)


def test_lora_training_saves_adapter_and_reloads_same_answers(tmp_path, tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ImplicitCoTForCausalLM.from_emulator_and_student(
        ImplicitCoTEmulator.from_base_model(pretrained_base(tmp_path, tokenizer, "base_e")),
        ImplicitCoTStudent.from_base_model(pretrained_base(tmp_path, tokenizer, "base_s")),
        tokenizer.eos_token_id, tokenizer.pad_token_id, max_answer_tokens=10,
    )
    base_before = model.student.lm.model.layers[0].self_attn.q_proj.weight.clone()
    mlp_before = model.student.state_mlps[0][0].weight.clone()
    data = tokenize_dataset(multiplication_dataset(2, 200, seed=4), tokenizer, views=("implicit",))
    args = CoupledConfig(output_dir=str(tmp_path / "out"), max_steps=15, per_device_train_batch_size=16, learning_rate=5e-3, save_strategy="no",
                         report_to="none", use_cpu=True, use_peft=True, lora_r=4, lora_target_modules="q_proj,v_proj")
    trainer = CoupledTrainer(model=model, args=args, data_collator=ICoTCollator(tokenizer.pad_token_id, views=("implicit",)), train_dataset=data)
    trainer.train()
    assert model.student.has_lora and model.emulator.has_lora
    # the base weights stay frozen; the adapters and the ICoT modules learn
    assert torch.equal(model.student.lm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, base_before)
    assert not torch.equal(model.student.state_mlps[0][0].weight, mlp_before)
    model.eval()
    questions = ["1 2 * 3 4", "5 6 * 7 8", "9 1 * 2 3"]
    answers = model.answer(questions, tokenizer)

    trainer.save_model(str(tmp_path / "saved"))
    saved = tmp_path / "saved"
    assert (saved / "student" / "lora_adapter" / "adapter_model.safetensors").exists()
    assert (saved / "student" / "icot_modules.safetensors").exists() and not (saved / "student" / "model.safetensors").exists()
    assert (saved / "student" / "lora_base" / "model.safetensors").exists()  # the base travels with the folder
    assert json.loads((saved / "student" / "lora_adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    # the folders the bases came from change (an upstream stage retrained) and the load runs elsewhere: same model
    for name in ("base_e", "base_s"):
        pretrained_base(tmp_path, tokenizer, name, seed=7)
    os.chdir(tmp_path.parent)
    reloaded = ImplicitCoTForCausalLM.from_pretrained(saved).eval()
    assert reloaded.answer(questions, tokenizer) == answers

    batch = ICoTCollator(tokenizer.pad_token_id, views=("implicit",))(data.to_list()[:4])
    inputs = (batch["implicit_input_ids"], batch["implicit_attention_mask"], batch["implicit_separators"][:, 0])
    before_merge = reloaded(*inputs).logits
    reloaded.merge_lora()
    assert not reloaded.student.has_lora
    torch.testing.assert_close(reloaded(*inputs).logits, before_merge, atol=1e-4, rtol=1e-4)
    reloaded.save_pretrained(tmp_path / "merged")  # an ordinary checkpoint again
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert ImplicitCoTForCausalLM.from_pretrained(tmp_path / "merged").eval().answer(questions, tokenizer) == answers

"""bf16 on the CPU only where the CPU has it (`cpu_bf16: auto`), forced or off when asked, and the
precision a run trained in recorded in its completion marker."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from icot_hf import precision
from icot_hf.trainers import TeacherConfig

WITH_AMX = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize("cpuinfo, choice, expected", [
    (WITH_AMX, "auto", True), (AVX2_ONLY, "auto", False), (AVX2_ONLY, "true", True), (WITH_AMX, "false", False),
])
def test_cpu_bf16_follows_the_cpu_unless_told(tmp_path, monkeypatch, cpuinfo, choice, expected):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "cpuinfo")
    args = TeacherConfig(output_dir=str(tmp_path / "out"), use_cpu=True, cpu_bf16=choice, report_to="none")
    assert args.bf16 is expected and precision.precision_of(args) == ("bf16" if expected else "fp32")


def test_flags_read_and_bad_choice(tmp_path, monkeypatch):
    (tmp_path / "cpuinfo").write_text(WITH_AMX)
    assert precision.cpu_bf16_flags(tmp_path / "cpuinfo") == ["amx_bf16", "avx512_bf16"]
    assert precision.cpu_bf16_flags(tmp_path / "missing") == []
    with pytest.raises(ValueError, match="cpu_bf16 must be one of"):
        TeacherConfig(output_dir=str(tmp_path / "out"), use_cpu=True, cpu_bf16="maybe", report_to="none")


def test_the_marker_records_the_precision_trained_in(tmp_path):
    """Without --use_cpu (as the presets run): bf16 on the CPU must still be accepted by the Trainer."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", "32",
                    "--valid_size", "8", "--test_size", "8", "--output_dir", str(data)], check=True, capture_output=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    for choice, expected in (("true", "bf16"), ("false", "fp32")):
        out = tmp_path / f"teacher_{choice}"
        run = subprocess.run([sys.executable, str(REPO / "recipes" / "teacher.py"), "--dataset_name_or_path", str(data), "--output_dir", str(out),
                              "--model_config", "{model_type: gpt2, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 64}", "--max_steps", "2",
                              "--per_device_train_batch_size", "4", "--save_strategy", "no", "--cpu_bf16", choice],
                             capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        marker = json.loads((out / "training_complete.json").read_text())
        assert marker["precision"] == expected and marker["run"]["settings"]["bf16"] is (expected == "bf16")


@pytest.mark.parametrize("bf16, choice, vocab, expected", [
    (False, "compute", 50257, None),  # fp32 run: the weights' own dtype, whatever the choice
    (True, "auto", 30, None),  # the digit tokenizers: fp32 (a small share of the step)
    (True, "auto", precision.OUTPUT_LAYER_MIN_VOCAB, "bf16"),
    (True, "compute", 30, "bf16"),
    (True, "fp32", 50257, None),
])
def test_output_layer_dtype_follows_precision_choice_and_vocabulary(tmp_path, bf16, choice, vocab, expected):
    import torch

    args = TeacherConfig(output_dir=str(tmp_path / "out"), use_cpu=True, cpu_bf16="true" if bf16 else "false",
                         output_layer_precision=choice, report_to="none")
    assert precision.output_layer_dtype(args, vocab) == (torch.bfloat16 if expected else None)


def test_bad_output_layer_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="output_layer_precision must be one of"):
        TeacherConfig(output_dir=str(tmp_path / "out"), use_cpu=True, output_layer_precision="half", report_to="none")


@pytest.mark.parametrize("choice, expected", [("auto", "bf16"), ("fp32", None)])
def test_a_bf16_trainer_runs_the_output_layer_as_chosen(tmp_path, monkeypatch, choice, expected):
    """The wiring: a bf16 teacher step at a 5,000-token vocabulary hands the label-position loss bf16
    (auto, from 4,096 tokens up) or nothing (fp32), and trains (finite loss) either way."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from icot_hf import label_loss
    from icot_hf.data import ICoTCollator, tokenize_dataset
    from icot_hf.tokenization import build_digit_tokenizer
    from icot_hf.trainers import TeacherTrainer
    from conftest import multiplication_dataset

    seen = []
    original = label_loss.LinearCrossEntropy.apply

    def spy(hidden, weight, bias, targets, chunk_rows, compute_dtype=None):
        seen.append(compute_dtype)
        return original(hidden, weight, bias, targets, chunk_rows, compute_dtype)

    monkeypatch.setattr(label_loss.LinearCrossEntropy, "apply", spy)
    tokenizer = build_digit_tokenizer()
    config = GPT2Config(vocab_size=5000, n_layer=1, n_embd=16, n_head=2, n_positions=128, eos_token_id=tokenizer.eos_token_id)
    data = tokenize_dataset(multiplication_dataset(2, 16), tokenizer)
    args = TeacherConfig(output_dir=str(tmp_path / "out"), use_cpu=True, cpu_bf16="true", output_layer_precision=choice, max_steps=2,
                         per_device_train_batch_size=8, save_strategy="no", report_to="none", logging_steps=1)
    trainer = TeacherTrainer(model=AutoModelForCausalLM.from_config(config), args=args, data_collator=ICoTCollator(tokenizer.pad_token_id),
                             train_dataset=data)
    result = trainer.train()
    assert seen and set(seen) == {torch.bfloat16 if expected else None}
    assert torch.isfinite(torch.tensor(result.training_loss))

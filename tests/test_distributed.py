"""Real launches: DeepSpeed ZeRO-3 on the CPU with a frozen teacher sharded as an inference
engine, and 2-process DDP (gloo) matching a single process at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, tiny_config

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("dist")
    AutoModelForCausalLM.from_config(tiny_config("gpt2", tokenizer)).save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", "800", "--valid_size", "16",
                    "--test_size", "16", "--output_dir", str(root / "data")], check=True, capture_output=True)
    return root


def launch(config_file, recipe, args, env_extra=None, extra_launch=()):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    command = [ACCELERATE, "launch", "--config_file", str(config_file), *extra_launch, str(REPO / "recipes" / recipe), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("deepspeed") is None, reason="deepspeed not installed (pip install icot_hf[deepspeed])")
@pytest.mark.parametrize("recipe", ["mind_reading.py", "emulator.py"])
def test_zero3_with_frozen_teacher(assets, tmp_path, recipe):
    out = tmp_path / "out"
    args = ["--dataset_name_or_path", str(assets / "data"), "--teacher_name_or_path", str(assets / "teacher"), "--init_from_teacher", "true",
            "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--logging_steps", "2",
            "--eval_strategy", "no", "--save_strategy", "no"]
    log = launch(REPO / "recipes" / "accelerate_configs" / "deepspeed_zero3.yaml", recipe, args, extra_launch=["--mixed_precision", "no"])
    assert "prepared as a DeepSpeed ZeRO-3 inference engine" in log
    from transformers import AutoModel

    import icot_hf  # noqa: F401

    model = AutoModel.from_pretrained(out)  # consolidated 16-bit weights saved from the ZeRO-3 shards
    assert all(p.numel() > 0 for p in model.parameters())
    # the same run without DeepSpeed: ZeRO-3's sharded training computes the same losses
    launch(REPO / "recipes" / "accelerate_configs" / "cpu.yaml", recipe, args[:args.index("--output_dir") + 1] + [str(tmp_path / "plain")] +
           args[args.index("--output_dir") + 2:] + ["--use_cpu", "true"])
    sharded = json.loads((out / "training_complete.json").read_text())["train_loss"]
    plain = json.loads((tmp_path / "plain" / "training_complete.json").read_text())["train_loss"]
    assert sharded == pytest.approx(plain, rel=0.02), (sharded, plain)


def test_ddp_two_processes_matches_single(assets, tmp_path):
    common = ["--dataset_name_or_path", str(assets / "data"), "--model_config", '{"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}',
              "--max_steps", "12", "--learning_rate", "2e-3", "--logging_steps", "4", "--eval_strategy", "no", "--save_strategy", "no", "--seed", "3", "--use_cpu", "true"]
    launch(REPO / "recipes" / "accelerate_configs" / "cpu.yaml", "teacher.py", common + ["--output_dir", str(tmp_path / "single"), "--per_device_train_batch_size", "16"])
    launch(REPO / "recipes" / "accelerate_configs" / "cpu_ddp.yaml", "teacher.py", common + ["--output_dir", str(tmp_path / "ddp"), "--per_device_train_batch_size", "8"])
    single = json.loads((tmp_path / "single" / "training_complete.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "training_complete.json").read_text())
    # same global batch (2 x 8 = 16, the same examples), same init: the same training, up to float rounding
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4), (single["train_loss"], ddp["train_loss"])
    from safetensors.torch import load_file

    single_weights, ddp_weights = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "ddp" / "model.safetensors")
    for name in single_weights:
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=1e-3, atol=1e-4, msg=name)
    # 12 steps over 800 examples: epoch 0.24 only if both processes fed 8 examples a step
    assert ddp["epoch"] == pytest.approx(single["epoch"]) == pytest.approx(12 * 16 / 800)

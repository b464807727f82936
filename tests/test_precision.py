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

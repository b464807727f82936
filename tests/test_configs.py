"""Every shipped YAML config (CPU and paper presets) parses into its recipe's dataclasses,
and every data/tokenizer config names only options its script has: a typo in a preset
fails here, not an hour into `make reproduce` on a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from icot_hf.recipe_utils import ScriptArguments, parse_args
from icot_hf.trainers import (
    CoupledConfig, MindReadingConfig, StepwiseInternalizationConfig, TeacherConfig, ThoughtEmulationConfig,
)

STAGE_CONFIGS = {
    "teacher": TeacherConfig, "no_cot": TeacherConfig, "mind_reading": MindReadingConfig,
    "emulator": ThoughtEmulationConfig, "couple": CoupledConfig, "stepwise": StepwiseInternalizationConfig,
}
CONFIG_ROOT = REPO / "recipes" / "configs"
EXPERIMENT_ROOT = REPO / "experiments" / "configs"  # the runs that decided the presets: they must still launch


def stage_of(path: Path) -> str | None:
    """The recipe stage a config is for: its name, or its name's prefix (`teacher_continued`)."""
    return next((stage for stage in STAGE_CONFIGS if path.stem == stage or path.stem.startswith(stage + "_")), None)


STAGE_FILES = sorted(p for root in (CONFIG_ROOT, EXPERIMENT_ROOT) for p in root.rglob("*.yaml") if stage_of(p))
SCRIPT_FILES = sorted(p for root in (CONFIG_ROOT, EXPERIMENT_ROOT) for p in root.rglob("*.yaml") if p.stem in ("data", "tokenizer"))


def test_every_task_has_cpu_and_paper_presets():
    for task in ("4x4_mult", "5x5_mult", "gsm8k"):
        for folder in (CONFIG_ROOT / task, CONFIG_ROOT / task / "paper"):
            assert {"data", "teacher", "no_cot", "mind_reading", "emulator", "couple"} <= {p.stem for p in folder.glob("*.yaml")}, folder


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_stage_config_parses(path, tmp_path):
    # bf16 is checked against the hardware when the arguments are built: off for this CPU check.
    script_args, training_args = parse_args(ScriptArguments, STAGE_CONFIGS[stage_of(path)], argv=["--config", str(path), "--output_dir", str(tmp_path), "--bf16", "false"])
    values = yaml.safe_load(path.read_text())
    assert training_args.per_device_train_batch_size == values["per_device_train_batch_size"]
    assert script_args.dataset_name_or_path == values["dataset_name_or_path"]
    if stage_of(path) == "no_cot":
        assert training_args.view == "implicit"
    if "paper" in path.parts:  # the paper's code's settings (issue 17)
        assert not values.get("bf16") and values["learning_rate"] == 5e-5 and training_args.weight_decay == 0.01
        assert script_args.sequence_format == "reference" and training_args.lr_scheduler_type == "constant"
        # torch.optim.AdamW(every parameter, fused=True) with clipping 1.0, as the released loops (test_reference_trajectory.py)
        assert training_args.weight_decay_all_parameters and training_args.optim == "adamw_torch_fused" and training_args.max_grad_norm == 1.0
        stage = stage_of(path)
        assert training_args.disable_dropout == (stage not in ("teacher", "no_cot", "stepwise")), stage  # dropout on where it trains in train mode
        if stage in ("mind_reading", "emulator", "couple"):
            assert training_args.load_best_model_at_end and training_args.save_strategy == training_args.eval_strategy == "epoch"


@pytest.mark.parametrize("path", SCRIPT_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_script_config_names_real_options(path):
    values = yaml.safe_load(path.read_text())
    script = values.pop("script", "make_multiplication" if path.stem == "data" else "train_tokenizer")
    usage = subprocess.run([sys.executable, str(REPO / "dataset_scripts" / f"{script}.py"), "--help"], capture_output=True, text=True, check=True).stdout
    missing = [key for key in values if f"--{key}" not in usage]
    assert not missing, f"{path}: {script}.py has no option(s) {missing}"

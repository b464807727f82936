"""Resume: a real training subprocess killed with SIGKILL mid-run resumes from its last
checkpoint and ends with the same weights as an uninterrupted run; a checkpoint cut off
mid-save is set aside, never resumed from."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from icot_hf.recipe_utils import last_checkpoint

CONFIG = """
dataset_name_or_path: {data}
model_config: {{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64}}
output_dir: {out}
max_steps: 60
per_device_train_batch_size: 16
learning_rate: 3.0e-3
logging_steps: 10
eval_strategy: "no"
save_strategy: steps
save_steps: 10
save_total_limit: 3
use_cpu: true
seed: 7
"""


def run_teacher(tmp_path, out, data, wait_for_checkpoint=None):
    config = tmp_path / f"{out.name}.yaml"
    config.write_text(CONFIG.format(data=data, out=out))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, str(REPO / "recipes" / "teacher.py"), "--config", str(config)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if wait_for_checkpoint is None:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        return
    deadline = time.time() + 600
    while not (out / wait_for_checkpoint / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "training ended before the checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", "2", "--train_size", "2000", "--valid_size", "10",
                    "--test_size", "10", "--output_dir", str(data)], check=True, capture_output=True)
    run_teacher(tmp_path, tmp_path / "straight", data)
    killed = tmp_path / "killed"
    run_teacher(tmp_path, killed, data, wait_for_checkpoint="checkpoint-20")
    assert not (killed / "training_complete.json").exists()
    for checkpoint in killed.glob("checkpoint-*"):  # whatever is on disk is complete or gets set aside
        if last_checkpoint(str(killed)) == str(checkpoint):
            assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == int(checkpoint.name.split("-")[1])
    run_teacher(tmp_path, killed, data)  # same command again: resumes
    state = json.loads((killed / "training_complete.json").read_text())
    assert state["train_runtime"] > 0
    straight, resumed = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)


def test_checkpoint_cut_off_mid_save_is_set_aside(tmp_path):
    from icot_hf.run_record import record_checkpoint

    for step, state in ((10, {"global_step": 10}), (20, None)):
        folder = tmp_path / f"checkpoint-{step}"
        record_checkpoint(tmp_path, folder, pending=True)  # as the run announces each save
        folder.mkdir()
        if state:
            (folder / "trainer_state.json").write_text(json.dumps(state))
            record_checkpoint(tmp_path, folder)
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"partial")
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    assert (tmp_path / "incomplete-checkpoint-20" / "model.safetensors").exists()
    assert last_checkpoint(str(tmp_path / "missing")) is None

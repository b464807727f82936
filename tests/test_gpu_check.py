"""scripts/gpu_check.sh, the device check, runs end to end on its CPU path (GPU_CHECK_SMOKE=1):
every step a GPU session will run (device report, throughput, the paper preset's pipeline shortened,
parity, bf16 and DeepSpeed launches) is known to work before device minutes are spent on it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.proof
def test_gpu_check_script_runs_on_its_cpu_path(tmp_path):
    env = dict(os.environ, GPU_CHECK_SMOKE="1", CHECK_DIR=str(tmp_path / "check"), PY=sys.executable,
               ACCELERATE=str(Path(sys.executable).parent / "accelerate"), OMP_NUM_THREADS="1")
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (tmp_path / "check" / "report.md").read_text()
    for section in ("## Device", "## Reference parity", "## Training throughput", "## The paper preset's pipeline", "## Launches: bf16 and DeepSpeed"):
        assert section in report
    assert "FAILED" not in report and "not finished" not in report
    # every stage of the paper preset ran from the derived configs, and the evaluation table has every method
    for stage in ("teacher", "no_cot", "mind_reading", "emulator", "coupled", "stepwise"):
        assert f"| {stage} | 4 |" in report
    for method in ("No CoT", "Explicit CoT (teacher)", "Implicit CoT (ICoT-KD)", "Implicit CoT (ICoT-SI, stepwise)"):
        assert f"| {method} |" in report
    parity = (tmp_path / "check" / "parity.log").read_text()
    assert " passed" in parity or "skipped" in parity
    assert report.count("finished, train_loss") >= 2

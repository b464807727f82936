"""scripts/odd_input_sweep.py: every odd input of the "nothing lost" issues against the real entry
points behaves (works, or one `error:` line naming it, no traceback), no user file changes, no
temporary or staging file is left behind; round 3: every command that fails midway or is killed at
a write leaves a complete result or none, and its re-run ends with the uninterrupted run's result."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


def sweep(*parts: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "odd_input_sweep.py"), *parts], capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.mark.slow
def test_every_command_failing_midway_or_killed_at_a_write_reruns_to_the_same_result():
    """Round 3 in make test: 9 failures found late or by a full disk, 9 commands killed at 4
    writes each (the first, the last, two between)."""
    run = sweep("--parts", "midway", "kills", "--kills", "4")
    assert run.returncode == 0 and "every case behaved" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.stdout.count("re-run: complete") >= 9 and run.stdout.count("each re-run completed") == 9, run.stdout[-3000:]
    assert "temporary or staging files left: none" in run.stdout


@pytest.mark.slow
@pytest.mark.proof
def test_every_odd_input_behaves():
    run = sweep("--parts", "inputs")
    assert run.returncode == 0 and "every case behaved" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.stdout.count(" | ") >= 2 * 49  # one line per case (48), plus the header
    assert "user files changed: none" in run.stdout and "temporary or staging files left: none" in run.stdout

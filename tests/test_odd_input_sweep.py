"""scripts/odd_input_sweep.py: every odd input of the two "nothing lost" issues against the real
entry points behaves (works, or one `error:` line naming it, no traceback), no user file changes
and no temporary or staging file is left behind."""

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
@pytest.mark.proof
def test_every_odd_input_behaves():
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "odd_input_sweep.py")], capture_output=True, text=True, timeout=1800,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert run.returncode == 0 and "every case behaved" in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
    assert run.stdout.count(" | ") >= 2 * 49  # one line per case (48), plus the header
    assert "user files changed: none" in run.stdout and "temporary or staging files left: none" in run.stdout

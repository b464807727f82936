"""`make bench` in its tiny smoke mode, so the benchmark cannot rot (no timing assertions)."""

import json
import subprocess
import sys

from conftest import REPO


def test_bench_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--smoke", "--output_dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert set(data["training"]) == {"teacher", "mind_reading", "emulator", "coupled"}
    assert {"no_cot", "explicit_cot", "implicit_cot", "ratios"} <= set(next(iter(data["inference"].values())))
    assert "hook_overhead_fraction" in data["overheads"] and set(data["scaling"]) == {"2", "3"}
    # The inside-the-hooks timer caught the substitutions (0 would mean its wrappers were bypassed).
    assert 0 < data["overheads"]["hook_direct_ms"] < data["overheads"]["student_prefill_hooked_ms"]
    assert all("peak_memory_mb" in stage for stage in data["training"].values())
    assert all("implicit_train_step_ms" in row for row in data["scaling"].values())
    assert any("hook substitution" in bar["bar"] for bar in data["bars"])
    table = (tmp_path / "bench.md").read_text()
    assert "| implicit_cot | 1 |" in table and "## Bars" in table


def test_bench_rejects_mismatched_test_files(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--task_dirs", "a", "b", "--test_files", "x.txt"], capture_output=True, text=True)
    assert result.returncode == 2 and "one file per --task_dirs entry" in result.stderr

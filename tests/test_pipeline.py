"""The whole pipeline through the real recipes and `accelerate launch`, on tiny configs:
data -> teacher -> no-CoT -> student -> emulator -> coupled (ICoT-KD) and stepwise (ICoT-SI)
-> evaluation, then a re-run that skips every finished stage, and re-runs after a changed
emulator and a changed teacher that retrain exactly what depends on them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
def test_reproduce_pipeline_end_to_end(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, TASK="tiny", CONFIGS=str(REPO / "tests" / "configs" / "tiny"), PY=sys.executable,
               ACCELERATE=str(bin_dir / "accelerate"), HF_HUB_OFFLINE="1", METHODS="kd stepwise", EVAL_ARGS="--max_examples 32 --max_examples_batch1 8 --batch_sizes 1 16")
    run = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("teacher", "no_cot", "mind_reading", "emulator", "coupled", "stepwise"):
        assert (tmp_path / "outputs" / "tiny" / stage / "training_complete.json").exists(), stage
    results = json.loads((tmp_path / "results" / "tiny" / "results.json").read_text())
    methods = results["evaluations"]["tiny [test]"]
    assert set(methods) == {"no_cot", "explicit_cot", "implicit_cot", "stepwise_cot"}
    for name, m in methods.items():  # 32 examples each (EVAL_ARGS); batching pays off; the table shows the JSON's numbers
        assert m["num_examples"] == 32 and abs(m["accuracy"] * 32 - round(m["accuracy"] * 32)) < 1e-9, name
        assert m["throughput"]["16"] > m["throughput"]["1"], (name, m["throughput"])
        assert len(m["sample_predictions"]) == 5 and all(isinstance(p, str) for p in m["sample_predictions"])
    assert (tmp_path / "results" / "tiny" / "accuracy_vs_throughput.png").stat().st_size > 1000
    table = (tmp_path / "results" / "tiny" / "results.md").read_text()
    for m in methods.values():
        assert f"{100 * m['accuracy']:.1f}% (32)" in table
    assert "| Implicit CoT (ICoT-KD) |" in table and "| Implicit CoT (ICoT-SI, stepwise) |" in table
    # The student built the teacher-state cache; the emulator (same teacher, data and settings) reused it.
    assert (tmp_path / "outputs" / "tiny" / "teacher_state_cache" / "state_cache.json").is_file()
    assert "Caching teacher states" in (tmp_path / "logs" / "tiny_mind_reading.log").read_text()
    assert "Caching teacher states" not in (tmp_path / "logs" / "tiny_emulator.log").read_text()
    curves = json.loads((tmp_path / "results" / "tiny" / "learning_curves.json").read_text())
    assert set(curves) == {"teacher", "no_cot", "mind_reading", "emulator", "coupled", "stepwise"}
    stepwise = curves["stepwise"]
    assert [p["step"] for p in stepwise["evaluations"]][:2] == [10, 20] and stepwise["examples_per_step"] == 32
    assert stepwise["advances"] and all(a["reason"] in ("gate", "cap") for a in stepwise["advances"])
    assert stepwise["gate_checks"][0]["step"] == 2
    # keep_positions: the saved model applies the positions its removed CoT skips itself (a 2x2 CoT
    # is 8 tokens; 4 go per stage, from stage 1), and the evaluation above generated with them.
    saved = json.loads((tmp_path / "outputs" / "tiny" / "stepwise" / "config.json").read_text())
    assert saved["model_type"] == "icot_stepwise" and saved["position_gap"] in (4, 8)
    # save_frontier_points: the model at each stage's end was evaluated into the frontier
    frontier = results["frontier"]
    assert frontier and frontier[0]["cot_tokens_removed"] == 4 and all(p["cot_tokens_total"] == 8 for p in frontier)
    assert (tmp_path / "results" / "tiny" / "frontier.png").stat().st_size > 1000
    assert (tmp_path / "results" / "tiny" / "learning_curves.png").stat().st_size > 1000
    assert "### ICoT-SI" in (tmp_path / "results" / "tiny" / "learning_curves.md").read_text()
    config = json.loads((tmp_path / "outputs" / "tiny" / "coupled" / "config.json").read_text())
    assert config["model_type"] == "icot" and config["student"]["base_config"]["model_type"] == "gpt2"
    results_times = json.loads((tmp_path / "results" / "tiny" / "results.json").read_text())["stage_wall_seconds"]
    assert set(results_times) >= {"teacher", "no_cot", "mind_reading", "emulator", "coupled", "stepwise"}
    assert "Wall time per stage" in table and "evaluate" in results_times
    # Progress: a line at each stage start with the stage's step and the run's time left.
    assert run.stdout.count("progress ") >= 6 and "run: " in run.stdout
    events = (tmp_path / "logs" / "tiny_progress.txt").read_text().split()
    assert {"teacher", "stepwise", "coupled", "evaluate"} <= set(events[1::3])
    # A second run finds every stage finished with the same settings: no stage trains again.
    timed_lines = (tmp_path / "results" / "tiny" / "stage_seconds.txt").read_text().splitlines()
    written = {p.name: p.read_bytes() for p in (tmp_path / "results" / "tiny").glob("results.*")}
    again = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("already done with these settings") == 7  # the data and six stages
    retimed = (tmp_path / "results" / "tiny" / "stage_seconds.txt").read_text().splitlines()
    assert retimed == timed_lines  # nothing trained, so no time recorded
    assert "every stage is finished with these settings" in again.stdout  # one launch checked them all
    assert "results.json is unchanged" in again.stdout  # nothing evaluated again, the table not rewritten
    assert {p.name: p.read_bytes() for p in (tmp_path / "results" / "tiny").glob("results.*")} == written
    assert set(json.loads((tmp_path / "results" / "tiny" / "results.json").read_text())["stage_wall_seconds"]) == {
        "data", "teacher", "no_cot", "mind_reading", "emulator", "coupled", "stepwise", "evaluate"}
    # A changed emulator config retrains the emulator, and the coupled model built from the old
    # emulator (its upstream) with it; the teacher, student and the rest stay as they were.
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "tests" / "configs" / "tiny", configs)
    emulator_config = configs / "emulator.yaml"
    emulator_config.write_text(emulator_config.read_text() + "\nseed: 1234\n")
    third = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh")], cwd=tmp_path, env=dict(env, CONFIGS=str(configs)),
                           capture_output=True, text=True)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "every stage is finished" not in third.stdout
    trained = [line.split()[0] for line in (tmp_path / "results" / "tiny" / "stage_seconds.txt").read_text().splitlines()[len(retimed):]]
    assert sorted(trained) == ["coupled", "emulator"]
    # A retrained teacher (another seed) retrains ICoT-KD's stages, whose teacher-state cache, built
    # from the old teacher, is rebuilt rather than refused.
    teacher_config = configs / "teacher.yaml"
    teacher_config.write_text(teacher_config.read_text() + "\nseed: 4321\n")
    fourth = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh")], cwd=tmp_path, env=dict(env, CONFIGS=str(configs), METHODS="kd"),
                            capture_output=True, text=True)
    assert fourth.returncode == 0, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    retrained = (tmp_path / "results" / "tiny" / "stage_seconds.txt").read_text().splitlines()
    assert {"teacher", "mind_reading", "emulator", "coupled"} <= {line.split()[0] for line in retrained[len(retimed) + len(trained):]}
    assert "rebuilding the teacher-state cache" in (tmp_path / "logs" / "tiny_mind_reading.log").read_text()


def test_reproduce_rejects_unknown_method(tmp_path):
    env = dict(os.environ, TASK="tiny", CONFIGS=str(REPO / "tests" / "configs" / "tiny"), METHODS="kd magic")
    run = subprocess.run(["bash", str(REPO / "scripts" / "reproduce.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "unknown method 'magic'" in run.stdout

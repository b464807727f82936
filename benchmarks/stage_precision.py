"""Training speed of every CPU-preset stage in fp32 and in bf16, and on one or two threads:
the measurement behind `cpu_bf16: auto` and `make reproduce`'s schedule.

    python benchmarks/stage_precision.py --output_dir results            # every stage, both precisions
    python benchmarks/stage_precision.py --stages stepwise --threads 1 2 --output_dir /tmp/p

Each stage is the real recipe on its preset config (recipes/configs/<task>/<stage>.yaml: model
shape, batch size, tokenizer), launched as a subprocess on a small generated dataset, twice: for
`--short` and for `--long` optimizer steps. Its examples/s is the difference of the two runs'
train_runtime over the difference in examples, so model loading, data preparation, the first
steps' warm-up and the final save cancel out. Downstream stages read a teacher trained here for
`--long` steps (speed does not depend on its accuracy). Evaluation is off. Run on an idle
machine: the runs go one at a time. Writes stage_precision.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("teacher", "no_cot", "stepwise", "mind_reading", "emulator", "coupled")
CONFIG = {stage: "couple" if stage == "coupled" else stage for stage in STAGES}
RECIPE = {"teacher": "teacher", "no_cot": "teacher", "stepwise": "stepwise", "mind_reading": "mind_reading", "emulator": "emulator",
          "coupled": "couple"}
QUIET = ["--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1000000", "--report_to", "none", "--disable_tqdm", "true",
         "--rerun_if_changed", "false"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def run_stage(stage: str, steps: int, bf16: bool, threads: int, work: Path, args) -> float:
    """train_runtime (seconds) of `stage` trained for `steps` optimizer steps."""
    out = work / f"{stage}-{'bf16' if bf16 else 'fp32'}-{threads}t-{steps}"
    upstream = {"teacher": [], "no_cot": [], "stepwise": ["--teacher_name_or_path", str(work / "teacher")],
                "mind_reading": ["--teacher_name_or_path", str(work / "teacher"), "--teacher_state_cache", str(out / "cache")],
                "emulator": ["--teacher_name_or_path", str(work / "teacher"), "--teacher_state_cache", str(out / "cache")],
                "coupled": ["--student_name_or_path", str(work / "mind_reading"), "--emulator_name_or_path", str(work / "emulator")]}[stage]
    command = [sys.executable, str(REPO / "recipes" / f"{RECIPE[stage]}.py"), "--config", str(args.configs / f"{CONFIG[stage]}.yaml"),
               "--output_dir", str(out), "--dataset_name_or_path", str(work / "data"), "--max_train_samples", str(args.train_size),
               "--max_steps", str(steps), "--cpu_bf16", "true" if bf16 else "false", *QUIET, *upstream]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"stage_precision: {stage} ({steps} steps) failed:\n{run.stderr[-3000:]}")
    return json.loads((out / "final_results.json").read_text())["train_runtime"], out


def prepare(work: Path, args) -> None:
    """Data, and the upstream models the later stages read (trained briefly, fp32)."""
    subprocess.run([sys.executable, str(REPO / "dataset_scripts" / "make_multiplication.py"), "--digits", str(args.digits), "--train_size",
                    str(args.train_size), "--valid_size", "64", "--test_size", "64", "--seed", "0", "--output_dir", str(work / "data")],
                   check=True, capture_output=True)
    threads = max(args.threads)
    for stage in ("teacher", "mind_reading", "emulator"):
        if stage == "teacher" or "coupled" in args.stages:
            _, out = run_stage(stage, args.long, False, threads, work, args)
            (work / stage).symlink_to(out)


def markdown(results: list[dict], args) -> str:
    lines = ["# Training speed per stage: fp32 against bf16", "",
             f"CPU: {cpu_name()}. Each stage is its recipe on `{args.configs.relative_to(REPO)}/<stage>.yaml` (model, batch size, "
             f"tokenizer), examples/s from the difference of a {args.short}- and a {args.long}-step run (start-up and warm-up "
             "cancel out), one run at a time, evaluation off. bf16: `--cpu_bf16 true` (the Trainer's autocast).", "",
             f"Command: `python benchmarks/stage_precision.py --output_dir {args.output_dir} --stages {' '.join(args.stages)} "
             f"--threads {' '.join(map(str, args.threads))}`", "",
             "| stage | threads | fp32 examples/s | bf16 examples/s | bf16 speed-up |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['stage']} | {r['threads']} | {r['fp32']:.1f} | {r['bf16']:.1f} | {r['bf16'] / r['fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="results")
    parser.add_argument("--task", default="4x4_mult")
    parser.add_argument("--digits", type=int, default=4)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--short", type=int, default=5)
    parser.add_argument("--long", type=int, default=35)
    parser.add_argument("--train_size", type=int, default=4096)
    args = parser.parse_args(argv)
    args.configs = REPO / "recipes" / "configs" / args.task
    results = []
    with tempfile.TemporaryDirectory(prefix="stage_precision_") as tmp:
        work = Path(tmp)
        prepare(work, args)
        for stage in args.stages:
            for threads in args.threads:
                row = {"stage": stage, "threads": threads}
                for precision in ("fp32", "bf16"):
                    batch = _batch_size(args.configs / f"{CONFIG[stage]}.yaml")
                    short, _ = run_stage(stage, args.short, precision == "bf16", threads, work, args)
                    long, _ = run_stage(stage, args.long, precision == "bf16", threads, work, args)
                    row[precision] = (args.long - args.short) * batch / max(long - short, 1e-9)
                    row[f"{precision}_seconds"] = [short, long]
                print(f"{stage} {threads} thread(s): fp32 {row['fp32']:.1f}, bf16 {row['bf16']:.1f} examples/s "
                      f"({row['bf16'] / row['fp32']:.2f}x)", flush=True)
                results.append(row)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()} | {"cpu": cpu_name()}
    (out / "stage_precision.json").write_text(json.dumps({"results": results, "settings": settings}, indent=2))
    (out / "stage_precision.md").write_text(markdown(results, args))
    print(markdown(results, args))


def _batch_size(config: Path) -> int:
    import yaml

    return int(yaml.safe_load(config.read_text())["per_device_train_batch_size"])


if __name__ == "__main__":
    main()

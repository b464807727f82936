#!/usr/bin/env bash
# The device check: one short script for a machine with a GPU (about 8 minutes on one H200: run it once,
# with timeout_s 600), for what the 2-core CPU cannot show. Writes $CHECK_DIR (report.md and the raw files):
#   1. the device, torch and CUDA versions;
#   2. training throughput, teacher and mind-reading student, GPT-2 small shape (the paper's), batch 32,
#      label-position logits on and off, fp32 and bf16, with peak memory (alone on the GPU); and the
#      teacher at a 128k vocabulary (4 layers x 768), fp32 against bf16 (issue 36's pair);
#   3. the paper preset's pipeline shortened (`reproduce.sh PRESET=paper` on configs derived from
#      recipes/configs/4x4_mult/paper: few steps per stage, a random-init GPT-2-small-shaped model standing
#      in for the Hub's `gpt2`, GPT-2's BPE tokenizer, bf16): samples/s, peak GPU memory and validation
#      exact match per stage, then the evaluation table (exact match and generation speed, batch 1 and 64);
#   4. beside 3 (small, so they barely load the GPU): the reference parity test on the GPU (fp32, TF32 off)
#      and real launches of a tiny teacher and mind-reading student under bf16 and DeepSpeed ZeRO-2 / ZeRO-3
#      (the frozen teacher as a ZeRO-3 inference engine): each must finish.
# GPU_CHECK_SMOKE=1 runs the same steps tiny on the CPU (tests/test_gpu_check.py does, so the
# script is known to run before a GPU session spends its minutes on it).
#
#   bash scripts/gpu_check.sh    # from the repository root; PY (default .venv/bin/python, else python3),
#                                # TEST_FILE (the paper's 4x4 test set; the pipeline's own test split is evaluated either way)
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || command -v python3)}
ACCELERATE=${ACCELERATE:-$([ -x "$(dirname "$PY")/accelerate" ] && echo "$(dirname "$PY")/accelerate" || command -v accelerate)}
CHECK_DIR=$(mkdir -p "${CHECK_DIR:-results/gpu_check}" && cd "${CHECK_DIR:-results/gpu_check}" && pwd)
TEST_FILE=${TEST_FILE:-$REPO/../shared/data/icot_original/4_by_4_mult/test_bigbench.txt}
SMOKE=${GPU_CHECK_SMOKE:-}
# Per-launch limits, sized for the GPU session's 10 minutes; the CPU smoke path scales them up, since a
# loaded CPU (a test run beside training jobs) can take minutes over a tiny DeepSpeed launch.
LIMIT_SCALE=${LIMIT_SCALE:-$([ -n "$SMOKE" ] && echo 4 || echo 1)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
report="$CHECK_DIR/report.md"
echo "# Device check ($(date -u +%Y-%m-%dT%H:%MZ))" > "$report"
section() { echo -e "\n## $1\n"; }  # sections go to files that are joined into report.md in order
failed=0

echo "==> device"
{ section "Device"
  "$PY" - <<'PYEOF'
import importlib.metadata as metadata
import torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU path)"
print(f"- GPU: {gpu}; bf16 supported: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
versions = []
for name in ("torch", "transformers", "accelerate", "datasets", "deepspeed", "pyarrow"):
    try:
        versions.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        versions.append(f"{name} missing")
print(f"- {', '.join(versions)}; CUDA {torch.version.cuda}")
PYEOF
} >> "$report" 2>&1
cat "$report"

echo "==> training throughput ($(date +%T))"
{ section "Training throughput (alone on the device)"
  if [ -n "$SMOKE" ]; then
    "$PY" "$REPO/benchmarks/train_throughput.py" --smoke --output_dir "$CHECK_DIR/throughput_smoke" > "$CHECK_DIR/throughput.log" 2>&1 || failed=1
    tail -n +3 "$CHECK_DIR/throughput_smoke/train_throughput.md"
  else
    for precision in bf16 fp32; do  # GPT-2 small (the paper's shape) at the paper's batch 32
      flag=$([ "$precision" = bf16 ] && echo --bf16 || true)
      timeout $((200 * LIMIT_SCALE)) "$PY" "$REPO/benchmarks/train_throughput.py" --shape gpt2-small $flag --batch_sizes 32 --steps 40 --warmup 10 \
        --output_dir "$CHECK_DIR/throughput_$precision" >> "$CHECK_DIR/throughput.log" 2>&1 || { echo "- $precision: FAILED or timed out, see throughput.log"; failed=1; }
      tail -n +3 "$CHECK_DIR/throughput_$precision/train_throughput.md" 2>/dev/null
    done
    # issue 36's pair at a Llama-3-sized vocabulary: the output layer in the compute dtype under bf16
    timeout $((200 * LIMIT_SCALE)) "$PY" "$REPO/benchmarks/train_throughput.py" --shape gpt2-small --stages teacher --vocab llama128k \
      --precisions fp32 bf16 --label_logits on --batch_sizes 32 --steps 40 --warmup 10 --output_dir "$CHECK_DIR/throughput_128k" \
      >> "$CHECK_DIR/throughput.log" 2>&1 || { echo "- 128k vocabulary: FAILED or timed out, see throughput.log"; failed=1; }
    tail -n +3 "$CHECK_DIR/throughput_128k/train_throughput.md" 2>/dev/null
  fi
} > "$CHECK_DIR/section_throughput.md" 2>&1
cat "$CHECK_DIR/section_throughput.md"

# Beside the pipeline: parity on the device and the DeepSpeed launches (tiny models).
side_checks() {
  section "Reference parity (tests/test_reference_parity.py)"
  local parity_device; parity_device=$([ -n "$SMOKE" ] && echo cpu || echo cuda)
  if ICOT_PARITY_DEVICE=$parity_device "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/test_reference_parity.py" > "$CHECK_DIR/parity.log" 2>&1; then
    echo "- on $parity_device: passed ($(tail -n 1 "$CHECK_DIR/parity.log"))"
  else
    echo "- on $parity_device: FAILED ($(tail -n 1 "$CHECK_DIR/parity.log"))"; return 1
  fi
  section "Launches: bf16 and DeepSpeed"
  local data="$CHECK_DIR/launch_data" status=0
  "$PY" "$REPO/dataset_scripts/make_multiplication.py" --digits 2 --train_size 512 --valid_size 16 --test_size 16 --output_dir "$data" > /dev/null 2>&1
  local model='{model_type: gpt2, n_layer: 2, n_embd: 64, n_head: 2, n_positions: 128}'
  local common=(--dataset_name_or_path "$data" --max_steps 8 --per_device_train_batch_size 16 --eval_strategy no --save_strategy no --overwrite_output_dir true)
  local precision; precision=$([ -n "$SMOKE" ] && echo no || echo bf16)
  launch() {  # launch NAME CONFIG RECIPE ARGS...
    local name=$1 config=$2 recipe=$3; shift 3
    local extra=(--mixed_precision "$precision")
    [ -n "$SMOKE" ] && [ "$config" = gpu ] && extra+=(--cpu)
    if timeout $((240 * LIMIT_SCALE)) "$ACCELERATE" launch --config_file "$REPO/recipes/accelerate_configs/$config.yaml" "${extra[@]}" "$REPO/recipes/$recipe.py" "${common[@]}" \
         --output_dir "$CHECK_DIR/launch/$name" "$@" > "$CHECK_DIR/launch_$name.log" 2>&1; then
      echo "- $name ($config, $precision): finished, train_loss $("$PY" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['train_loss'], 4))" "$CHECK_DIR/launch/$name/training_complete.json")"
    else
      echo "- $name ($config, $precision): FAILED, see launch_$name.log: $(grep -m1 -E 'Error|error:' "$CHECK_DIR/launch_$name.log" | cut -c1-300)"; status=1
    fi
  }
  launch teacher_gpu gpu teacher --model_config "$model"
  launch teacher_zero2 deepspeed_zero2 teacher --model_config "$model"
  if [ -z "$SMOKE" ] || "$PY" -c "import deepspeed" 2>/dev/null; then
    launch teacher_zero3 deepspeed_zero3 teacher --model_config "$model"
    launch mind_reading_zero3 deepspeed_zero3 mind_reading --teacher_name_or_path "$CHECK_DIR/launch/teacher_gpu" --init_from_teacher true
  fi
  return $status
}
echo "==> parity and DeepSpeed launches, beside the paper pipeline ($(date +%T))"
side_checks > "$CHECK_DIR/section_side.md" 2>&1 &
side=$!

echo "==> the paper preset's pipeline, shortened ($(date +%T))"
paper="$CHECK_DIR/paper"
mkdir -p "$paper"
if [ -n "$SMOKE" ]; then shape="2 32 2" steps=4 train=256 eval_n=8; else shape="12 768 12" steps=${PAPER_STEPS:-200} train=8000 eval_n=256; fi
# A random-init model of GPT-2 small's shape with GPT-2's tokenizer stands in for the Hub's `gpt2`
# (no Hub there); the configs are the paper preset's with sizes, steps and paths shortened.
"$PY" - "$REPO" "$paper" "$steps" "$train" "$eval_n" $shape > "$paper/prepare.log" 2>&1 <<'PYEOF' || { echo "preparing the paper pipeline failed"; cat "$paper/prepare.log"; failed=1; }
import sys
from pathlib import Path

import yaml
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, f"{sys.argv[1]}/benchmarks")
from train_throughput import gpt2_tokenizer

repo, paper = Path(sys.argv[1]), Path(sys.argv[2])
steps, train, eval_n, layers, width, heads = (int(v) for v in sys.argv[3:9])
stand_in = paper / "gpt2"
gpt2_tokenizer().save_pretrained(stand_in)
GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=heads)).save_pretrained(stand_in)
configs = paper / "configs"
configs.mkdir(exist_ok=True)
for source in sorted((repo / "recipes/configs/4x4_mult/paper").glob("*.yaml")):
    config = yaml.safe_load(source.read_text())
    if source.stem == "data":
        config.update(train_size=train, valid_size=eval_n, test_size=eval_n)
    else:
        config = {k: v for k, v in config.items() if k not in ("num_train_epochs", "save_steps", "metric_for_best_model", "greater_is_better")}
        config.update(dataset_name_or_path=str(paper / "data"), max_steps=steps, logging_steps=max(1, steps // 5), eval_strategy="no",
                      save_strategy="no", load_best_model_at_end=False, report_to="none")
        if config.get("eval_exact_match_samples"):
            config["eval_exact_match_samples"] = min(eval_n, 128)
        for key in ("model_name_or_path", "tokenizer_name_or_path"):
            if key in config:
                config[key] = str(stand_in)
        if source.stem == "stepwise":  # the reference's one-token schedule, compressed to fit the steps
            config.update(removal_interval_steps=max(1, steps // 10), keep_best_fully_removed=False)
    (configs / source.name).write_text(yaml.safe_dump(config, sort_keys=False))
print(f"configs in {configs}; stand-in {layers} x {width} in {stand_in}")
PYEOF
tests=()
[ -f "$TEST_FILE" ] && tests=(TEST_FILE="$TEST_FILE")
# shellcheck disable=SC2086
(cd "$paper" && env TASK=4x4_mult PRESET=paper CONFIGS="$paper/configs" OUT="$paper/outputs" RESULTS="$paper/results" PY="$PY" ACCELERATE="$ACCELERATE" \
   LAUNCH_ARGS="--mixed_precision $([ -n "$SMOKE" ] && echo "no --cpu" || echo bf16)" "${tests[@]}" \
   EVAL_ARGS="--max_examples $eval_n --max_examples_batch1 $([ -n "$SMOKE" ] && echo 4 || echo 64)" \
   timeout "${PAPER_SECONDS:-300}" bash "$REPO/scripts/reproduce.sh" > "$paper/reproduce.log" 2>&1) || { echo "paper pipeline FAILED or timed out: see paper/reproduce.log"; tail -n 15 "$paper/reproduce.log"; failed=1; }
{ section "The paper preset's pipeline, shortened ($steps steps per stage, $([ -n "$SMOKE" ] && echo "fp32 on the CPU" || echo bf16))"
  "$PY" - "$paper" <<'PYEOF'
import json, sys
from pathlib import Path
paper = Path(sys.argv[1])
print("Stages trained from a random-init model of GPT-2 small's shape (no Hub): exact match after this few steps says the stage"
      " runs, not what the paper preset reaches.\n")
print("| stage | steps | train samples/s | peak GPU memory (MiB) | train loss | validation exact match |")
print("|---|---|---|---|---|---|")
for stage in ("teacher", "no_cot", "mind_reading", "emulator", "coupled", "stepwise"):
    marker = paper / "outputs" / stage / "training_complete.json"
    if not marker.is_file():
        print(f"| {stage} | not finished | | | | |")
        continue
    m = json.loads(marker.read_text())
    em = m.get("eval_exact_match")
    print(f"| {stage} | {m['run']['settings'].get('max_steps', '')} | {m.get('train_samples_per_second', 0):.1f} | {m.get('peak_gpu_memory_mb', '-')} | "
          f"{m.get('train_loss', float('nan')):.3f} | {'-' if em is None else f'{em:.3f}'} |")
results = paper / "results" / "results.md"
print("\nEvaluation (`recipes/evaluate_models.py`):\n\n" + (results.read_text() if results.is_file() else "not written"))
PYEOF
} > "$CHECK_DIR/section_paper.md" 2>&1
cat "$CHECK_DIR/section_paper.md"

wait "$side" || failed=1
cat "$CHECK_DIR/section_side.md"
cat "$CHECK_DIR/section_throughput.md" "$CHECK_DIR/section_paper.md" "$CHECK_DIR/section_side.md" >> "$report"
grep -q FAILED "$report" && failed=1
echo "==> report: $report ($(date +%T))"
exit $failed

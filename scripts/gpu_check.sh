#!/usr/bin/env bash
# The device check: one short script for a machine with a GPU (about 8 minutes on one H200: run it once, with timeout_s 600),
# for what the 2-core CPU cannot show. Writes results/gpu_check/ (report.md and the raw files):
#   1. the device, torch and CUDA versions;
#   2. the reference parity test on the GPU (fp32, TF32 off): the library equals the paper's code there too;
#   3. training throughput, teacher and mind-reading student, GPT-2 small shape and the issue's
#      8 x 128, batch 32 and 64, label-position logits on and off, fp32 and bf16, with peak memory;
#   4. real launches of a tiny teacher and mind-reading student under bf16 and DeepSpeed ZeRO-2 / ZeRO-3
#      (and the frozen teacher as a ZeRO-3 inference engine): each must finish.
# GPU_CHECK_SMOKE=1 runs the same steps tiny on the CPU (tests/test_gpu_check.py does, so the
# script is known to run before a GPU session spends its minutes on it).
#
#   bash scripts/gpu_check.sh            # on the GPU machine, from the repository root
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
ACCELERATE=${ACCELERATE:-$(dirname "$PY")/accelerate}
OUT=${OUT:-results/gpu_check}
SMOKE=${GPU_CHECK_SMOKE:-}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
report="$OUT/report.md"
echo "# Device check ($(date -u +%Y-%m-%dT%H:%MZ))" > "$report"
step() { echo "==> $1"; echo -e "\n## $1\n" >> "$report"; }

step "Device"
"$PY" - >> "$report" <<'PYEOF'
import torch, transformers
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU path)"
print(f"- GPU: {gpu}\n- torch {torch.__version__}, CUDA {torch.version.cuda}, transformers {transformers.__version__}")
print(f"- bf16 supported: {torch.cuda.is_available() and torch.cuda.is_bf16_supported()}")
PYEOF

step "Reference parity (tests/test_reference_parity.py)"
parity_device=$([ -n "$SMOKE" ] && echo cpu || echo cuda)
if ICOT_PARITY_DEVICE=$parity_device "$PY" -m pytest -q "$REPO/tests/test_reference_parity.py" > "$OUT/parity.log" 2>&1; then status=passed; else status=FAILED; fi
echo "- on $parity_device: $status ($(tail -n 1 "$OUT/parity.log"))" >> "$report"

step "Training throughput"
if [ -n "$SMOKE" ]; then
  "$PY" "$REPO/benchmarks/train_throughput.py" --smoke --output_dir "$OUT/throughput_smoke" > "$OUT/throughput.log" 2>&1
  tail -n +3 "$OUT/throughput_smoke/train_throughput.md" >> "$report"
else
  # GPT-2 small (the paper's shape) at batch 32 in fp32 and bf16; the issue's 8 x 128 at 32 and 64 in fp32
  for run in "gpt2-small fp32 32" "gpt2-small bf16 32" "8x128 fp32 32 64"; do
    set -- $run
    shape=$1 precision=$2; shift 2
    flag=$([ "$precision" = bf16 ] && echo --bf16 || true)
    "$PY" "$REPO/benchmarks/train_throughput.py" --shape "$shape" $flag --batch_sizes "$@" --steps 30 --warmup 5 \
      --output_dir "$OUT/throughput_${shape}_$precision" >> "$OUT/throughput.log" 2>&1
    tail -n +3 "$OUT/throughput_${shape}_$precision/train_throughput.md" >> "$report"
  done
fi

step "Launches: bf16 and DeepSpeed"
data="$OUT/launch_data"
[ -f "$data/dataset_dict.json" ] || "$PY" "$REPO/dataset_scripts/make_multiplication.py" --digits 2 --train_size 512 --valid_size 16 --test_size 16 --output_dir "$data" > /dev/null
model='{model_type: gpt2, n_layer: 2, n_embd: 64, n_head: 2, n_positions: 128}'
common=(--dataset_name_or_path "$data" --max_steps 8 --per_device_train_batch_size 16 --eval_strategy no --save_strategy no --overwrite_output_dir true)
launch() {  # launch NAME CONFIG PRECISION RECIPE ARGS...
  local name=$1 config=$2 precision=$3 recipe=$4; shift 4
  local extra=(--mixed_precision "$precision")
  [ -n "$SMOKE" ] && [ "$config" = gpu ] && extra+=(--cpu)
  if "$ACCELERATE" launch --config_file "$REPO/recipes/accelerate_configs/$config.yaml" "${extra[@]}" "$REPO/recipes/$recipe.py" "${common[@]}" \
       --output_dir "$OUT/launch/$name" "$@" > "$OUT/launch_$name.log" 2>&1; then
    echo "- $name ($config, $precision): finished, train_loss $("$PY" -c "import json,sys; print(round(json.load(open(sys.argv[1]))['train_loss'], 4))" "$OUT/launch/$name/training_complete.json")" >> "$report"
  else
    echo "- $name ($config, $precision): FAILED, see launch_$name.log" >> "$report"; failed=1
  fi
}
failed=0
precision=$([ -n "$SMOKE" ] && echo no || echo bf16)
launch teacher_gpu gpu "$precision" teacher --model_config "$model"
launch teacher_zero2 deepspeed_zero2 "$precision" teacher --model_config "$model"
if [ -z "$SMOKE" ] || "$PY" -c "import deepspeed" 2>/dev/null; then
  launch teacher_zero3 deepspeed_zero3 "$precision" teacher --model_config "$model"
  launch mind_reading_zero3 deepspeed_zero3 "$precision" mind_reading --teacher_name_or_path "$OUT/launch/teacher_gpu" --init_from_teacher true
fi
echo "==> report: $report"
cat "$report"
exit $failed

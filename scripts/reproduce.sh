#!/usr/bin/env bash
# The paper's pipeline end to end for one task:
#   data -> teacher -> (mind-reading student, thought emulator) -> coupled -> evaluation
# plus ICoT-SI from the same teacher and a no-CoT baseline of the teacher's size and example
# budget, then the results table and the learning curves (results/$TASK/).
# Every stage is launched each time with --rerun_if_changed: a stage whose finished model was
# built from the same settings and upstream models is a no-op, an interrupted one resumes from
# its last checkpoint, and one whose config or upstream model changed (a retrained teacher)
# trains afresh (icot_hf/run_record.py). So re-running continues or refreshes the run.
#
#   TASK=4x4_mult PRESET=cpu TEST_FILE=../shared/data/icot_original/4_by_4_mult/test_bigbench.txt \
#       bash scripts/reproduce.sh
#
# Paths in the YAML configs (data, outputs) are relative to the current directory.
# METHODS lists the implicit methods to train and evaluate: "kd" (the paper's distillation),
# "stepwise" (ICoT-SI from the same teacher), "coconut" (continuous thought, from the same teacher)
# and/or "codi" (self-distilled continuous thought, from the same teacher); by default every one of
# them the task has configs for.
# The CPU presets train in bf16 where the CPU has avx512_bf16 or AMX (cpu_bf16: auto), fp32 elsewhere.
# A stepwise preset with save_frontier_points also evaluates ICoT-SI's model at each stage's end
# (results.json `frontier`, frontier.png).
# LANES=2 (the default on a machine with 2+ cores) trains ICoT-SI in one process and the
# no-CoT baseline and ICoT-KD stages in another, each on half the cores, after the teacher;
# the second lane's output goes to its logs/ files only. LANES=1 runs everything in turn.
# CONFIGS, OUT, RESULTS, PY, ACCELERATE, ACCELERATE_CONFIG and LAUNCH_ARGS can be overridden.
# The whole body is one { ... } block: bash reads it completely before running it, so editing
# this file during a long run cannot change what the run executes.
{
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TASK=${TASK:-4x4_mult}
PRESET=${PRESET:-cpu}
TEST_FILE=${TEST_FILE:-}
PY=${PY:-$REPO/.venv/bin/python}
ACCELERATE=${ACCELERATE:-$REPO/.venv/bin/accelerate}
DEFAULT_LAUNCH=cpu
[ "$PRESET" = cpu ] || DEFAULT_LAUNCH=gpu  # the paper presets train on a GPU
# in fp32 as the paper's code does (gpu.yaml's bf16 is for users who choose it)
DEFAULT_LAUNCH_ARGS=""
[ "$PRESET" = cpu ] || DEFAULT_LAUNCH_ARGS="--mixed_precision no"
LAUNCH_ARGS=${LAUNCH_ARGS:-$DEFAULT_LAUNCH_ARGS}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-$REPO/recipes/accelerate_configs/$DEFAULT_LAUNCH.yaml}
EXTRA_ARGS=${EXTRA_ARGS:-}
METHODS=${METHODS:-}
CORES=$(nproc 2>/dev/null || echo 1)
LANES=${LANES:-$([ "$CORES" -ge 2 ] && [ "$PRESET" = cpu ] && echo 2 || echo 1)}
for method in $METHODS; do
  case $method in kd|stepwise|coconut|codi) ;; *) echo "reproduce: unknown method '$method' in METHODS (use kd, stepwise, coconut and/or codi)"; exit 2;; esac
done
wants() { [[ " $METHODS " == *" $1 "* ]]; }
SUFFIX=""
[ "$PRESET" = cpu ] || SUFFIX="-$PRESET"
CONFIGS=${CONFIGS:-$REPO/recipes/configs/$TASK${SUFFIX:+/$PRESET}}
OUT=${OUT:-outputs/$TASK$SUFFIX}
RESULTS=${RESULTS:-results/$TASK$SUFFIX}
[ -d "$CONFIGS" ] || { echo "reproduce: no configs in $CONFIGS (TASK=$TASK PRESET=$PRESET)"; exit 2; }
# By default every method this task has configs for.
[ -n "$METHODS" ] || METHODS="kd$([ -f "$CONFIGS/stepwise.yaml" ] && echo " stepwise")$([ -f "$CONFIGS/coconut.yaml" ] && echo " coconut")$([ -f "$CONFIGS/codi.yaml" ] && echo " codi")"
mkdir -p "$OUT" "$RESULTS" logs
export HF_HUB_DISABLE_TELEMETRY=1
STARTED=$(date +%s)
EVENTS=logs/${TASK}_progress.txt  # `start|end NAME TIME` as stages begin and end, read by the progress line
PROGRESS_EVERY=${PROGRESS_EVERY:-300}  # seconds between progress lines while the two lanes train
PHASES=()  # the run as `python -m icot_hf.progress` reads it: phases in turn, lanes (|) side by side, name:output_dir
progress() {  # one line: each running stage's step and time left, and the whole run's (estimates from the last recorded run)
  local phases=(); for phase in "${PHASES[@]}"; do phases+=(--phase "$phase"); done
  "$PY" -m icot_hf.progress --events "$EVENTS" --since "$STARTED" --reference "$RESULTS/results.json" "${phases[@]}" 2>/dev/null || true
}

timed() {  # timed NAME COMMAND...: run, log to logs/, and record the wall time of stages that trained (MARKER=their output's marker)
  local name=$1; shift
  local t0; t0=$(date +%s)
  local marker=${MARKER:-}
  local before=""; [ -n "$marker" ] && [ -f "$marker" ] && before=$(stat -c %Y.%s "$marker")
  echo "==> [$TASK] $name  ($(date +%H:%M:%S))"
  echo "start $name $t0" >> "$EVENTS"
  [ "${#PHASES[@]}" -gt 0 ] && progress
  if [ -n "${QUIET:-}" ]; then
    "$@" > "logs/${TASK}_${name}.log" 2>&1 || { echo "==> [$TASK] $name FAILED: see logs/${TASK}_${name}.log"; tail -n 20 "logs/${TASK}_${name}.log"; return 1; }
  else
    "$@" 2>&1 | tee "logs/${TASK}_${name}.log" || return 1
  fi
  echo "end $name $(date +%s)" >> "$EVENTS"
  if [ -n "$marker" ] && [ -f "$marker" ] && [ "$(stat -c %Y.%s "$marker")" = "$before" ]; then
    echo "==> [$TASK] $name: already done with these settings and upstream models ($(dirname "$marker"))"
    return
  fi
  # with the marker's path and hash, so results count this time only while that marker is the one this run wrote
  [ -n "$marker" ] && [ -f "$marker" ] && \
    echo "$name $(( $(date +%s) - t0 )) $marker $(sha256sum "$marker" | cut -d' ' -f1)" >> "$RESULTS/stage_seconds.txt"
  [ -z "${QUIET:-}" ] || echo "==> [$TASK] $name finished in $(( $(date +%s) - t0 )) s"
}

stage() {  # stage NAME RECIPE CONFIG OUTPUT_DIR [extra args]
  local name=$1 recipe=$2 config=$3 output=$4; shift 4
  if [ -n "${PLANNING:-}" ]; then  # only list the stage for the one up-front check (icot_hf.recipes.finished)
    # shellcheck disable=SC2086
    PLAN+=("$recipe" --config "$CONFIGS/$config.yaml" --output_dir "$output" --rerun_if_changed true "$@" $EXTRA_ARGS ::)
    return
  fi
  if [ -n "${ALL_FINISHED:-}" ]; then
    echo "==> [$TASK] $name: already done with these settings and upstream models ($output)"
    printf 'start %s %s\nend %s %s\n' "$name" "$(date +%s)" "$name" "$(date +%s)" >> "$EVENTS"
    return
  fi
  # shellcheck disable=SC2086
  MARKER="$output/training_complete.json" timed "$name" "$ACCELERATE" launch --config_file "$ACCELERATE_CONFIG" $LAUNCH_ARGS "$REPO/recipes/$recipe.py" \
    --config "$CONFIGS/$config.yaml" --output_dir "$output" --rerun_if_changed true "$@" $EXTRA_ARGS
}

# 1. data
DATA=$(awk '/^dataset_name_or_path:/{print $2}' "$CONFIGS/teacher.yaml")
if [ -f "$CONFIGS/data.yaml" ]; then  # the data script keeps data it made with these settings, remakes changed data, refuses foreign data
  echo "==> [$TASK] data -> $DATA"
  args=$($PY -c "import sys,yaml; d=yaml.safe_load(open(sys.argv[1])); print(' '.join(f'--{k} {v}' for k,v in d.items() if k!='script'))" "$CONFIGS/data.yaml")
  script=$($PY -c "import sys,yaml; print(yaml.safe_load(open(sys.argv[1])).get('script','make_multiplication'))" "$CONFIGS/data.yaml")
  excludes=()
  [ -n "$TEST_FILE" ] && [ "$script" = make_multiplication ] && excludes=(--exclude_files "$TEST_FILE")
  # shellcheck disable=SC2086
  MARKER="$DATA/icot_data_settings.json" timed data "$PY" "$REPO/dataset_scripts/$script.py" $args "${excludes[@]}" --output_dir "$DATA" --rerun_if_changed
fi

# 1b. tokenizer, for tasks that train one (tokenizer.yaml)
if [ -f "$CONFIGS/tokenizer.yaml" ]; then
  TOKENIZER=$($PY -c "import sys,yaml; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$CONFIGS/tokenizer.yaml")
  if [ ! -f "$TOKENIZER/tokenizer.json" ]; then
    args=$($PY -c "import sys,yaml; d=yaml.safe_load(open(sys.argv[1])); print(' '.join(f'--{k} {v}' for k,v in d.items()))" "$CONFIGS/tokenizer.yaml")
    # shellcheck disable=SC2086
    timed tokenizer "$PY" "$REPO/dataset_scripts/train_tokenizer.py" $args
  fi
fi

# The plan the progress line follows (the same stages as below, in the same order).
lane1="" lane2="no_cot:$OUT/no_cot"
wants stepwise && lane1="stepwise:$OUT/stepwise"
wants coconut && lane1="$lane1 coconut:$OUT/coconut"
wants kd && lane2="$lane2 mind_reading:$OUT/mind_reading emulator:$OUT/emulator coupled:$OUT/coupled"
wants codi && lane2="$lane2 codi:$OUT/codi"
PHASES=("teacher:$OUT/teacher")
if [ "$LANES" -ge 2 ] && [ -n "$lane1" ]; then PHASES+=("$lane1 | $lane2"); else PHASES+=("$lane2 $lane1"); fi
PHASES+=("evaluate")

stepwise_lane() {
  if wants stepwise; then stage stepwise stepwise stepwise "$OUT/stepwise" --teacher_name_or_path "$OUT/teacher"; fi
  if wants coconut; then stage coconut coconut coconut "$OUT/coconut" --teacher_name_or_path "$OUT/teacher"; fi
}
baseline_and_kd_lane() {
  stage no_cot teacher no_cot "$OUT/no_cot"
  if wants kd; then
    stage mind_reading mind_reading mind_reading "$OUT/mind_reading" --teacher_name_or_path "$OUT/teacher"
    stage emulator emulator emulator "$OUT/emulator" --teacher_name_or_path "$OUT/teacher"
    stage coupled couple couple "$OUT/coupled" --student_name_or_path "$OUT/mind_reading" --emulator_name_or_path "$OUT/emulator"
  fi
  if wants codi; then stage codi codi codi "$OUT/codi" --teacher_name_or_path "$OUT/teacher"; fi
}
# Every stage finished with these settings already (a re-run right after a run)? One launch asks for
# all of them; otherwise each stage is launched and decides for itself, as below.
PLAN=()
PLANNING=1; stage teacher teacher teacher "$OUT/teacher"; stepwise_lane; baseline_and_kd_lane; PLANNING=""
# shellcheck disable=SC2086
if "$ACCELERATE" launch --config_file "$ACCELERATE_CONFIG" $LAUNCH_ARGS -m icot_hf.recipes.finished "${PLAN[@]}" > "logs/${TASK}_finished.log" 2>&1; then
  ALL_FINISHED=1
  echo "==> [$TASK] every stage is finished with these settings and upstream models: nothing to train"
fi

# 2. the explicit-CoT teacher (all cores)
stage teacher teacher teacher "$OUT/teacher"

# 3. two lanes after the teacher: ICoT-SI, then Coconut | no-CoT baseline, then ICoT-KD's stages, then CODI
models=(--no_cot_model "$OUT/no_cot" --teacher_model "$OUT/teacher")
curves=(teacher="$OUT/teacher" no_cot="$OUT/no_cot")
if wants stepwise; then
  [ -f "$CONFIGS/stepwise.yaml" ] || { echo "reproduce: METHODS has stepwise but $CONFIGS/stepwise.yaml is missing"; exit 2; }
  models+=(--stepwise_model "$OUT/stepwise")
  curves+=(stepwise="$OUT/stepwise")
fi
if wants kd; then
  models+=(--implicit_model "$OUT/coupled")
  curves+=(mind_reading="$OUT/mind_reading" emulator="$OUT/emulator" coupled="$OUT/coupled")
fi
if wants coconut; then
  [ -f "$CONFIGS/coconut.yaml" ] || { echo "reproduce: METHODS has coconut but $CONFIGS/coconut.yaml is missing"; exit 2; }
  models+=(--coconut_model "$OUT/coconut")
  curves+=(coconut="$OUT/coconut")
fi
if wants codi; then
  [ -f "$CONFIGS/codi.yaml" ] || { echo "reproduce: METHODS has codi but $CONFIGS/codi.yaml is missing"; exit 2; }
  models+=(--codi_model "$OUT/codi")
  curves+=(codi="$OUT/codi")
fi
if [ "$LANES" -ge 2 ] && { wants stepwise || wants coconut; }; then
  threads=$(( CORES / 2 > 0 ? CORES / 2 : 1 ))
  echo "==> [$TASK] two lanes, $threads thread(s) each: ICoT-SI here; no-CoT and ICoT-KD in logs/${TASK}_*.log"
  ( export OMP_NUM_THREADS=$threads QUIET=1; baseline_and_kd_lane ) &
  other=$!
  # every PROGRESS_EVERY seconds, both lanes in one line (the second lane's bars are in its log)
  # (its sleep is killed with it: a sleep left behind would hold the output open, and a pipe reading it, for minutes)
  ( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do sleep "$PROGRESS_EVERY" & nap=$!; wait "$nap"; echo; progress; done ) &
  monitor=$!
  trap 'kill "$monitor" 2>/dev/null || true' EXIT
  OMP_NUM_THREADS=$threads stepwise_lane || { kill "$other" 2>/dev/null; wait "$other" 2>/dev/null; exit 1; }
  wait "$other" || { echo "reproduce: the no-CoT / ICoT-KD lane failed"; exit 1; }
  kill "$monitor" 2>/dev/null || true
else
  baseline_and_kd_lane
  stepwise_lane
fi

# 5. evaluation (with ICoT-SI's frontier when its run saved one: save_frontier_points)
if wants stepwise && [ -f "$OUT/stepwise/frontier/index.json" ]; then models+=(--frontier_dir "$OUT/stepwise/frontier"); fi
tests=()
[ -n "$TEST_FILE" ] && tests=(--test_files "$TEST_FILE")
timed evaluate "$PY" "$REPO/recipes/evaluate_models.py" --task "$TASK" --dataset_name_or_path "$DATA" --split test "${tests[@]}" \
  "${models[@]}" \
  --output_dir "$RESULTS" --stage_lanes "$( [ "$LANES" -ge 2 ] && wants stepwise && echo 2 || echo 1)" ${EVAL_ARGS:-}
# 6. learning curves of every stage (examples seen -> validation exact match, token accuracy)
"$PY" -m icot_hf.curves --output_dir "$RESULTS" --title "$TASK" "${curves[@]}"
echo "==> [$TASK] finished in $(( $(date +%s) - STARTED )) s; results in $RESULTS/"
exit 0
}

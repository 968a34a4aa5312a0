#!/usr/bin/env bash
# Training curves of one small model per recipe, from the same random init,
# data, batches and seed, and the check that the 8-bit recipes end where bf16
# does: each recipe's final validation loss within TOL (default 2%) of bf16's.
#
#   scripts/train_curves.sh [CONFIG.json]      (default configs/tiny-llama.json)
#
# Data: `halo data synth` with the config's vocabulary (DOCS documents).
# Writes under $OUT (default runs/curves): one run directory per recipe,
# curves.txt (the table) and report.html (the loss curves, `halo report`).
# Environment (defaults in brackets):
#   HALO_BIN  [build/halo]   RECIPES [bf16,halo2-int8,halo1-fp8]   DEVICE [auto]
#   STEPS [300]  BATCH [8]  SEQ_LEN [128]  LR [3e-3]  DOCS [2000]  SEED [0]  TOL [0.02]
#   LM_HEAD_RECIPE [bf16]: the LM head's recipe in the 8-bit runs (bf16 keeps a bf16 head)
# Exit status 0 when every recipe ran and is within TOL of bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/tiny-llama.json}
halo=${HALO_BIN:-build/halo}
out=${OUT:-runs/curves}
recipes=${RECIPES:-bf16,halo2-int8,halo1-fp8}
steps=${STEPS:-300} batch=${BATCH:-8} seq_len=${SEQ_LEN:-128} lr=${LR:-3e-3}
docs=${DOCS:-2000} seed=${SEED:-0} tol=${TOL:-0.02} device=${DEVICE:-auto} head=${LM_HEAD_RECIPE:-bf16}
[ -x "$halo" ] || { echo "train_curves: no halo program at $halo (set HALO_BIN)"; exit 1; }
vocab=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$config")

mkdir -p "$out"
"$halo" data synth --out "$out/data.tok" --docs "$docs" --vocab "$vocab" --seed "$seed" --max-len "$seq_len"
report_args=()
IFS=, read -r -a recipe_list <<< "$recipes"
for recipe in "${recipe_list[@]}"; do
  rm -rf "${out:?}/$recipe"
  head_recipe=bf16
  [ "$recipe" = bf16 ] || head_recipe=$head
  "$halo" train --init "$config" --data "$out/data.tok" --recipe "$recipe" --steps "$steps" --batch "$batch" \
    --seq_len "$seq_len" --lr "$lr" --schedule cosine --warmup_steps $((steps / 15)) --min_lr_ratio 0.1 \
    --weight_decay 0 --val_fraction 0.05 --eval_interval $((steps / 3)) --eval_batches 0 --save_interval 0 \
    --log_interval $((steps / 10)) --seed "$seed" --device "$device" --save_dtype f32 --lm_head_recipe "$head_recipe" --out "$out/$recipe"
  report_args+=(--run "$recipe=$out/$recipe")
done
"$halo" report "${report_args[@]}" --out "$out/report.html" --title "halo training curves: $(basename "$config")" \
  --notes "$steps steps of $batch x $seq_len tokens, lr $lr, seed $seed, device $device, LM head of the 8-bit runs $head; synthetic data"

# The table: final validation loss and the mean training loss of the last tenth of the steps.
python3 - "$out" "$tol" "${recipe_list[@]}" <<'EOF' | tee "$out/curves.txt"
import json, sys
out, tol, recipes = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
rows = {}
for r in recipes:
    recs = [json.loads(l) for l in open(f"{out}/{r}/metrics.jsonl")]
    train = [x["loss"] for x in recs if "loss" in x and not x.get("skipped")]
    val = [x["val_loss"] for x in recs if "val_loss" in x]
    tail = train[-max(1, len(train) // 10):]
    rows[r] = (train[0], sum(tail) / len(tail), val[-1] if val else float("nan"), len(train))
base = rows.get("bf16")
ok = base is not None
print(f"{'recipe':<14} {'steps':>6} {'first loss':>11} {'last-10% loss':>14} {'val loss':>9} {'vs bf16':>9}")
for r, (first, last, val, n) in rows.items():
    rel = (val - base[2]) / base[2] if base else float("nan")
    bad = r != "bf16" and not abs(rel) <= tol
    ok &= not bad
    print(f"{r:<14} {n:>6} {first:>11.4f} {last:>14.4f} {val:>9.4f} {100 * rel:>+8.2f}%{'  OVER' if bad else ''}")
print(f"{'PASS' if ok else 'FAIL'}: every 8-bit recipe's final validation loss within {100 * tol:g}% of bf16's")
sys.exit(0 if ok else 1)
EOF

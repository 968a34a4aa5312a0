#!/usr/bin/env bash
# On the GPU machine: halo's training throughput against Hugging Face
# transformers (BF16, SDPA, fused AdamW: scripts/bench_hf.py) on the same model
# shapes, one table per shape.
#
#   scripts/bench_compare.sh [CONFIG ...]
#
# Default configs: configs/llama-3.2-1b.json configs/llama-3-8b-4layers.json.
# For each, at batch $BATCH x $SEQ_LEN (default 4 x 2048), one after the other:
#   python3 scripts/bench_hf.py --config CONFIG --batch B --seq-len T --steps S --warmup W --json
#   $HALO_BIN bench train --config CONFIG --recipe $RECIPES --batch B --seq-len T --json
# Every JSON line either prints (keys recipe, tokens_per_s, step_ms, mfu,
# peak_mem_bytes, batch, seq_len) is kept, tagged with bench_shape (the
# config's file name) and bench_source (transformers or halo). A command that
# fails, times out or leaves a recipe without a result gets an error record.
#
# Writes two files under $OUT (default ./gpu-logs):
#   bench_compare.jsonl   the JSON lines
#   bench_compare.txt     the tables: recipe, tokens/s, step ms, MFU (vs 989
#                         TFLOP/s BF16 dense), MFU vs 1979 TFLOP/s for the 8-bit
#                         recipes, peak GiB, ratio of tokens/s to transformers
# Everything else (progress, warnings) goes to the terminal only.
#
# Environment:
#   HALO_BIN     halo binary (default gpu-bin/halo, else build/halo)
#   OUT          output folder (default gpu-logs)
#   BATCH        sequences per step (default 4)
#   SEQ_LEN      tokens per sequence (default 2048)
#   RECIPES      halo recipes (default bf16,halo1-fp8,halo2-int8)
#   HF_STEPS     timed steps of bench_hf.py (default 20)
#   HF_WARMUP    warm-up steps of bench_hf.py (default 5)
#   HF_ARGS      more flags for bench_hf.py (e.g. --compile)
#   HALO_ARGS    more flags for halo bench train
#   MASTER_WEIGHTS  halo's optimizer settings, comma-separated (default fp32): fp32
#                (f32 master weights, f32 gradients), bf16 (bf16 weights and AdamW
#                states; rows named RECIPE/bf16-states) and/or bf16-grads (bf16
#                weights, AdamW states and weight gradients, all as transformers
#                keeps them; rows named RECIPE/bf16-grads)
#   RUN_TIMEOUT  seconds each command may run (default 240; 0: no limit)
#   PYTHON       python interpreter (default python3)
# Exit status: 0 when every run gave a result, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

out=${OUT:-gpu-logs}
batch=${BATCH:-4}
seq_len=${SEQ_LEN:-2048}
recipes=${RECIPES:-bf16,halo1-fp8,halo2-int8}
hf_steps=${HF_STEPS:-20}
hf_warmup=${HF_WARMUP:-5}
run_timeout=${RUN_TIMEOUT:-240}
master_weights=${MASTER_WEIGHTS:-fp32}
py=${PYTHON:-python3}
if [ $# -gt 0 ]; then
  configs=("$@")
else
  configs=(configs/llama-3.2-1b.json configs/llama-3-8b-4layers.json)
fi

halo=${HALO_BIN:-}
if [ -z "$halo" ]; then
  if [ -x gpu-bin/halo ]; then
    halo=gpu-bin/halo
  else
    halo=build/halo
  fi
fi

mkdir -p "$out" || exit 1
jsonl=$out/bench_compare.jsonl
table=$out/bench_compare.txt
: >"$jsonl"
: >"$table"
tmp=$(mktemp "${TMPDIR:-/tmp}/bench_compare.XXXXXX") || exit 1
trap 'rm -f "$tmp"' EXIT

# The JSON handling, in python3 (no jq here).
#   ingest SHAPE SOURCE RC RAWFILE JSONL FALLBACK_RECIPE EXPECTED_RECIPES [SUFFIX]
#          (SUFFIX is appended to every recipe name of the run)
#   table SHAPE CONFIG JSONL BATCH SEQ_LEN   (prints the shape's table)
#   status JSONL                             (exit 1 if any error record)
read -r -d '' PY <<'PYEOF'
import json, sys

GIB = 1024.0 ** 3
BF16_PEAK = 989e12    # H100 SXM dense BF16, FLOP/s (what mfu is measured against)
INT8_PEAK = 1979e12   # H100 SXM dense FP8 / INT8


def load(path):
    recs = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict):
                recs.append(r)
    return recs


def last_message(path):
    msg = ""
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("{"):
                msg = line
    return msg[:300]


def ingest(shape, source, rc, raw, jsonl, fallback, expected, suffix=""):
    rc = int(rc)
    recs = load(raw)
    seen = set(r.get("recipe") for r in recs)
    if rc in (124, 137):
        why = "timed out (RUN_TIMEOUT)"
    elif rc != 0:
        why = "exit status %d" % rc
    else:
        why = "no result printed"
    why_msg = last_message(raw)
    missing = [e for e in expected.split(",") if e and e not in seen]
    if not any("recipe" in r for r in recs):
        missing = missing or [fallback]
    for name in missing:
        recs.append({"recipe": name, "error": why, "message": why_msg})
    if rc != 0 and not missing and not any("error" in r for r in recs):
        # Every recipe reported but the command failed after: keep the numbers, note it.
        for r in recs:
            r.setdefault("warning", why)
    with open(jsonl, "a") as f:
        for r in recs:
            if "recipe" in r:
                r["recipe"] = str(r["recipe"]) + suffix
            r["bench_shape"] = shape
            r["bench_source"] = source
            f.write(json.dumps(r) + "\n")


def num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def is_8bit(recipe):
    r = recipe.lower()
    return "fp8" in r or "int8" in r or "8bit" in r


def table(shape, config, jsonl, batch, seq_len):
    batch, seq_len = int(batch), int(seq_len)
    by, order = {}, []
    for r in load(jsonl):
        if r.get("bench_shape") != shape or "recipe" not in r:
            continue
        key = (r.get("bench_source"), str(r["recipe"]))
        if key not in by:
            order.append(key)
        by[key] = r  # the last line of a recipe wins
    # transformers first, then halo's in its own order
    order.sort(key=lambda k: 0 if k[0] == "transformers" else 1)
    base = None
    for k in order:
        r = by[k]
        if k[0] == "transformers" and "error" not in r and num(r.get("tokens_per_s")):
            base = r
            break

    lines = ["%s (%s), batch %d x %d = %d tokens per step" % (shape, config, batch, seq_len, batch * seq_len)]
    if base is not None:
        lines.append("  transformers %s, torch %s, %s" % (base.get("transformers", "?"), base.get("torch", "?"),
                                                        base.get("device", "?")))
    head = "  %-26s %10s %9s %7s %10s %9s %9s" % ("recipe", "tokens/s", "step ms", "MFU", "MFU/1979T",
                                                 "peak GiB", "vs HF")
    lines.append(head)
    lines.append("  " + "-" * (len(head) - 2))
    for k in order:
        r = by[k]
        name = str(r["recipe"])
        if "error" in r:
            msg = str(r.get("error"))
            if r.get("message"):
                msg += ": " + str(r["message"])
            lines.append("  %-26s ERROR %s" % (name, msg[:160]))
            continue
        tps, ms, mfu, mem = r.get("tokens_per_s"), r.get("step_ms"), r.get("mfu"), r.get("peak_mem_bytes")
        peak = r.get("peak_flops") if num(r.get("peak_flops")) else BF16_PEAK
        cells = [
            "%10s" % ("{:,.0f}".format(tps) if num(tps) else "-"),
            "%9s" % ("%.1f" % ms if num(ms) else "-"),
            "%7s" % ("%.1f%%" % (100 * mfu) if num(mfu) else "-"),
            "%10s" % ("%.1f%%" % (100 * mfu * peak / INT8_PEAK) if num(mfu) and is_8bit(name) else "-"),
            "%9s" % ("%.2f" % (mem / GIB) if num(mem) else "-"),
            "%9s" % ("%.2fx" % (tps / base["tokens_per_s"]) if num(tps) and base is not None else "-"),
        ]
        note = []
        if r.get("batch") not in (None, batch) or r.get("seq_len") not in (None, seq_len):
            note.append("ran at %s x %s" % (r.get("batch"), r.get("seq_len")))
        if r.get("warning"):
            note.append(str(r["warning"]))
        lines.append("  %-26s %s%s" % (name, " ".join(cells), ("  (" + "; ".join(note) + ")") if note else ""))
    lines.append("")
    print("\n".join(lines))


def status(jsonl):
    return 1 if any("error" in r for r in load(jsonl)) else 0


cmd = sys.argv[1]
if cmd == "ingest":
    ingest(*sys.argv[2:10])
elif cmd == "table":
    table(*sys.argv[2:7])
elif cmd == "status":
    sys.exit(status(sys.argv[2]))
else:
    sys.exit("bench_compare: unknown helper command " + cmd)
PYEOF

# run RC_VAR -- CMD...: runs CMD (under the time limit), its stdout and stderr to
# the terminal and to $tmp.
run() {
  local t=()
  if [ "$run_timeout" != 0 ] && command -v timeout >/dev/null 2>&1; then
    t=(timeout -k 15 "$run_timeout")
  fi
  echo "+ $*" >&2
  ${t[@]+"${t[@]}"} "$@" 2>&1 | tee "$tmp"
  return "${PIPESTATUS[0]}"
}

{
  echo "bench_compare $(date -u '+%Y-%m-%d %H:%M UTC'), halo: $halo, recipes: $recipes"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv,noheader 2>/dev/null |
      sed 's/^/GPU: /'
  fi
  echo
} | tee -a "$table"

# shellcheck disable=SC2206  # word splitting of the extra flags is wanted
hf_extra=(${HF_ARGS:-})
# shellcheck disable=SC2206
halo_extra=(${HALO_ARGS:-})

for cfg in "${configs[@]}"; do
  shape=$(basename "$cfg" .json)
  if [ ! -f "$cfg" ]; then
    echo "bench_compare: no config $cfg" >&2
    printf '{"recipe": "-", "error": "no config file %s"}\n' "$cfg" >"$tmp"
    "$py" -c "$PY" ingest "$shape" none 1 "$tmp" "$jsonl" "-" ""
    "$py" -c "$PY" table "$shape" "$cfg" "$jsonl" "$batch" "$seq_len" >>"$table"
    continue
  fi

  echo "== $shape: transformers" >&2
  run "$py" scripts/bench_hf.py --config "$cfg" --batch "$batch" --seq-len "$seq_len" \
    --steps "$hf_steps" --warmup "$hf_warmup" --json ${hf_extra[@]+"${hf_extra[@]}"}
  rc=$?
  "$py" -c "$PY" ingest "$shape" transformers "$rc" "$tmp" "$jsonl" transformers-bf16 ""

  IFS=, read -r -a masters <<< "$master_weights"
  for master in "${masters[@]}"; do
    echo "== $shape: halo, $master master weights" >&2
    case $master in
      bf16-grads) optim=(--master-weights bf16 --grad-dtype bf16) suffix=/bf16-grads ;;
      bf16) optim=(--master-weights bf16) suffix=/bf16-states ;;
      *) optim=(--master-weights "$master") suffix="" ;;
    esac
    if [ -x "$halo" ]; then
      run "$halo" bench train --config "$cfg" --recipe "$recipes" --batch "$batch" --seq-len "$seq_len" \
        "${optim[@]}" --json ${halo_extra[@]+"${halo_extra[@]}"}
      rc=$?
    else
      echo "halo binary not found or not executable: $halo (set HALO_BIN)" | tee "$tmp" >&2
      rc=127
    fi
    "$py" -c "$PY" ingest "$shape" halo "$rc" "$tmp" "$jsonl" halo "$recipes" "$suffix"
  done

  "$py" -c "$PY" table "$shape" "$cfg" "$jsonl" "$batch" "$seq_len" >>"$table"
done

echo >&2
echo "== results ($jsonl, $table)" >&2
cat "$table"
"$py" -c "$PY" status "$jsonl"

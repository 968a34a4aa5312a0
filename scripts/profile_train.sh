#!/usr/bin/env bash
# Where the time of one training step goes, per GPU kernel: Nsight Compute
# (ncu) times every kernel of the last step of `halo bench train` (the span
# between cudaProfilerStart and Stop), then the kernels are grouped by name.
#
#   scripts/profile_train.sh CONFIG [RECIPE ...]     (default recipe bf16)
#
# Environment: HALO_BIN [gpu-bin/halo, else build/halo], BATCH [4], SEQ_LEN [2048],
# HALO_ARGS [none: more `halo bench train` options, e.g. --master-weights bf16],
# OUT [gpu-logs]: writes profile-RECIPE.csv (ncu's raw rows) and prints the
# table: kernel, calls, total ms, share of the step. Kernels run one at a time
# under ncu (no overlap), with the clocks and caches left alone.
set -uo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: scripts/profile_train.sh CONFIG [RECIPE ...]}
shift
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(bf16)
halo=${HALO_BIN:-gpu-bin/halo}
[ -x "$halo" ] || halo=build/halo
out=${OUT:-gpu-logs}
mkdir -p "$out"
command -v ncu >/dev/null || { echo "profile_train: ncu (Nsight Compute) is not on the PATH"; exit 1; }
status=0
for recipe in "${recipes[@]}"; do
  csv="$out/profile-$recipe.csv"
  ncu --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum \
    --csv --page raw --print-units base --log-file "$csv" \
    "$halo" bench train --config "$config" --recipe "$recipe" --batch "${BATCH:-4}" --seq-len "${SEQ_LEN:-2048}" \
    --steps 1 --warmup 2 ${HALO_ARGS:-} >/dev/null || { echo "profile_train: $recipe failed"; status=1; continue; }
  python3 - "$csv" "$recipe" "$config" <<'EOF' || status=1
import csv, re, sys
from collections import defaultdict
path, recipe, config = sys.argv[1:4]
rows = [r for r in csv.DictReader(l for l in open(path) if l.startswith('"')) if r.get("ID", "").isdigit()]
if not rows:
    sys.exit(f"profile_train: no kernels recorded in {path}")
def short(name):
    name = re.sub(r"^void ", "", name)
    for prefix in ("(anonymous namespace)::", "<unnamed>::", "halo::"):
        name = name.replace(prefix, "")
    return re.split(r"[(<]", name)[0][:72]
total, groups = 0.0, defaultdict(lambda: [0, 0.0])
for r in rows:
    ns = float(r["gpu__time_duration.sum"].replace(",", ""))
    g = groups[short(r["Kernel Name"])]
    g[0] += 1
    g[1] += ns * 1e-6  # ns -> ms
    total += ns * 1e-6
print(f"{config}, recipe {recipe}: {len(rows)} kernels, {total:.2f} ms of kernel time in one step")
print(f"{'kernel':<72} {'calls':>6} {'ms':>9} {'share':>7}")
for name, (n, ms) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
    print(f"{name:<72} {n:>6} {ms:>9.3f} {100 * ms / total:>6.1f}%")
print("the longest launches, in order of launch:")
longest = sorted(sorted(rows, key=lambda r: -float(r["gpu__time_duration.sum"].replace(",", "")))[:24],
                 key=lambda r: int(r["ID"]))
for r in longest:
    ms = float(r["gpu__time_duration.sum"].replace(",", "")) * 1e-6
    print(f"  #{int(r['ID']):<5} {short(r['Kernel Name']):<60} grid {r.get('Grid Size', '?'):<16} {ms:8.3f} ms")
EOF
done
exit $status

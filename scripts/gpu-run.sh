#!/usr/bin/env bash
# On a GPU machine: the GPU test entry point and the benchmarks, logs in $OUT
# (default ./gpu-logs). Uses a carried gpu-bin/ (scripts/gpu-bundle.sh) when
# it runs there, else builds there (GPU machines have the build tools but no
# package registry).
#   scripts/gpu-run.sh test     every test program + halo doctor --full
#   scripts/gpu-run.sh bench    halo bench kernels and halo bench linear on Llama shapes
#   scripts/gpu-run.sh all      both (default)
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-gpu-logs}
mkdir -p "$out"
bin=gpu-bin

if ! "$bin/halo" doctor --probe >/dev/null 2>&1; then
  echo "carried build does not run here; building"
  cmake -S . -B build -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null && cmake --build build -j "$(nproc)" &&
    bin=build || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
status=0
export HALO_BIN=$PWD/$bin/halo
if [ "$what" = test ] || [ "$what" = all ]; then
  for t in "$bin"/test_*; do
    [ -x "$t" ] || continue
    "$t" --gtest_brief=1 >"$out/$(basename "$t").log" 2>&1 && r=ok || { r=FAIL; status=1; }
    echo "$r $(basename "$t"): $(grep -E '^\[  (PASSED|FAILED)' "$out/$(basename "$t").log" | tr '\n' ' ')"
  done
  "$bin/halo" doctor --full >"$out/doctor.log" 2>&1 || status=1
  grep -vE '^  ok ' "$out/doctor.log"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  for s in 8192,4096,4096 8192,14336,4096; do
    "$bin/halo" bench kernels --device cuda --shape $s 2>&1 | tee -a "$out/bench.log"
    "$bin/halo" bench linear --device cuda --shape $s --outliers 2>&1 | tee -a "$out/bench.log"
  done
fi
exit $status

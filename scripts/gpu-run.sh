#!/usr/bin/env bash
# On a GPU machine: the GPU test entry point and the benchmarks, logs in $OUT
# (default ./gpu-logs), at most 6 files (the device tool returns only a few):
#   gpu.txt     the GPU
#   tests.log   every test program's output, each after a "==== test_x" header line
#   doctor.log  halo doctor --full
#   bench.log   the benchmarks
# Uses a carried gpu-bin/ (scripts/gpu-bundle.sh) when it runs there and holds
# every test program of tests/test_*.cpp, else builds there (GPU machines have
# the build tools but no package registry).
#   scripts/gpu-run.sh test     every test program + halo doctor --full
#   scripts/gpu-run.sh tests    every test program;  scripts/gpu-run.sh doctor  halo doctor --full
#   scripts/gpu-run.sh bench    halo bench kernels and halo bench linear on Llama shapes
#   scripts/gpu-run.sh all      both (default)
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-gpu-logs}
mkdir -p "$out"
bin=gpu-bin

# Every test program of the source tree, new ones included.
tests=()
for src in tests/test_*.cpp; do tests+=("$(basename "$src" .cpp)"); done
missing=""
for t in "${tests[@]}"; do [ -x "$bin/$t" ] || missing="$missing $t"; done

if ! "$bin/halo" doctor --probe >/dev/null 2>&1 || [ -n "$missing" ]; then
  echo "carried build does not run here${missing:+ or lacks$missing}; building"
  cmake -S . -B build -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null && cmake --build build -j "$(nproc)" &&
    bin=build || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
status=0
export HALO_BIN=$PWD/$bin/halo
export HALO_FIXTURES=${HALO_FIXTURES:-$PWD/tests/fixtures}
if [ "$what" = test ] || [ "$what" = tests ] || [ "$what" = all ]; then
  log=$(mktemp)  # one program's output, outside $out
  : >"$out/tests.log"
  for t in "${tests[@]}"; do
    echo "==== $t" >>"$out/tests.log"
    if [ ! -x "$bin/$t" ]; then
      echo "MISSING $t: not built" | tee -a "$out/tests.log"
      status=1
      continue
    fi
    "$bin/$t" --gtest_brief=1 >"$log" 2>&1 && r=ok || { r=FAIL; status=1; }
    cat "$log" >>"$out/tests.log"
    echo "$r $t: $(grep -E '^\[  (PASSED|FAILED)' "$log" | tr '\n' ' ')"
  done
  rm -f "$log"
fi
if [ "$what" = test ] || [ "$what" = doctor ] || [ "$what" = all ]; then
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

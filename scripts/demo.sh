#!/usr/bin/env bash
# Sets up, builds, and runs the default job: the HALO linear layer on
# outlier-heavy inputs, every recipe, accuracy and speed side by side (on the GPU
# when there is one, else on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
device=cpu
shape=512,1024,1024
if [ "$(build/halo doctor --probe)" = cuda ]; then device=cuda; shape=8192,4096,4096; fi
exec build/halo bench linear --device "$device" --outliers --shape "$shape" \
  --recipe bf16,halo0-int8,halo1-int8,halo2-int8,halo0-fp8,halo1-fp8,halo2-fp8,ideal-int8,ideal-fp8 "$@"

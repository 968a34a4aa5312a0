#!/usr/bin/env bash
# Sets up, builds, and benchmarks the HALO linear layer on outlier-heavy
# inputs, every recipe, accuracy and speed side by side (on the GPU when there
# is one, shape 8192 x 4096 x 4096, else on the CPU, 512 x 1024 x 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
HALO_BUILD_TARGET=halo scripts/setup.sh
device=cpu
shape=512,1024,1024
if [ "$(build/halo doctor --probe)" = cuda ]; then device=cuda; shape=8192,4096,4096; fi
exec build/halo bench linear --device "$device" --outliers --shape "$shape" \
  --recipe bf16,halo0-int8,halo1-int8,halo2-int8,halo0-fp8,halo1-fp8,halo2-fp8,ideal-int8,ideal-fp8 "$@"

#!/usr/bin/env bash
# Sets up, builds everything (CUDA code included when nvcc is present) and runs
# the tests. On a machine without a GPU the CUDA tests are skipped; on a GPU
# machine they compare every kernel with its CPU twin.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"

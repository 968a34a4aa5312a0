#!/usr/bin/env bash
# Builds the Hopper (sm_90a) binaries into build-gpu/ and copies beside them the
# shared libraries a bare GPU machine may lack (OpenBLAS and its Fortran
# runtime), so the folder can be carried to a GPU machine and run there with
# scripts/gpu-run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a ${HALO_CMAKE_ARGS:-} >/dev/null
cmake --build build-gpu -j "$(nproc)"
mkdir -p build-gpu/lib
for lib in $(ldd build-gpu/halo | awk '/openblas|gfortran|quadmath/ {print $3}'); do
  cp -L "$lib" build-gpu/lib/
done
ls build-gpu/lib

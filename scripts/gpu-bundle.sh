#!/usr/bin/env bash
# Builds the Hopper (sm_90a) binaries in build-gpu/ (libhalo shared, so its
# device code ships once) and copies the programs
# into gpu-bin/, small enough to carry to a GPU machine and run there with
# scripts/gpu-run.sh (which builds there instead if they do not run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90a -DHALO_SHARED=ON ${HALO_CMAKE_ARGS:-} >/dev/null
cmake --build build-gpu -j "$(nproc)"
rm -rf gpu-bin && mkdir gpu-bin
cp build-gpu/halo build-gpu/libhalo.so build-gpu/test_* gpu-bin/ 2>/dev/null || true
rm -f gpu-bin/*.cmake
du -sh gpu-bin

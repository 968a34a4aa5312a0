#!/usr/bin/env bash
# Installs what halo needs to build and test (Debian packages), then configures
# and builds it in ./build. CUDA code is compiled when nvcc is found (in PATH or
# /usr/local/cuda/bin); without it the CPU-only build is made.
# Environment: HALO_BUILD_DIR (default build), HALO_BUILD_TARGET (e.g. halo: that
# target only; default everything, tests included), HALO_CMAKE_ARGS (extra cmake
# options, e.g. -DHALO_CUDA=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in cmake ninja-build g++ pkg-config libopenblas-dev libgtest-dev nlohmann-json3-dev libtomlplusplus-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
cuda_flag="-DHALO_CUDA=ON"
command -v nvcc >/dev/null 2>&1 || { echo "setup: nvcc not found, building without CUDA"; cuda_flag="-DHALO_CUDA=OFF"; }

build_dir=${HALO_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja $cuda_flag ${HALO_CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" -j "$(nproc)" ${HALO_BUILD_TARGET:+--target "$HALO_BUILD_TARGET"}

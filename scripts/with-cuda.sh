#!/usr/bin/env bash
# Runs a command with the CUDA 13.4 compiler scripts/setup-cuda.sh fetches from PyPI on PATH and the
# settings candle's build needs on a machine without a GPU, e.g.
#
#   scripts/with-cuda.sh cargo check -p distillery-worker --features cuda     (scripts/check-cuda.sh)
#   scripts/with-cuda.sh cargo clippy --workspace --all-targets --features distillery-worker/cuda
#
# candle-kernels' build script compiles its CUDA kernels with nvcc even for a check or clippy, so
# this catches a CUDA build that no longer compiles without needing a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(scripts/setup-cuda.sh)
export PATH="$root/bin:$PATH" CUDA_ROOT="$root" CUDA_PATH="$root"
# No GPU to ask: build the kernels for Ampere (sm_80), the oldest architecture with every kernel
# candle builds (its bf16 WMMA ones).
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
# A check needs the kernels to compile, not to be fast: the device code is optimised less (cicc
# -O1, ptxas -O0), which halves the kernels' compile time (e.g. candle's mmvq_gguf.cu: 45 s -> 23 s).
# (cicc -O0 is not an option: it refuses candle's dp4a intrinsics.)
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:--Xcicc -O1 -Xptxas -O0}"
# candle-kernels compiles its kernels on RAYON_NUM_THREADS threads, which CI and the tests set to 1
# (for the training loops); nvcc runs one kernel a process, so let it use every core here.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
exec "$@"

#!/usr/bin/env bash
# Fetches the CUDA 13.4 compiler and headers from PyPI, by pinned version and checked sha256, into
# the cache (default ~/.cache/distillery/cuda-13.4.92; DISTILLERY_CACHE overrides the cache) and
# prints the toolkit's root. Enough to compile candle's CUDA kernels and type-check the worker's
# `cuda` build (scripts/check-cuda.sh) on a machine without a GPU or a CUDA install; nothing here
# runs a kernel.
#
#   nvidia-cuda-nvcc==13.4.92     bin/nvcc, ptxas, fatbinary, …
#   nvidia-nvvm==13.4.92          nvvm/bin/cicc (nvcc's device front end)
#   nvidia-cuda-crt==13.4.92      include/crt/ (nvcc's host headers)
#   nvidia-cuda-runtime==13.4.92  include/cuda_runtime.h, cuda.h, lib/libcudart
#   nvidia-cuda-cccl==13.3.5.0.6  include/cccl/ (libcu++, CUB, Thrust)
#
# 13.4, not the newest: cudarc 0.19.10 (candle-core 0.11.1's CUDA bindings) reads `nvcc --version`
# and knows CUDA up to 13.4. Idempotent: a stamp of the five digests skips the work next time.
set -euo pipefail
source "$(dirname "$0")/lib/fetch.sh"

NVCC_SHA=a1f3bfb27299e060b444d5df1f4bcd762501326cf0fd3141ed61756816ab9a0e
NVVM_SHA=e4c81cb321dd9743bcf871c5e7e8fecd7f05dea607944426e102bdda8d49e137
CRT_SHA=731ce3de11df8add8306404417a1edaede225dbe27eb233aed37c8de9d4fe720
RUNTIME_SHA=9641f797da20ce1dd8e779b6e96d08cf9ba564cec8e8225458811ee26423f3a5
CCCL_SHA=d5230098fa2df5021e1a00c0c4eee41797671a91119d31e892463e5ccf3ee326

platform=(--python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64)
root="$CACHE/cuda-13.4.92"
stamp="$NVCC_SHA $NVVM_SHA $CRT_SHA $RUNTIME_SHA $CCCL_SHA"
if [[ ! -f "$root/.stamp" || "$(cat "$root/.stamp")" != "$stamp" ]]; then
  # One assignment per wheel: a failed fetch inside an array literal would not stop the script.
  nvcc=$(fetch nvidia-cuda-nvcc==13.4.92 "$NVCC_SHA" "${platform[@]}")
  nvvm=$(fetch nvidia-nvvm==13.4.92 "$NVVM_SHA" "${platform[@]}")
  crt=$(fetch nvidia-cuda-crt==13.4.92 "$CRT_SHA" "${platform[@]}")
  runtime=$(fetch nvidia-cuda-runtime==13.4.92 "$RUNTIME_SHA" "${platform[@]}")
  cccl=$(fetch nvidia-cuda-cccl==13.3.5.0.6 "$CCCL_SHA" "${platform[@]}")
  log "extracting the CUDA 13.4 compiler into $root"
  extract "$root" "$stamp" 'nvidia/cu13/*' 'nvidia/cu13/' "$nvcc" "$nvvm" "$crt" "$runtime" "$cccl"
fi
# Wheels keep no file modes; build scripts look for the CUDA libraries in lib64.
chmod +x "$root"/bin/* "$root"/nvvm/bin/*
ln -sfn lib "$root/lib64"
for f in bin/nvcc nvvm/bin/cicc include/crt/host_config.h include/cuda_runtime.h include/cuda.h; do
  [[ -s "$root/$f" ]] || die "expected $root/$f after extraction; remove $root and run again"
done
"$root/bin/nvcc" --version | grep -q 'release 13.4' || die "$root/bin/nvcc is not CUDA 13.4"
printf '%s\n' "$root"

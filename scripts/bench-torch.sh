#!/usr/bin/env bash
# The worker's distillation step against PyTorch eager doing the same step, side by side (issue 3's
# throughput comparison). PyTorch comes from PyPI into its own virtual environment (about 5 GB with
# the CUDA libraries its Linux wheel depends on; only the CPU is used) and stays out of CI.
# Usage: scripts/bench-torch.sh [THREADS...]   (default: 1 2)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DISTILLERY_TORCH_VENV:-$HOME/.cache/distillery-torch}"
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'torch==2.15.0' numpy
fi
export DISTILLERY_TORCH_PYTHON="$venv/bin/python"
cargo bench -p distillery-worker --bench kd_vs_torch --no-run -q
threads=("$@"); [ ${#threads[@]} -gt 0 ] || threads=(1 2)
for t in "${threads[@]}"; do RAYON_NUM_THREADS="$t" cargo bench -p distillery-worker --bench kd_vs_torch -q; done

#!/usr/bin/env bash
# Type-checks the worker's CUDA build — `cargo check -p distillery-worker --features cuda` — on a
# machine without a GPU, with the CUDA compiler scripts/setup-cuda.sh fetches from PyPI (see
# scripts/with-cuda.sh). CI does the same within its clippy run (.ci/run), which lints the
# workspace with the `cuda` feature on.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-cuda.sh cargo check -p distillery-worker --features cuda --locked "$@"

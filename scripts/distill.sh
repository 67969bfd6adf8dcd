#!/usr/bin/env bash
# The main job (the README's first command): fetch what it needs (idempotent: pinned, sha256-checked,
# into $DISTILLERY_CACHE, default ~/.cache/distillery), then distil examples/local/distill.yaml
# with the release worker — the same code a DistillationJob's pod runs. Extra arguments go to
# `distillery-worker distill` (e.g. `-f another.yaml`, which replaces the default spec).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"            # exports DISTILLERY_CACHE and ORT_DYLIB_PATH
spec=(-f examples/local/distill.yaml)
for arg in "$@"; do
  if [[ "$arg" == "-f" || "$arg" == --file* || "$arg" == --job* ]]; then spec=(); fi
done
exec cargo run --release --locked -p distillery-worker -- distill "${spec[@]}" "$@"

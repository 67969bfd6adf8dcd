#!/usr/bin/env bash
# Benchmark the main job's student, fp32 against int8 (examples/local/benchmark.yaml), exactly as a
# Benchmark's pod runs it: each variant served by its own distillery-server process (cold start
# measured), the held-out examples sent to both for accuracy and robustness, then load at
# concurrency 16. Prints the table with ratios and the HTML report's path.
# Usage: scripts/benchmark.sh [ARTIFACT_DIR]   (run ./scripts/distill.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"            # exports DISTILLERY_CACHE and ORT_DYLIB_PATH
artifact="${1:-$DISTILLERY_CACHE/artifacts/local-reviews}"
[ -f "$artifact/distillery.json" ] || { echo "no artifact at $artifact: run ./scripts/distill.sh first" >&2; exit 1; }
cargo build --release --locked -q -p distillery-worker -p distillery-server
target/release/distillery-worker held-out -a "$artifact" -o "$DISTILLERY_CACHE/data/local-reviews-heldout.csv"
exec target/release/distillery-worker bench -f examples/local/benchmark.yaml --artifact "student-fp32=$artifact" \
  --artifact "student-int8=$artifact"

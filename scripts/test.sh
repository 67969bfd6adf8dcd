#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run calls it too): fetch what the
# tests need (idempotent), then run every test of the workspace. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/setup.sh)"            # exports DISTILLERY_CACHE and ORT_DYLIB_PATH
# moto's S3 server for the artifact-store tests (tests/src/s3.rs), pinned and hash-checked.
eval "$(scripts/setup-s3.sh)"
# llama.cpp (PyPI's xllamacpp), the reference the causal-LM tokenizer's ids are checked against, through
# scripts/lm-reference/tokenize.py; pinned and hash-checked. Exports DISTILLERY_LM_REFERENCE_PYTHON.
eval "$(scripts/setup-lm-reference.sh)"
# Debian's chromium for the browser tests (tests/src/browser.rs), installed where absent. If it
# cannot be, the other tests still run and the browser tests fail, saying how to install it.
scripts/setup-chromium.sh || echo "test: chromium is missing; the browser tests will fail" >&2
# One rayon thread: on 2 cores, 2 threads cost ~5x more CPU per small step under load.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"
echo "test: RAYON_NUM_THREADS=$RAYON_NUM_THREADS DISTILLERY_CACHE=$DISTILLERY_CACHE" >&2
exec cargo test --workspace --locked --no-fail-fast "$@"

#!/usr/bin/env bash
# Installs the reference tokenizer for the causal-LM tests: llama.cpp, as PyPI's xllamacpp CPU wheel
# (pinned and hash-checked in scripts/lm-reference/requirements.txt; no dependencies), into its own
# virtual environment in the setup cache. scripts/lm-reference/tokenize.py calls llama.cpp's own
# llama_tokenize through it, so the project's tokenizer (rebuilt with the `tokenizers` crate from the
# GGUF's metadata) is checked against the implementation that runs GGUF files rather than against
# itself. Idempotent: a stamp holding the requirements' sha256 skips it. Prints the environment's
# python for the tests (DISTILLERY_LM_REFERENCE_PYTHON). Called by scripts/test.sh.
set -euo pipefail
source "$(dirname "$0")/lib/fetch.sh"

requirements="$(cd "$(dirname "$0")" && pwd)/lm-reference/requirements.txt"
venv="$CACHE/python/lm-reference"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$venv"
  log "installing llama.cpp (xllamacpp) into $venv (pinned, hash-checked)"
  "$PYTHON" -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: --require-hashes \
       -r "$requirements" >"$CACHE/python/lm-reference-pip.log" 2>&1; then
    cat "$CACHE/python/lm-reference-pip.log" >&2
    die "could not install xllamacpp from PyPI. Is the package registry reachable (proxy, PIP_INDEX_URL)?"
  fi
  # tokenize.py needs llama.cpp's C API exported from the extension, not only the Python classes.
  "$venv/bin/python" -c '
import ctypes, xllamacpp.xllamacpp as m
lib = ctypes.CDLL(m.__file__)
for f in ("llama_model_load_from_file", "llama_model_get_vocab", "llama_tokenize", "llama_vocab_n_tokens"):
    getattr(lib, f)
' || die "xllamacpp in $venv does not load or does not export llama.cpp's C API"
  echo "$want" > "$venv/.stamp"
fi
echo "export DISTILLERY_LM_REFERENCE_PYTHON=$venv/bin/python"

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

# tokenize.py needs llama.cpp's C API exported from the extension, not only the Python classes.
pinned_venv lm-reference "$(cd "$(dirname "$0")" && pwd)/lm-reference/requirements.txt" "llama.cpp (xllamacpp)" '
import ctypes, xllamacpp.xllamacpp as m
lib = ctypes.CDLL(m.__file__)
for f in ("llama_model_load_from_file", "llama_model_get_vocab", "llama_tokenize", "llama_vocab_n_tokens"):
    getattr(lib, f)
' "xllamacpp does not load or does not export llama.cpp's C API"
echo "export DISTILLERY_LM_REFERENCE_PYTHON=$CACHE/python/lm-reference/bin/python"

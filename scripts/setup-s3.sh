#!/usr/bin/env bash
# Installs moto's S3 server (PyPI moto[s3] with flask, pinned and hash-checked in
# scripts/s3/requirements.txt) into its own virtual environment in the setup cache, for the
# artifact-store tests: they start `python -m moto.server` on loopback, a real S3 implementation
# rather than a mock of ours. Idempotent: a stamp holding the requirements' sha256 skips it.
# Prints the environment's python for the tests (DISTILLERY_MOTO_PYTHON). Called by scripts/test.sh.
set -euo pipefail
source "$(dirname "$0")/lib/fetch.sh"

pinned_venv moto "$(cd "$(dirname "$0")" && pwd)/s3/requirements.txt" "moto's S3 server" 'import moto.server' \
  "moto.server does not import"
echo "export DISTILLERY_MOTO_PYTHON=$CACHE/python/moto/bin/python"

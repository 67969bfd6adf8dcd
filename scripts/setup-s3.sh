#!/usr/bin/env bash
# Installs moto's S3 server (PyPI moto[s3] with flask, pinned and hash-checked in
# scripts/s3/requirements.txt) into its own virtual environment in the setup cache, for the
# artifact-store tests: they start `python -m moto.server` on loopback, a real S3 implementation
# rather than a mock of ours. Idempotent: a stamp holding the requirements' sha256 skips it.
# Prints the environment's python for the tests (DISTILLERY_MOTO_PYTHON). Called by scripts/test.sh.
set -euo pipefail
source "$(dirname "$0")/lib/fetch.sh"

requirements="$(cd "$(dirname "$0")" && pwd)/s3/requirements.txt"
venv="$CACHE/python/moto"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$venv"
  log "installing moto's S3 server into $venv (pinned, hash-checked)"
  "$PYTHON" -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: --require-hashes \
       -r "$requirements" >"$CACHE/python/moto-pip.log" 2>&1; then
    cat "$CACHE/python/moto-pip.log" >&2
    die "could not install moto from PyPI. Is the package registry reachable (proxy, PIP_INDEX_URL)?"
  fi
  "$venv/bin/python" -c 'import moto.server' || die "moto.server does not import in $venv"
  echo "$want" > "$venv/.stamp"
fi
echo "export DISTILLERY_MOTO_PYTHON=$venv/bin/python"

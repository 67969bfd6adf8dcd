# Shared by scripts/setup.sh and scripts/setup-cuda.sh (sourced, not run): the cache location,
# and fetching wheels from PyPI by pinned version and checked sha256.
# shellcheck shell=bash

CACHE="${DISTILLERY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distillery}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$CACHE/wheels"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "python3 is needed to fetch wheels from PyPI (set PYTHON=...)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "pip is missing for $PYTHON (apt-get install python3-pip)"

# fetch NAME==VERSION SHA256 [pip platform args...] -> prints the verified wheel path
fetch() {
  local spec="$1" sha="$2"; shift 2
  local dir="$CACHE/wheels/${spec//==/-}"
  local whl
  whl=$(ls "$dir"/*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$whl" ]] || ! echo "$sha  $whl" | sha256sum --check --status; then
    rm -rf "$dir"; mkdir -p "$dir"
    log "downloading $spec from PyPI"
    if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
         "$@" "$spec" -d "$dir" >"$dir/pip.log" 2>&1; then
      cat "$dir/pip.log" >&2
      die "could not download $spec from PyPI. Is the package registry reachable (proxy, PIP_INDEX_URL)?"
    fi
    whl=$(ls "$dir"/*.whl | head -n1)
    echo "$sha  $whl" | sha256sum --check --status \
      || die "$spec: sha256 mismatch for $(basename "$whl"): got $(sha256sum "$whl" | cut -d' ' -f1), want $sha"
  fi
  printf '%s\n' "$whl"
}

# extract DEST STAMP_SHA PATTERN STRIP_PREFIX WHEEL...: unzip the members of each WHEEL matching
# PATTERN into DEST (STRIP_PREFIX removed from their paths), replacing DEST whole; skipped when
# DEST's stamp already reads STAMP_SHA.
extract() {
  local dest="$1" sha="$2" pattern="$3" strip="$4"; shift 4
  if [[ -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$sha" ]]; then return 0; fi
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  "$PYTHON" - "$dest.tmp" "$pattern" "$strip" "$@" <<'PY'
import fnmatch, os, shutil, sys, zipfile
dest, pattern, strip, *wheels = sys.argv[1:]
for whl in wheels:
    n = 0
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.is_dir() or not fnmatch.fnmatch(info.filename, pattern):
                continue
            rel = info.filename[len(strip):] if info.filename.startswith(strip) else info.filename
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
    if n == 0:
        sys.exit(f"no member of {whl} matches {pattern}")
PY
  echo "$sha" > "$dest.tmp/.stamp"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
}

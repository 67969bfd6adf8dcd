#!/usr/bin/env bash
# Installs Debian's chromium package where it is absent: the browser tests (tests/src/browser.rs)
# render the Benchmark's report.html in headless Chromium. Idempotent and quick when
# /usr/bin/chromium (or $CHROMIUM) is already there; prints the version either way.
# Called by scripts/test.sh, not by scripts/setup.sh: only the tests need a browser.
set -euo pipefail

log() { printf 'setup-chromium: %s\n' "$*" >&2; }
die() { printf 'setup-chromium: error: %s\n' "$*" >&2; exit 1; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [[ ! -x "$CHROMIUM" ]]; then
  [[ "$CHROMIUM" == /usr/bin/chromium ]] \
    || die "CHROMIUM=$CHROMIUM is not an executable; unset CHROMIUM to install Debian's chromium"
  command -v apt-get >/dev/null \
    || die "chromium is missing and there is no apt-get here: install Chromium so that /usr/bin/chromium exists, or set CHROMIUM"
  if [[ $(id -u) -eq 0 ]]; then
    sudo=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    die "chromium is missing and installing it needs root: run 'sudo apt-get install -y --no-install-recommends chromium', or set CHROMIUM to a Chromium binary"
  fi
  log "installing Debian's chromium package (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt_log=$(mktemp -t setup-chromium.XXXXXX.log)
  # The package lists may be stale or absent (a fresh container): refresh them once if the
  # install cannot find the package.
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends chromium >"$apt_log" 2>&1; then
    "${sudo[@]}" apt-get update >>"$apt_log" 2>&1 || true
    if ! "${sudo[@]}" apt-get install -y --no-install-recommends chromium >>"$apt_log" 2>&1; then
      tail -n 20 "$apt_log" >&2
      die "apt-get could not install chromium (see $apt_log). Is Debian's package registry reachable?"
    fi
  fi
  [[ -x "$CHROMIUM" ]] || die "apt-get installed chromium but $CHROMIUM is still missing"
fi

log "$("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM (version unknown)")"

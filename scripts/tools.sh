#!/usr/bin/env bash
# Tool installation for token-broker.
#
#   source scripts/tools.sh   -> installs (if needed) and puts .venv/bin first on PATH
#   bash scripts/tools.sh     -> just installs (if needed)
#
# Creates $REPO/.venv and installs the pinned packages from
# scripts/requirements-tools.txt. A stamp file named after the sha256 of the
# requirements file makes a second run a no-op. Functions return non-zero on
# failure; this file does not change the caller's shell options.

TOOLS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_VENV="$TOOLS_REPO/.venv"
TOOLS_REQ="$TOOLS_REPO/scripts/requirements-tools.txt"
export TOOLS_REPO TOOLS_VENV

tools_python() {
  # Prefer python3.11+ if several are present; fall back to python3.
  local c
  for c in "${TOOLS_PYTHON:-}" python3.11 python3; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && { command -v "$c"; return 0; }
  done
  echo "tools.sh: no python3 found" >&2
  return 1
}

tools_install() {
  local req_hash stamp py
  [ -f "$TOOLS_REQ" ] || { echo "tools.sh: missing $TOOLS_REQ" >&2; return 1; }
  req_hash="$(sha256sum "$TOOLS_REQ" | cut -d' ' -f1)" || return 1
  stamp="$TOOLS_VENV/.installed-$req_hash"
  if [ -f "$stamp" ] && [ -x "$TOOLS_VENV/bin/python" ]; then
    return 0
  fi
  if [ ! -x "$TOOLS_VENV/bin/python" ]; then
    py="$(tools_python)" || return 1
    echo "tools.sh: creating venv $TOOLS_VENV" >&2
    "$py" -m venv "$TOOLS_VENV" || { echo "tools.sh: venv creation failed" >&2; return 1; }
  fi
  echo "tools.sh: installing $(basename "$TOOLS_REQ") into .venv" >&2
  "$TOOLS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      -r "$TOOLS_REQ" || { echo "tools.sh: pip install failed" >&2; return 1; }
  "$TOOLS_VENV/bin/python" -m pip check >/dev/null \
      || { echo "tools.sh: pip check reports conflicts:" >&2; "$TOOLS_VENV/bin/python" -m pip check >&2; return 1; }
  rm -f "$TOOLS_VENV"/.installed-* && touch "$stamp"
}

tools_path() {
  case ":$PATH:" in
    *":$TOOLS_VENV/bin:"*) ;;
    *) PATH="$TOOLS_VENV/bin:$PATH" ;;
  esac
  export PATH
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  # Executed: install and exit with its status.
  set -euo pipefail
  tools_install
else
  # Sourced: install, then put the venv first on PATH. Returns non-zero on
  # failure so a caller running under `set -e` stops.
  tools_install && tools_path
fi

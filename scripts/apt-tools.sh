#!/usr/bin/env bash
# Debian packages the tests need besides the Python venv (scripts/tools.sh): the job snippets of
# README.md and examples/gitlab-ci/ run under dash and busybox sh (alpine's shell) with curl and
# jq; and python3-venv when the system python3 cannot make the venv without it.
#
#   scripts/apt-tools.sh   -> installs whichever of them is missing; a no-op when all are there
#
# Versions are Debian bookworm's (busybox-static 1.35, dash 0.5.12, jq 1.6, curl 7.88): not pinned
# exactly, since a point release removes the old version from the mirror. `apt-get update` runs
# only when a missing package has no install candidate yet.
set -euo pipefail

packages=(busybox-static dash jq curl libxml2-utils rsync git)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
# gitlab-ci-local (scripts/node-tools.sh) runs on Node.js with npm; a machine that has a Node.js
# of its own (not from Debian's package) keeps it.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
# scripts/tools.sh makes its venv with `python3 -m venv`; Debian's own python3 needs
# python3-venv for that (a pyenv or distro-independent Python brings its own).
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
[ "${#missing[@]}" -eq 0 ] && exit 0

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "apt-tools.sh: ${missing[*]} missing; run as root or install them" >&2
    exit 1
  }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
for package in "${missing[@]}"; do
  if ! apt-cache policy "$package" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${sudo[@]}" apt-get update -q
    break
  fi
done
echo "apt-tools.sh: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

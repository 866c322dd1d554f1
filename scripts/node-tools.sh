#!/usr/bin/env bash
# The GitLab CI emulator the tests run the CI/CD components in: gitlab-ci-local, pinned with its
# whole dependency tree in scripts/gitlab-ci-local/package-lock.json (4.65.0: 4.66 and later need
# Node >= 22, Debian's nodejs is 20). Installed into scripts/gitlab-ci-local/node_modules; a
# stamp named after the lock file's sha256 makes a second run a no-op.
#
#   scripts/node-tools.sh   -> installs (if needed)
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/gitlab-ci-local"
command -v npm >/dev/null 2>&1 || { echo "node-tools.sh: npm missing (scripts/apt-tools.sh installs nodejs and npm)" >&2; exit 1; }
stamp="$dir/node_modules/.installed-$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
[ -f "$stamp" ] && [ -x "$dir/node_modules/.bin/gitlab-ci-local" ] && exit 0
echo "node-tools.sh: installing gitlab-ci-local from package-lock.json" >&2
npm ci --prefix "$dir" --no-audit --no-fund --silent
touch "$stamp"

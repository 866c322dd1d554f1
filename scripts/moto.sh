#!/usr/bin/env bash
# moto server helpers; source this file (it sources tools.sh for the venv).
#
#   moto_start  -> starts moto_server on a free 127.0.0.1 port with the request
#                  recorder enabled; exports MOTO_ENDPOINT, MOTO_PORT, MOTO_PID,
#                  MOTO_DIR (temp dir), MOTO_LOG, MOTO_RECORDER_FILEPATH.
#   moto_stop   -> kills exactly $MOTO_PID (if any) and waits for it.
#
# Both return non-zero on failure and do not change the caller's shell options.

# shellcheck source=scripts/tools.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/tools.sh" || return 1

moto_free_port() {
  "$TOOLS_VENV/bin/python" -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# True once moto answers a cheap GET on its management API.
moto_ping() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 1 "$1/moto-api/config" 2>/dev/null
  else
    "$TOOLS_VENV/bin/python" -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/moto-api/config", timeout=1).read()' "$1" 2>/dev/null
  fi
}

# POST with an empty body to a moto management path ($1 = endpoint, $2 = path).
moto_api_post() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 5 -X POST "$1$2"
  else
    "$TOOLS_VENV/bin/python" -c 'import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=b"", method="POST"), timeout=5).read()' "$1$2"
  fi
}

moto_start() {
  local port dir log pid i url
  if [ -n "${MOTO_PID:-}" ] && kill -0 "$MOTO_PID" 2>/dev/null; then
    echo "moto.sh: moto already running (pid $MOTO_PID, $MOTO_ENDPOINT)" >&2
    return 0
  fi
  [ -x "$TOOLS_VENV/bin/moto_server" ] || { echo "moto.sh: $TOOLS_VENV/bin/moto_server missing" >&2; return 1; }
  dir="$(mktemp -d "${TMPDIR:-/tmp}/moto.XXXXXX")" || return 1
  log="$dir/moto.log"
  port="$(moto_free_port)" || { echo "moto.sh: could not pick a free port" >&2; return 1; }
  url="http://127.0.0.1:$port"

  # MOTO_ENABLE_RECORDING: moto reads it as bool(os.environ.get(...)), so any
  # non-empty value (even "False") enables recording. The recording file
  # defaults to ./moto_recording in moto's cwd; keep it in our temp dir.
  # Started from $dir so nothing else moto writes lands in the repo.
  (
    cd "$dir" || exit 1
    exec env MOTO_ENABLE_RECORDING=True \
      MOTO_RECORDER_FILEPATH="$dir/moto_recording" \
      AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" \
      AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}" \
      AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" \
      "$TOOLS_VENV/bin/moto_server" -H 127.0.0.1 -p "$port"
  ) </dev/null >"$log" 2>&1 &
  pid=$!

  # Poll up to ~30 s (300 x 0.1 s).
  for ((i = 0; i < 300; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "moto.sh: moto_server exited during startup; log tail:" >&2
      tail -n 30 "$log" >&2
      wait "$pid" 2>/dev/null
      return 1
    fi
    if moto_ping "$url"; then
      # The readiness ping itself was recorded; truncate so the recording
      # starts empty (this also creates the file, so download-recording
      # answers 200 with an empty body instead of 500).
      moto_api_post "$url" /moto-api/recorder/reset-recording \
        || { echo "moto.sh: reset-recording failed" >&2; kill "$pid"; wait "$pid" 2>/dev/null; return 1; }
      export MOTO_PID="$pid" MOTO_PORT="$port" MOTO_ENDPOINT="$url" \
             MOTO_DIR="$dir" MOTO_LOG="$log" MOTO_RECORDER_FILEPATH="$dir/moto_recording"
      return 0
    fi
    sleep 0.1
  done
  echo "moto.sh: moto_server did not answer on $url within 30 s; log tail:" >&2
  tail -n 30 "$log" >&2
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 1
}

moto_stop() {
  local pid="${MOTO_PID:-}"
  if [ -z "$pid" ]; then
    return 0
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    # Wait up to ~10 s, then SIGKILL that same pid.
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null || true
  # Its log and request recording: nothing reads them once moto is gone.
  [ -n "${MOTO_DIR:-}" ] && rm -rf "$MOTO_DIR"
  unset MOTO_PID MOTO_PORT MOTO_ENDPOINT MOTO_DIR MOTO_LOG MOTO_RECORDER_FILEPATH
  return 0
}

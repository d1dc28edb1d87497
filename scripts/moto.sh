#!/usr/bin/env bash
# A local moto server for jit-aws's tests and benchmark.
#
#   bash scripts/moto.sh install   # .venv with a pinned moto (idempotent)
#   bash scripts/moto.sh start     # install, start on a free 127.0.0.1 port, wait until it answers
#   bash scripts/moto.sh env       # prints `export JIT_TEST_MOTO_URL=...` for a running server
#   bash scripts/moto.sh stop      # stops the server this script started
#
# State lives in the repository only: the virtualenv in ./.venv (gitignored)
# and the server's port, pid and log under ./target/moto/ (or $JIT_MOTO_STATE,
# for a second, private server). Any failure exits
# non-zero, so a test run that needs moto fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned so that a fresh machine tests against the moto we tested with.
# `moto[server]` would pull in docker, graphql and openapi extras IAM/STS do
# not need; flask and flask-cors are all `moto_server` itself requires.
MOTO_VERSION="5.2.5"
FLASK_VERSION="3.1.3"
FLASK_CORS_VERSION="6.0.2"

VENV="${JIT_MOTO_VENV:-$PWD/.venv}"
STATE="${JIT_MOTO_STATE:-$PWD/target/moto}"
PYTHON="${PYTHON:-python3}"

log() { printf 'moto.sh: %s\n' "$*" >&2; }

installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true
}

install() {
  if [[ -x "$VENV/bin/moto_server" && "$(installed_version)" == "$MOTO_VERSION" ]]; then
    return 0
  fi
  log "installing moto $MOTO_VERSION into $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "moto==$MOTO_VERSION" "flask==$FLASK_VERSION" "flask-cors==$FLASK_CORS_VERSION"
  [[ -x "$VENV/bin/moto_server" ]] || { log "moto_server missing after install"; exit 1; }
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

running() {
  [[ -f "$STATE/pid" ]] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

start() {
  install
  mkdir -p "$STATE"
  if running; then
    log "already running on port $(cat "$STATE/port")"
    return 0
  fi
  local port pid
  port="$(free_port)"
  # setsid: the server outlives this script but not a `stop`; its own group.
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$STATE/log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$STATE/pid"
  echo "$port" >"$STATE/port"
  for _ in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "moto_server exited; log follows"
      cat "$STATE/log" >&2
      exit 1
    fi
    if "$VENV/bin/python" - "$port" <<'EOF' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=1).read()
EOF
      log "listening on http://127.0.0.1:$port (pid $pid)"
      return 0
    fi
    sleep 0.2
  done
  log "moto_server did not answer within 30s; log follows"
  cat "$STATE/log" >&2
  stop
  exit 1
}

stop() {
  if [[ -f "$STATE/pid" ]]; then
    local pid
    pid="$(cat "$STATE/pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/pid" "$STATE/port"
  fi
}

env_line() {
  running || { log "not running; use: bash scripts/moto.sh start"; exit 1; }
  echo "export JIT_TEST_MOTO_URL=http://127.0.0.1:$(cat "$STATE/port")"
}

# One caller at a time: two test binaries (or a developer and a test run)
# starting the same server must not both install or both spawn.
mkdir -p "$PWD/target"
exec 9>"$PWD/target/.moto.lock"
flock 9

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) env_line ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac

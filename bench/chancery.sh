#!/usr/bin/env bash
# Builds Chancery in release and starts it in the background for a
# benchmark: client API on 127.0.0.1 only, open registration, rate limits
# and connection caps off, SQLite in DIR (or PostgreSQL given CHANCERY_DATABASE_URL).
#
#   bench/chancery.sh [DIR]            # DIR default /tmp/chancery-bench-chancery
#
# Environment: BENCH_CHANCERY_PORT (default 8028; not CHANCERY_*: Chancery
# reads every CHANCERY_* variable as a config key), BENCH_SFU_PORT (the
# built-in SFU's UDP port, default 7892), CHANCERY_DATABASE_URL
# (default sqlite in DIR), FRESH=1 (delete DIR's database and logs first; a
# PostgreSQL database is never touched: give an empty one), NO_BUILD=1 (use
# the binary already built). Prints `url=`, `pid=` and `version=` lines on
# stdout once the server answers; stop it with `kill PID`.
#
# Federation (bench/federation.sh sets these): BENCH_FED_PORT turns on
# `[federation]` on 127.0.0.1:BENCH_FED_PORT with server name
# `127.0.0.1:BENCH_FED_PORT`, TLS from BENCH_FED_CERT / BENCH_FED_KEY (PEM)
# and BENCH_FED_CA as an extra trust root for the servers it contacts.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

DIR="${1:-/tmp/chancery-bench-chancery}"
PORT="${BENCH_CHANCERY_PORT:-8028}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET/release/chancery"

log() { echo "chancery.sh: $*" >&2; }

if [ "${NO_BUILD:-0}" != 1 ]; then
  log "building chancery (release)"
  cargo build --release --locked --bin chancery >&2
fi
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if [ "${FRESH:-0}" = 1 ]; then
  rm -rf "$DIR/data" "$DIR/chancery.log"
fi
if curl -fsS "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null 2>&1; then
  log "something already answers on 127.0.0.1:$PORT"
  exit 1
fi

# The first start writes DIR/chancery.toml (every key commented); the
# variables below decide everything that matters here.
cd "$DIR"
unset CHANCERY_CONFIG
export CHANCERY_LISTEN="127.0.0.1:$PORT"
export CHANCERY_DATA_DIR="$DIR/data"
export CHANCERY_SERVER_NAME="localhost"
if [ -n "${BENCH_FED_PORT:-}" ]; then
  for v in BENCH_FED_CERT BENCH_FED_KEY BENCH_FED_CA; do
    [ -r "${!v:-}" ] || { log "BENCH_FED_PORT needs $v (a readable PEM file)"; exit 1; }
  done
  export CHANCERY_SERVER_NAME="127.0.0.1:$BENCH_FED_PORT"
  export CHANCERY_FEDERATION__ENABLED="true"
  export CHANCERY_FEDERATION__LISTEN="127.0.0.1:$BENCH_FED_PORT"
  export CHANCERY_FEDERATION__TLS_CERTIFICATE="$BENCH_FED_CERT"
  export CHANCERY_FEDERATION__TLS_PRIVATE_KEY="$BENCH_FED_KEY"
  export CHANCERY_FEDERATION__CA_FILE="$BENCH_FED_CA"
fi
export CHANCERY_REGISTRATION="open"
export CHANCERY_RATE_LIMITS__ENABLED="false"
# The benchmark connects from one address (`connections` holds thousands of
# connections): lift the connection caps. Idle kept-alive connections are
# closed after the header read timeout (30 s by default), which the target
# size of `connections` outlasts: hold them, as Synapse does, so that both
# servers' memory per idle connection is measured alike.
export CHANCERY_LIMITS__MAX_CONNECTIONS="100000"
export CHANCERY_LIMITS__MAX_CONNECTIONS_PER_ADDRESS="100000"
export CHANCERY_LIMITS__HEADER_READ_TIMEOUT_MS="3600000"
# The built-in SFU for `sfu` (its token service at /livekit/jwt, media on
# one UDP port on loopback; BENCH_SFU_PORT, default 7892).
export CHANCERY_SFU__ENABLED="true"
export CHANCERY_SFU__UDP_LISTEN="127.0.0.1:${BENCH_SFU_PORT:-7892}"
rm -f "$DIR/ready"
nohup "$BIN" serve --ready-file "$DIR/ready" > "$DIR/chancery.log" 2>&1 &
PID=$!
for _ in $(seq 1 240); do
  if curl -fsS "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null 2>&1; then
    echo "url=http://127.0.0.1:$PORT"
    echo "pid=$PID"
    echo "version=$("$BIN" --version | awk '{print $2}')"
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    log "Chancery exited during start-up; last lines of its log:"
    tail -n 30 "$DIR/chancery.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done
log "Chancery did not answer within 120 s (pid $PID left running; see $DIR/chancery.log)"
exit 1

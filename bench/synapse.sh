#!/usr/bin/env bash
# Installs a pinned Synapse from PyPI into a venv and starts it in the
# background, configured like the Chancery it is measured beside: server
# name "localhost", client API on 127.0.0.1 only, open registration without
# verification, every rate limit lifted, presence off, nothing contacted
# outside this machine.
#
#   bench/synapse.sh [DIR]            # SQLite (the default)
#   SYNAPSE_DATABASE_URL=postgres://user:pass@127.0.0.1:5432/synapse bench/synapse.sh [DIR]
#
# DIR (default /tmp/chancery-bench-synapse) holds the venv, config, database,
# logs and media. Environment: SYNAPSE_PORT (default 8018), SYNAPSE_VENV
# (default DIR/venv; one venv may serve several servers),
# SYNAPSE_VERSION (default the pinned one), SYNAPSE_BCRYPT_ROUNDS (default:
# Synapse's own, 12), FRESH=1 (delete the SQLite database, media and logs
# first; the venv and signing key stay; a PostgreSQL database is never
# touched: give an empty one). Prints `url=`, `pid=` and `version=` lines on
# stdout once the server answers; stop it with `kill PID`.
#
# Federation (bench/federation.sh sets these): SYNAPSE_FED_PORT adds a TLS
# listener with the federation and keys resources on 127.0.0.1:SYNAPSE_FED_PORT,
# names the server `127.0.0.1:SYNAPSE_FED_PORT`, and federates with
# certificates checked against SYNAPSE_FED_CA; SYNAPSE_FED_CERT /
# SYNAPSE_FED_KEY are its own (PEM). Synapse refuses loopback addresses
# by default and, for IP-literal server names, checks only the federation
# blocklist (1.163's BlocklistingAgentWrapper), so that list is emptied.
set -euo pipefail

SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
DIR="${1:-/tmp/chancery-bench-synapse}"
PORT="${SYNAPSE_PORT:-8018}"
DB_URL="${SYNAPSE_DATABASE_URL:-}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
VENV="${SYNAPSE_VENV:-$DIR/venv}"
PY="$VENV/bin/python"

log() { echo "synapse.sh: $*" >&2; }

# 1. The venv, with exactly the pinned version.
if [ ! -x "$PY" ]; then
  log "creating venv in $VENV"
  python3 -m venv "$VENV"
fi
installed="$("$PY" -c 'import synapse; print(synapse.__version__)' 2>/dev/null || true)"
if [ "$installed" != "$SYNAPSE_VERSION" ]; then
  log "installing matrix-synapse==$SYNAPSE_VERSION (takes a few minutes)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2
fi
if [ -n "$DB_URL" ] && ! "$PY" -c 'import psycopg2' 2>/dev/null; then
  log "installing psycopg2-binary for PostgreSQL"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check psycopg2-binary >&2
fi

FED_PORT="${SYNAPSE_FED_PORT:-}"
if [ -n "$FED_PORT" ]; then
  for v in SYNAPSE_FED_CERT SYNAPSE_FED_KEY SYNAPSE_FED_CA; do
    [ -r "${!v:-}" ] || { log "SYNAPSE_FED_PORT needs $v (a readable PEM file)"; exit 1; }
  done
fi

if [ "${FRESH:-0}" = 1 ]; then
  rm -rf "$DIR/homeserver.db" "$DIR/homeserver.db-wal" "$DIR/homeserver.db-shm" "$DIR/media_store" "$DIR"/homeserver.log* "$DIR/stdout.log"
fi

# 2. The config, written anew each start so it always matches this script.
CONFIG="$DIR/homeserver.yaml"
"$PY" - "$DIR" "$PORT" "$DB_URL" "${SYNAPSE_BCRYPT_ROUNDS:-}" "$FED_PORT" "${SYNAPSE_FED_CERT:-}" "${SYNAPSE_FED_KEY:-}" "${SYNAPSE_FED_CA:-}" > "$CONFIG" <<'PYEOF'
import json, sys, secrets, os
from urllib.parse import urlparse, unquote

dir_, port, db_url, bcrypt_rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
fed_port, fed_cert, fed_key, fed_ca = sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8]

# A secret that survives restarts, so tokens stay valid.
secret_file = os.path.join(dir_, "macaroon_secret")
if not os.path.exists(secret_file):
    with open(secret_file, "w") as f:
        f.write(secrets.token_hex(32))
macaroon = open(secret_file).read().strip()

if db_url:
    u = urlparse(db_url)
    args = {"dbname": unquote(u.path.lstrip("/")), "cp_min": 5, "cp_max": 10}
    if u.username: args["user"] = unquote(u.username)
    if u.password: args["password"] = unquote(u.password)
    if u.hostname: args["host"] = u.hostname
    if u.port: args["port"] = u.port
    database = {"name": "psycopg2", "allow_unsafe_locale": True, "args": args}
else:
    database = {"name": "sqlite3", "args": {"database": os.path.join(dir_, "homeserver.db")}}

# Lifted well past anything a benchmark does.
unlimited = {"per_second": 1000000, "burst_count": 1000000}
config = {
    "server_name": "localhost",
    "pid_file": os.path.join(dir_, "homeserver.pid"),
    "listeners": [{
        "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
        "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}],
    }],
    "database": database,
    "log_config": os.path.join(dir_, "log.yaml"),
    "media_store_path": os.path.join(dir_, "media_store"),
    "signing_key_path": os.path.join(dir_, "localhost.signing.key"),
    "macaroon_secret_key": macaroon,
    "report_stats": False,
    "enable_metrics": False,
    "trusted_key_servers": [],
    "suppress_key_server_warning": True,
    "federation_domain_whitelist": [],
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "presence": {"enabled": False},
    "url_preview_enabled": False,
    "rc_message": unlimited,
    "rc_registration": unlimited,
    "rc_registration_token_validity": unlimited,
    "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
    "rc_joins": {"local": unlimited, "remote": unlimited},
    "rc_joins_per_room": unlimited,
    "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
    "rc_room_creation": unlimited,
    "rc_admin_redaction": unlimited,
    "rc_key_requests": unlimited,
    "rc_3pid_validation": unlimited,
    "rc_third_party_invite": unlimited,
    "rc_media_create": unlimited,
    "rc_presence": {"per_user": unlimited},
    "rc_delayed_event_mgmt": unlimited,
    # Delayed events (MSC4140, the `delayed-restart` scenario): on when a
    # maximum delay is set (and msc4140_max_delayed_events_per_user, 100 by
    # default, is not 0).
    "max_event_delay_duration": "24h",
    "rc_reports": unlimited,
    "rc_user_directory": unlimited,
    "rc_profile": unlimited,
    "rc_federation": {"window_size": 1000, "sleep_limit": 1000000, "sleep_delay": 1, "reject_limit": 1000000, "concurrent": 1000000},
}
if bcrypt_rounds:
    config["bcrypt_rounds"] = int(bcrypt_rounds)
if fed_port:
    config["server_name"] = "127.0.0.1:" + fed_port
    config["listeners"].append({
        "port": int(fed_port), "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
        "x_forwarded": False, "resources": [{"names": ["federation", "keys"], "compress": False}],
    })
    config["tls_certificate_path"] = fed_cert
    config["tls_private_key_path"] = fed_key
    config["federation_custom_ca_list"] = [fed_ca]
    config["federation_verify_certificates"] = True
    config["federation_ip_range_blacklist"] = []
    # An empty whitelist forbids every server: federate with any.
    del config["federation_domain_whitelist"]
# JSON is YAML.
print(json.dumps(config, indent=2))
PYEOF

# INFO to a file, as Synapse's generated config does.
cat > "$DIR/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.handlers.RotatingFileHandler
    formatter: precise
    filename: $DIR/homeserver.log
    maxBytes: 104857600
    backupCount: 3
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: INFO
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
EOF

if [ ! -f "$DIR/localhost.signing.key" ]; then
  "$PY" -m synapse.app.homeserver --config-path "$CONFIG" --generate-keys >&2
fi

# 3. Start it in the background and wait until it answers.
if curl -fsS "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null 2>&1; then
  echo "synapse.sh: something already answers on 127.0.0.1:$PORT" >&2
  exit 1
fi
cd "$DIR"
nohup "$PY" -m synapse.app.homeserver --config-path "$CONFIG" > "$DIR/stdout.log" 2>&1 &
PID=$!
for _ in $(seq 1 240); do
  if curl -fsS "http://127.0.0.1:$PORT/_matrix/client/versions" >/dev/null 2>&1; then
    echo "url=http://127.0.0.1:$PORT"
    echo "pid=$PID"
    echo "version=$("$PY" -c 'import synapse; print(synapse.__version__)')"
    exit 0
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    log "Synapse exited during start-up; last lines of its output:"
    tail -n 30 "$DIR/stdout.log" "$DIR/homeserver.log" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
log "Synapse did not answer within 120 s (pid $PID left running; see $DIR/homeserver.log)"
exit 1

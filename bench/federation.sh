#!/usr/bin/env bash
# Starts a federating PAIR of one implementation on loopback for the
# `fed-*` scenarios: two Chancery servers (release binary, SQLite, via
# bench/chancery.sh) or two Synapses (via bench/synapse.sh), each named
# `127.0.0.1:<federation port>` and serving the server-server API over TLS
# with a certificate from a throwaway CA this script makes with openssl;
# each trusts that CA for the servers it contacts.
#
#   bench/federation.sh chancery [DIR]   # DIR default /tmp/chancery-bench-federation
#   bench/federation.sh synapse [DIR]
#
# DIR holds the CA (DIR/ca, made once, reused) and each server's
# directory (DIR/<impl>-a, DIR/<impl>-b). Ports (client / federation):
# Chancery 8128, 8129 / 8148, 8149; Synapse 8118, 8119 / 8138, 8139;
# override with FED_CLIENT_PORTS="p q" and FED_FEDERATION_PORTS="p q".
# Chancery's SFU UDP ports: 7893, 7894. Environment passed on: FRESH=1,
# NO_BUILD=1 (chancery.sh), SYNAPSE_VENV, SYNAPSE_BCRYPT_ROUNDS (synapse.sh).
# Prints `url_a=`, `pid_a=`, `url_b=`, `pid_b=`, `version=` on stdout once
# both answer; stop them with `kill PID_A PID_B`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMPL="${1:?usage: bench/federation.sh chancery|synapse [DIR]}"
DIR="${2:-/tmp/chancery-bench-federation}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
log() { echo "federation.sh: $*" >&2; }
field() { sed -n "s/^$1=//p" <<<"$2"; }

case "$IMPL" in
  chancery) default_client="8128 8129"; default_fed="8148 8149" ;;
  synapse) default_client="8118 8119"; default_fed="8138 8139" ;;
  *) log "unknown implementation $IMPL (chancery or synapse)"; exit 2 ;;
esac
read -r client_a client_b <<<"${FED_CLIENT_PORTS:-$default_client}"
read -r fed_a fed_b <<<"${FED_FEDERATION_PORTS:-$default_fed}"

# 1. A CA, and a leaf certificate for 127.0.0.1 (IP SAN) per server. Both
# servers answer on 127.0.0.1, so one leaf would do; each gets its own, as
# real servers have.
CA="$DIR/ca"
mkdir -p "$CA"
if [ ! -s "$CA/ca.pem" ]; then
  log "making a test CA in $CA"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=chancery-bench test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$CA/ca.key" -out "$CA/ca.pem" 2>/dev/null
fi
leaf() {
  local name="$1"
  [ -s "$CA/$name.pem" ] && return 0
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$CA/$name.key" -out "$CA/$name.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$CA/$name.ext"
  openssl x509 -req -in "$CA/$name.csr" -CA "$CA/ca.pem" -CAkey "$CA/ca.key" -CAcreateserial -days 30 \
    -extfile "$CA/$name.ext" -out "$CA/$name.pem" 2>/dev/null
  rm -f "$CA/$name.csr"
}
leaf "$IMPL-a"
leaf "$IMPL-b"

# 2. The two servers; the first is stopped if the second does not start.
started=()
stop_started() { for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done; }
start_one() {
  local side="$1" client="$2" fed="$3" sfu="$4"
  if [ "$IMPL" = chancery ]; then
    BENCH_CHANCERY_PORT="$client" BENCH_SFU_PORT="$sfu" BENCH_FED_PORT="$fed" \
      BENCH_FED_CERT="$CA/$IMPL-$side.pem" BENCH_FED_KEY="$CA/$IMPL-$side.key" BENCH_FED_CA="$CA/ca.pem" \
      bench/chancery.sh "$DIR/$IMPL-$side"
  else
    SYNAPSE_PORT="$client" SYNAPSE_FED_PORT="$fed" \
      SYNAPSE_FED_CERT="$CA/$IMPL-$side.pem" SYNAPSE_FED_KEY="$CA/$IMPL-$side.key" SYNAPSE_FED_CA="$CA/ca.pem" \
      bench/synapse.sh "$DIR/$IMPL-$side"
  fi
}
out_a="$(start_one a "$client_a" "$fed_a" 7893)"
started+=("$(field pid "$out_a")")
# The second start builds nothing more.
if ! out_b="$(NO_BUILD=1 start_one b "$client_b" "$fed_b" 7894)"; then
  stop_started
  exit 1
fi
started+=("$(field pid "$out_b")")

# 3. Each must serve its keys over TLS under the test CA.
for port in "$fed_a" "$fed_b"; do
  ok=0
  for _ in $(seq 1 60); do
    if curl -fsS --cacert "$CA/ca.pem" "https://127.0.0.1:$port/_matrix/key/v2/server" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  if [ "$ok" != 1 ]; then
    log "no signing keys at https://127.0.0.1:$port/_matrix/key/v2/server under the test CA"
    stop_started
    exit 1
  fi
done

echo "url_a=$(field url "$out_a")"
echo "pid_a=$(field pid "$out_a")"
echo "url_b=$(field url "$out_b")"
echo "pid_b=$(field pid "$out_b")"
echo "version=$(field version "$out_a")"
echo "ca=$CA/ca.pem"


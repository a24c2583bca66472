#!/usr/bin/env bash
# One command for the federation benchmark (issue 16, "Speed"): start a
# federating pair of Chancery servers and a federating pair of Synapses on
# loopback (bench/federation.sh), run `chancery-bench compare` with the
# `fed-*` scenarios (Chancery pair = A, Synapse pair = B: rooms are made on
# the first server of a pair and joined from the second by alias), append
# a section to bench/RESULTS.md, stop all four.
#
#   bench/run_federation.sh                                  # smoke: 50 latency samples, 500 messages
#   PRESET=target bench/run_federation.sh                    # 200 samples, 5,000 messages
#   bench/run_federation.sh -- --fed-latency-samples 100 --fed-throughput-concurrency 8
#
# Environment: PRESET (smoke|target), SCENARIOS (default
# fed-latency,fed-throughput), RESULTS (default bench/RESULTS.md, always
# appended to), WORK (default /tmp/chancery-bench-federation: the CA and
# the servers' directories), SYNAPSE_VENV (a venv with the pinned Synapse;
# default WORK/synapse-venv, made and filled on first use), KEEP=1 (leave
# the servers running), SETTLE_S (default 10). Arguments after `--` go to
# `chancery-bench compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PRESET="${PRESET:-smoke}"
SCENARIOS="${SCENARIOS:-fed-latency,fed-throughput}"
RESULTS="${RESULTS:-$ROOT/bench/RESULTS.md}"
WORK="${WORK:-/tmp/chancery-bench-federation}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export SYNAPSE_VENV="${SYNAPSE_VENV:-$WORK/synapse-venv}"
[ "${1:-}" = "--" ] && shift
mkdir -p "$WORK"

echo "run_federation.sh: building chancery and chancery-bench (release)" >&2
cargo build --release --locked --bin chancery --bin chancery-bench >&2

pids=()
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  fi
}
trap cleanup EXIT
field() { sed -n "s/^$1=//p" <<<"$2"; }

out="$(FRESH=1 NO_BUILD=1 bench/federation.sh chancery "$WORK")"
a1="$(field url_a "$out")"; a2="$(field url_b "$out")"; a_version="$(field version "$out")"
a_pid="$(field pid_a "$out")"
pids+=("$a_pid" "$(field pid_b "$out")")
out="$(FRESH=1 bench/federation.sh synapse "$WORK")"
b1="$(field url_a "$out")"; b2="$(field url_b "$out")"; b_version="$(field version "$out")"
b_pid="$(field pid_a "$out")"
pids+=("$b_pid" "$(field pid_b "$out")")
echo "run_federation.sh: chancery $a_version at $a1 + $a2, synapse $b_version at $b1 + $b2" >&2
sleep "${SETTLE_S:-10}"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git status --porcelain 2>/dev/null | grep -qv '^??' && echo ' (with uncommitted changes)' || true)"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
mem_kb="$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/meminfo)"
smoke_note=""
if [ "$PRESET" = smoke ]; then
  smoke_note="- **smoke run**: small sizes that prove the tool and both pairs federate; not a target measurement"
fi
cat >> "$RESULTS" <<EOF2

## $(date -u '+%Y-%m-%d %H:%M') UTC: federation, preset $PRESET, two Chanceries vs two Synapses on SQLite

$smoke_note
- Chancery $a_version, commit $commit$dirty, release build, SQLite: $a1 federating with $a2
- Synapse $b_version (PyPI), $("$SYNAPSE_VENV/bin/python" --version 2>&1), SQLite: $b1 federating with $b2
- each pair federates over TLS on 127.0.0.1 (server names \`127.0.0.1:<federation port>\`, certificates from a test CA
  made by \`bench/federation.sh\`); rooms are made on the first server, joined from the second by alias; all four
  servers and the benchmark client share the machine
- machine: $(nproc) cores, $((mem_kb / 1024)) MiB memory, ${cpu:-unknown CPU}, Linux $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg)
- scenarios: $SCENARIOS
EOF2

"$TARGET/release/chancery-bench" compare \
  --a "$a1" --a-pid "$a_pid" --a-label chancery --a-remote "$a2" \
  --b "$b1" --b-pid "$b_pid" --b-label synapse --b-remote "$b2" \
  --preset "$PRESET" --scenarios "$SCENARIOS" --results "$RESULTS" "$@"

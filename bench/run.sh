#!/usr/bin/env bash
# One command: start a fresh Chancery and a fresh Synapse on loopback, run
# `chancery-bench compare` on both (Chancery = A, Synapse = B), write
# bench/RESULTS.md (date, versions, machine, then the tables), stop both.
#
#   bench/run.sh                       # smoke sizes (minutes)
#   PRESET=target bench/run.sh         # the sizes of issue 5 (hours against Synapse)
#   SCENARIOS=send,e2e-latency bench/run.sh -- --send-messages 2000
#
# Environment: PRESET (smoke|target), SCENARIOS (default all), RESULTS
# (default bench/RESULTS.md, overwritten; APPEND=1 keeps what is there),
# WORK (default /tmp/chancery-bench: server data, the Synapse venv),
# CHANCERY_DATABASE_URL / SYNAPSE_DATABASE_URL (PostgreSQL; give empty
# databases), KEEP=1 (leave both servers running), SETTLE_S (seconds to let
# the servers settle before the idle memory reading, default 15).
# Arguments after `--` go to `chancery-bench compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PRESET="${PRESET:-smoke}"
SCENARIOS="${SCENARIOS:-all}"
RESULTS="${RESULTS:-$ROOT/bench/RESULTS.md}"
WORK="${WORK:-/tmp/chancery-bench}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[ "${1:-}" = "--" ] && shift
mkdir -p "$WORK"
# A thousand long-polling clients need as many sockets on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

echo "run.sh: building chancery and chancery-bench (release)" >&2
cargo build --release --locked --bin chancery --bin chancery-bench >&2

pids=()
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  fi
}
trap cleanup EXIT

field() { sed -n "s/^$1=//p" <<<"$2"; }

out="$(FRESH=1 NO_BUILD=1 bench/chancery.sh "$WORK/chancery")"
a_url="$(field url "$out")"; a_pid="$(field pid "$out")"; a_version="$(field version "$out")"
pids+=("$a_pid")
out="$(FRESH=1 bench/synapse.sh "$WORK/synapse")"
b_url="$(field url "$out")"; b_pid="$(field pid "$out")"; b_version="$(field version "$out")"
pids+=("$b_pid")
echo "run.sh: chancery $a_version at $a_url (pid $a_pid), synapse $b_version at $b_url (pid $b_pid)" >&2
sleep "${SETTLE_S:-15}"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
dirty="$(git status --porcelain 2>/dev/null | grep -qv '^??' && echo ' (with uncommitted changes)' || true)"
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
mem_kb="$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/meminfo)"
a_db="${CHANCERY_DATABASE_URL:+PostgreSQL}"; a_db="${a_db:-SQLite}"
b_db="${SYNAPSE_DATABASE_URL:+PostgreSQL}"; b_db="${b_db:-SQLite}"
if [ "${APPEND:-0}" != 1 ]; then
  cat > "$RESULTS" <<EOF2
# Benchmark results

Written by \`bench/run.sh\` (\`chancery-bench compare\`, Chancery = A,
Synapse = B). Ratios are A/B; "better here" names the server that wins a
figure and by how much. Absolute times depend on the machine and its load;
compare ratios measured in the same run. What each figure means:
[README.md](README.md).
EOF2
fi
smoke_note=""
if [ "$PRESET" = smoke ]; then
  smoke_note="- **smoke run**: small sizes that prove the tool and both servers work; not the target measurement of issue 5"
fi
cat >> "$RESULTS" <<EOF2

## $(date -u '+%Y-%m-%d %H:%M') UTC: preset $PRESET, Chancery on $a_db, Synapse on $b_db

$smoke_note
- Chancery $a_version, commit $commit$dirty, release build, $a_db
- Synapse $b_version (PyPI), $("$WORK/synapse/venv/bin/python" --version 2>&1), $b_db
- machine: $(nproc) cores, $((mem_kb / 1024)) MiB memory, ${cpu:-unknown CPU}, Linux $(uname -r); load average at start $(cut -d' ' -f1-3 /proc/loadavg)
- scenarios: $SCENARIOS; the benchmark client runs on the same machine as both servers
EOF2

"$TARGET/release/chancery-bench" compare \
  --a "$a_url" --a-pid "$a_pid" --a-label chancery \
  --b "$b_url" --b-pid "$b_pid" --b-label synapse \
  --preset "$PRESET" --scenarios "$SCENARIOS" --results "$RESULTS" "$@"

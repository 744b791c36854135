#!/usr/bin/env bash
# The hot-path cost of the balancing strategies (balance.rs): connection churn
# (connect, 64 B echo, close; 50 in parallel, sluicegate-loadgen) through
# sluicegate over two echo servers, per strategy, REPEAT times interleaved.
# Prints connections/s and the proxy's CPU time per connection (user + system
# of all its threads, /proc/PID/stat) as median [min, max].
#
#   scripts/bench-balance.sh
#   BASE_BIN=/tmp/sg-base REPEAT=5 DURATION=5 scripts/bench-balance.sh
#
# Variants: `base` (BASE_BIN, a build without per-server counting, when given),
# `wrr` (default strategy; counts every connection anyway), `leastConn`, `hrw`,
# `maxConn` (leastConn with maxConn = 1000000: the locked slot path, never full).
# Knobs: WORKERS (2) REPEAT (3) DURATION (4 s) SLUICEGATE_BIN
# (target/release/sluicegate) LOADGEN (bench/loadgen/target/release/sluicegate-loadgen)
# BASE_BIN (unset). Needs jq and python3 (scripts/lib/report.py prints the
# table). Everything it starts is stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKERS=${WORKERS:-2}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-4}
SLUICEGATE_BIN=${SLUICEGATE_BIN:-$ROOT/target/release/sluicegate}
LOADGEN=${LOADGEN:-$ROOT/bench/loadgen/target/release/sluicegate-loadgen}
BASE_BIN=${BASE_BIN:-}
LOG_TAG=bench-balance
# shellcheck source=lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"
require_positive WORKERS REPEAT DURATION

TMP=$(mktemp -d)
cleanup() {
    local rc=$?
    trap - EXIT
    set +e
    stop_started
    finish_tmp "$rc"
    exit "$rc"
}
trap cleanup EXIT

# Two echo servers on their own addresses.
"$LOADGEN" echo-server --listen 127.0.0.21:0,127.0.0.22:0 --threads 1 >"$TMP/echo.out" 2>&1 &
STARTED+=($!)
for _ in $(seq 50); do grep -q listening "$TMP/echo.out" && break; sleep 0.1; done
mapfile -t BACKENDS < <(grep -o 'listening .*' "$TMP/echo.out" | awk '{print $2}' | tr ',' '\n')
[[ ${#BACKENDS[@]} -ge 2 ]] || die "echo servers did not start: $(cat "$TMP/echo.out")"


# start_proxy NAME BIN LB_LINES: starts it, sets PORT and PROXY.
start_proxy() {
    local name=$1 bin=$2 lb=$3 cfg=$TMP/$1.toml
    fill "$PEERS/sluicegate-balance.toml.in" LB "$lb" BACKEND_A "${BACKENDS[0]}" \
        BACKEND_B "${BACKENDS[1]}" WORKERS "$WORKERS" >"$cfg"
    "$bin" -c "$cfg" 2>"$TMP/$name.log" &
    PROXY=$!
    STARTED+=("$PROXY")
    for _ in $(seq 100); do grep -q 'msg=starting' "$TMP/$name.log" && break; sleep 0.05; done
    PORT=$(grep 'entrypoint=main ' "$TMP/$name.log" | grep -o 'address=[^ ]*' | head -1 | sed 's/.*address=127.0.0.1://')
    ADMIN=$(grep 'entrypoint=traefik ' "$TMP/$name.log" | grep -o 'address=[^ ]*' | head -1 | sed 's/.*address=//')
    [[ -n $PORT ]] || die "$name did not start: $(cat "$TMP/$name.log")"
}

VARIANTS=()
declare -A BIN LB PORTS PROCS ADMINS
if [[ -n $BASE_BIN ]]; then VARIANTS+=(base); BIN[base]=$BASE_BIN; LB[base]=""; fi
VARIANTS+=(wrr leastConn hrw maxConn)
BIN[wrr]=$SLUICEGATE_BIN; LB[wrr]=""
BIN[leastConn]=$SLUICEGATE_BIN; LB[leastConn]='strategy = "leastConn"'
BIN[hrw]=$SLUICEGATE_BIN; LB[hrw]='strategy = "hrw"'
BIN[maxConn]=$SLUICEGATE_BIN; LB[maxConn]=$'strategy = "leastConn"\nmaxConn = 1000000'
for v in "${VARIANTS[@]}"; do
    start_proxy "$v" "${BIN[$v]}" "${LB[$v]}"
    PORTS[$v]=$PORT
    ADMINS[$v]=$ADMIN
    PROCS[$v]=$PROXY
    kill -STOP "$PROXY"
done

RESULTS=$TMP/results
for r in $(seq "$REPEAT"); do
    for v in "${VARIANTS[@]}"; do
        pid=${PROCS[$v]}
        kill -CONT "$pid"
        sleep 0.3
        before=$(cpu_ticks "$pid")
        out=$("$LOADGEN" --json-only churn --target "127.0.0.1:${PORTS[$v]}" --conns 50 --size 64 \
            --duration "$DURATION")
        after=$(cpu_ticks "$pid")
        kill -STOP "$pid"
        jq -c --arg v "$v" --argjson ticks $((after - before)) --argjson hz "$CLK_TCK" \
            '{v: $v, cps: .cps, conns: .connections, errors: .errors, us_per_conn: (if .connections > 0 then $ticks / $hz * 1e6 / .connections else null end), first_error: .first_error}' \
            <<<"$out" | tee -a "$RESULTS" >&2
        # Let TIME_WAIT from this run settle a little before the next one.
        sleep 1
    done
done

echo
python3 "$ROOT/scripts/lib/report.py" balance "$RESULTS" "${VARIANTS[@]}"
# How the proxies' connections ended other than `closed`, and what they
# warned about: an error count above zero is explained here.
echo
for v in "${VARIANTS[@]}"; do
    kill -CONT "${PROCS[$v]}"
    curl -s "http://${ADMINS[$v]}/metrics" | grep '^sluicegate_connections_total' | grep -v 'outcome="closed"' | sed "s/^/$v: /" || true
    grep -E 'level=(warn|error)' "$TMP/$v.log" | sed "s/^/$v: /" | sort | uniq -c | head -5 || true
done

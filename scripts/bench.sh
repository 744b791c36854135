#!/usr/bin/env bash
# Reproduces the whole proxy comparison in one command:
#   direct | haproxy | haproxy-splice | nginx (stream) | sluicegate (the default:
#   forwarding = "auto", on io_uring completions with bulk flows handed over to
#   splice) | sluicegate-completion (forwarding = "completion": completions only)
#   | sluicegate-readiness (readiness `auto` alone, the default before the
#   handover: SLUICEGATE_COMPLETION_OFF=1; not in the default TARGETS)
# over iperf3, redis-benchmark, pgbench and sluicegate-loadgen scenarios, REPEAT
# times, interleaved; prints median [min, max], the ratio to the best peer and to
# direct, and the proxy's CPU seconds per scenario.
#
#   scripts/bench.sh                                   # everything (about 25 min)
#   DURATION=2 REPEAT=1 scripts/bench.sh               # quick look
#   SCENARIOS=redis-get,churn TARGETS=direct,nginx,sluicegate scripts/bench.sh
#
# Knobs (environment): WORKERS (2) REPEAT (3) DURATION (5 s) SCENARIOS (all)
# TARGETS (all) SKIP_BUILD (0) SKIP_INSTALL (0) BASE_PORT (17000) IDLE_CONNS (5000)
# LAT_FRACTION (0.25) LOADGEN_THREADS (1) PAUSE_IDLE (1) PIN_PEERS (0) KEEP_TMP (0) SYSCALLS (0)
# RESULTS_DIR (bench/results) SLUICEGATE_BIN (target/release/sluicegate).
# See bench/README.md. Results: stdout, RESULTS_DIR/latest.md, RESULTS_DIR/latest.jsonl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKERS=${WORKERS:-2}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-5}
SCENARIOS=${SCENARIOS:-all}
TARGETS=${TARGETS:-direct,haproxy,haproxy-splice,nginx,sluicegate,sluicegate-completion}
BASE_PORT=${BASE_PORT:-17000}
SKIP_BUILD=${SKIP_BUILD:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
IDLE_CONNS=${IDLE_CONNS:-5000}
LAT_FRACTION=${LAT_FRACTION:-0.25}
LOADGEN_THREADS=${LOADGEN_THREADS:-1}
PAUSE_IDLE=${PAUSE_IDLE:-1}
PIN_PEERS=${PIN_PEERS:-0}
# 1: count the proxy's system calls and context switches during each run (perf
# stat; adds a little CPU per system call, so keep CPU comparisons from SYSCALLS=0).
SYSCALLS=${SYSCALLS:-0}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
SLUICEGATE_BIN=${SLUICEGATE_BIN:-$ROOT/target/release/sluicegate}
LOADGEN=$ROOT/bench/loadgen/target/release/sluicegate-loadgen
PEERS=$ROOT/bench/peers

ALL_SCENARIOS=(iperf1 iperf1r iperf4 redis-set redis-get redis-set-p16 redis-get-p16
    pgbench-s pgbench-sc pingpong churn latency idle)
ALL_TARGETS=(direct haproxy haproxy-splice nginx sluicegate sluicegate-completion sluicegate-readiness)

LOG_TAG=bench
# shellcheck source=lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

require_positive WORKERS REPEAT DURATION BASE_PORT IDLE_CONNS LOADGEN_THREADS
[[ $LAT_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "LAT_FRACTION must be in (0, 1], got '$LAT_FRACTION'"
((IDLE_CONNS <= 6000)) || die "IDLE_CONNS must be <= 6000 (open-file limit 20000 per process)"
((BASE_PORT >= 1024 && BASE_PORT + 700 < 32768)) || die "BASE_PORT must leave room below the ephemeral range (32768)"

if [[ $SCENARIOS == all ]]; then
    SCEN=("${ALL_SCENARIOS[@]}")
else
    IFS=, read -ra SCEN <<<"$SCENARIOS"
    for s in "${SCEN[@]}"; do
        [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
    done
fi
IFS=, read -ra TGTS <<<"$TARGETS"
for t in "${TGTS[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t' (known: ${ALL_TARGETS[*]})"
done
wants() { [[ " ${SCEN[*]} " == *" $1"* ]]; } # prefix match: wants redis, wants pgbench...
has_target() { [[ " ${TGTS[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------ ports
# Backends listen on BASE+1..4; proxy k listens on BASE+100k+1..4 and dials its own
# backend address 127.0.0.(10+k), so TIME_WAIT sockets left by one target's churn do
# not slow another target's connects. iperf3 only listens on 127.0.0.1.
declare -A BIDX=([iperf]=1 [redis]=2 [pg]=3 [echo]=4)
declare -A TIDX=([direct]=0 [haproxy]=1 [haproxy-splice]=2 [nginx]=3 [sluicegate]=4 [sluicegate-completion]=5 [sluicegate-readiness]=6)
BACKENDS=(iperf redis pg echo)
bport() { echo $((BASE_PORT + BIDX[$1])); }
tport() { echo $((BASE_PORT + 100 * TIDX[$1] + BIDX[$2])); }
baddr() { # backend address a target dials
    local t=$1 b=$2
    if [[ $t == direct || $b == iperf ]]; then echo "127.0.0.1:$(bport "$b")"; else echo "127.0.0.$((10 + TIDX[$t])):$(bport "$b")"; fi
}
BACKEND_IPS="127.0.0.1"
for t in haproxy haproxy-splice nginx sluicegate sluicegate-completion sluicegate-readiness; do BACKEND_IPS+=" 127.0.0.$((10 + TIDX[$t]))"; done

# ------------------------------------------------------------------ cleanup
TMP=""
STARTED=()   # every PID this script started (killed by PID at exit)
PG_DATA=""
PG_LOG=""
PG_CTL=""
IPERF_PID=""
SAMPLER_PID=""
declare -A TPIDS TSTATUS

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [[ -n $SAMPLER_PID ]] && kill "$SAMPLER_PID" 2>/dev/null
    local p
    for t in "${!TPIDS[@]}"; do for p in ${TPIDS[$t]}; do kill -CONT "$p" 2>/dev/null; done; done
    if [[ -n $PG_DATA && -f $PG_DATA/postmaster.pid ]]; then
        su postgres -s /bin/sh -c "$PG_CTL -D '$PG_DATA' -m immediate stop" >/dev/null 2>&1
    fi
    stop_started
    finish_tmp "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ install, build
if [[ $SKIP_INSTALL != 1 ]]; then
    missing=()
    for p in haproxy nginx libnginx-mod-stream redis-server redis-tools postgresql \
        postgresql-contrib iperf3 procps jq python3 iproute2; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
[[ -n $PG_BIN ]] || die "PostgreSQL binaries not found under /usr/lib/postgresql"
PG_CTL=$PG_BIN/pg_ctl
for c in haproxy nginx redis-server redis-benchmark iperf3 jq python3 ss; do
    command -v "$c" >/dev/null || die "$c not found (install it or unset SKIP_INSTALL)"
done

if [[ $SKIP_BUILD != 1 ]]; then
    log "building sluicegate-loadgen"
    cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
    if has_target sluicegate || has_target sluicegate-completion || has_target sluicegate-readiness; then
        log "building sluicegate"
        (cd "$ROOT" && cargo build --release --quiet) || log "sluicegate build FAILED: its rows will show 'failed'"
    fi
fi
[[ -x $LOADGEN ]] || die "$LOADGEN missing (run without SKIP_BUILD=1)"

TMP=$(mktemp -d /tmp/sluicegate-bench.XXXXXX)
chmod 755 "$TMP" # PostgreSQL (user postgres) must enter it
mkdir -p "$RESULTS_DIR"
JSONL=$RESULTS_DIR/latest.jsonl
: >"$JSONL"




# ------------------------------------------------------------------ backends
start_backends() {
    local ips_csv="" ip
    for ip in $BACKEND_IPS; do ips_csv+="${ips_csv:+,}$ip:$(bport echo)"; done
    start_bg echo "$LOADGEN" echo-server --listen "$ips_csv" --threads 1
    ECHO_PID=$LAST_PID
    wait_listen "$ECHO_PID" 10 "$(bport echo)" || die "echo server did not start: $(cat "$TMP/echo.log")"

    if wants iperf; then start_iperf; fi

    if wants redis; then
        start_bg redis redis-server --port "$(bport redis)" --bind "$BACKEND_IPS" --save "" \
            --appendonly no --protected-mode no --daemonize no --dir "$TMP" --logfile "$TMP/redis-server.log"
        wait_listen "$LAST_PID" 10 "$(bport redis)" || die "redis-server did not start: $(tail -5 "$TMP/redis-server.log")"
    fi

    if wants pgbench; then
        log "starting PostgreSQL and loading pgbench -s 10"
        # A directory of its own: user postgres cannot write into the root-owned $TMP.
        mkdir -p "$TMP/pg" && chown postgres: "$TMP/pg"
        PG_DATA=$TMP/pg/data
        PG_LOG=$TMP/pg/postgres.log
        su postgres -s /bin/sh -c "mkdir -m 700 '$PG_DATA'"
        su postgres -s /bin/sh -c "$PG_BIN/initdb -D '$PG_DATA' -A trust -U postgres" >"$TMP/initdb.log" 2>&1 ||
            die "initdb failed: $(tail -5 "$TMP/initdb.log")"
        local pgips=${BACKEND_IPS// /,}
        cat >>"$PG_DATA/postgresql.conf" <<EOF
port = $(bport pg)
listen_addresses = '$pgips'
unix_socket_directories = '$PG_DATA'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
        echo "host all all 127.0.0.0/8 trust" >>"$PG_DATA/pg_hba.conf"
        su postgres -s /bin/sh -c "$PG_CTL -D '$PG_DATA' -l '$PG_LOG' -w start" >"$TMP/pg_ctl.log" 2>&1 ||
            die "PostgreSQL did not start: $(tail -5 "$PG_LOG" "$TMP/pg_ctl.log" 2>&1)"
        "$PG_BIN/pgbench" -h 127.0.0.1 -p "$(bport pg)" -U postgres -i -s 10 -q postgres >"$TMP/pgbench-init.log" 2>&1 ||
            die "pgbench -i failed: $(tail -5 "$TMP/pgbench-init.log")"
    fi
}

start_iperf() {
    if [[ -n $IPERF_PID ]]; then kill "$IPERF_PID" 2>/dev/null || true; wait "$IPERF_PID" 2>/dev/null || true; fi
    start_bg iperf3 iperf3 -s -B 127.0.0.1 -p "$(bport iperf)"
    IPERF_PID=$LAST_PID
    wait_listen "$IPERF_PID" 10 "$(bport iperf)" || die "iperf3 -s did not start: $(cat "$TMP/iperf3.log")"
}

# ------------------------------------------------------------------ proxies
proxy_ports() { local b; for b in "${BACKENDS[@]}"; do tport "$1" "$b"; done; }

maxconn=$((IDLE_CONNS + 500))
((maxconn < 4000)) && maxconn=4000

write_configs() {
    local t=$1 b cfg
    cfg=$TMP/$t.conf
    case $t in
    haproxy | haproxy-splice)
        local splice="" cpumap=""
        [[ $t == haproxy-splice ]] && splice="    option splice-auto"
        [[ $PIN_PEERS == 1 ]] && cpumap="    cpu-map auto:1/1-$WORKERS 0-$((WORKERS - 1))"
        fill "$PEERS/haproxy.cfg.in" WORKERS "$WORKERS" MAXCONN "$maxconn" SPLICE "$splice" CPUMAP "$cpumap" >"$cfg"
        for b in "${BACKENDS[@]}"; do
            fill "$PEERS/haproxy-listen.in" LNAME "$b" PORT "$(tport "$t" "$b")" BACKEND "$(baddr "$t" "$b")" >>"$cfg"
        done
        ;;
    nginx)
        local servers="" aff=""
        [[ $PIN_PEERS == 1 ]] && aff="worker_cpu_affinity auto;"
        for b in "${BACKENDS[@]}"; do
            servers+=$(fill "$PEERS/nginx-server.in" PORT "$(tport "$t" "$b")" BACKEND "$(baddr "$t" "$b")")$'\n'
        done
        fill "$PEERS/nginx.conf.in" WORKERS "$WORKERS" TMP "$TMP" SERVERS "$servers" CPUAFFINITY "$aff" >"$cfg"
        ;;
    sluicegate | sluicegate-completion | sluicegate-readiness)
        cfg=$TMP/$t.toml
        fill "$PEERS/sluicegate.toml.in" WORKERS "$WORKERS" >"$cfg"
        # The completion path (io_uring completions, provided-buffer ring).
        [[ $t == sluicegate-completion ]] && echo 'forwarding = "completion"' >>"$cfg"
        for b in "${BACKENDS[@]}"; do
            fill "$PEERS/sluicegate-entry.in" LNAME "$b" PORT "$(tport "$t" "$b")" BACKEND "$(baddr "$t" "$b")" >>"$cfg"
        done
        ;;
    esac
    echo "$cfg"
}

start_proxy() {
    local t=$1 cfg pid
    cfg=$(write_configs "$t")
    case $t in
    haproxy | haproxy-splice)
        if ! haproxy -c -q -f "$cfg" >"$TMP/$t.check" 2>&1; then
            TSTATUS[$t]="failed: config check ($(head -c 300 "$TMP/$t.check" | tr '\n' ' '))"
            return
        fi
        start_bg "$t" haproxy -f "$cfg" -db
        ;;
    nginx) start_bg "$t" nginx -c "$cfg" ;;
    sluicegate | sluicegate-completion | sluicegate-readiness)
        if [[ ! -x $SLUICEGATE_BIN ]]; then
            TSTATUS[$t]="failed: $SLUICEGATE_BIN not built"
            return
        fi
        if [[ $t == sluicegate-readiness ]]; then
            # The completion engine off: `auto` is the readiness pumps'
            # adaptive splice (the default before the handover).
            start_bg "$t" env SLUICEGATE_COMPLETION_OFF=1 "$SLUICEGATE_BIN" -c "$cfg"
        else
            start_bg "$t" "$SLUICEGATE_BIN" -c "$cfg"
        fi
        ;;
    esac
    pid=$LAST_PID
    # shellcheck disable=SC2046
    if ! wait_listen "$pid" 15 $(proxy_ports "$t"); then
        TSTATUS[$t]="failed: did not listen on all ports ($(tail -c 300 "$TMP/$t.log" | tr '\n' ' '))"
        kill "$pid" 2>/dev/null || true
        return
    fi
    TPIDS[$t]=$pid
    if [[ $t == nginx ]]; then
        local w
        sleep 0.3
        w=$(pgrep -P "$pid" | tr '\n' ' ')
        TPIDS[$t]="$pid $w"
    fi
    # Smoke test: a few echoes through the proxy must come back intact.
    local out
    if ! out=$("$LOADGEN" --json-only pingpong --target "127.0.0.1:$(tport "$t" echo)" --conns 2 --duration 0.3 2>&1) ||
        [[ $(jq -r '.requests > 0 and .verify_failures == 0' <<<"$out" 2>/dev/null) != true ]]; then
        TSTATUS[$t]="failed: smoke test, no echo came back through port $(tport "$t" echo) ($(jq -r '"requests=\(.requests) errors=\(.errors) \(.first_error // "")"' <<<"$out" 2>/dev/null || echo "${out:0:200}"))"
        return
    fi
    TSTATUS[$t]=ok
}

# ------------------------------------------------------------------ measuring helpers



sample_threads() { # background: max number of threads of the PIDs -> $TMP/threads
    local max=0 n p tasks
    while :; do
        n=0
        for p in "$@"; do
            tasks=(/proc/"$p"/task/*)
            [[ -e ${tasks[0]} ]] && n=$((n + ${#tasks[@]}))
        done
        if ((n > max)); then max=$n; echo "$max" >"$TMP/threads"; fi
        sleep 0.25
    done
}

# wait_tw TARGET BACKEND: let the TIME_WAIT sockets of an earlier run against the
# same addresses drain (they slow connect()'s port search), at most 65 s. Client side:
# towards the target's port; proxy side: towards the target's own backend address.
wait_tw() {
    local t=$1 b=$2 filter n waited=0
    if [[ $t == direct ]]; then
        filter="( dport = :$(bport "$b") )"
    else
        filter="( dport = :$(tport "$t" "$b") or dst $(baddr "$t" "$b" | cut -d: -f1) )"
    fi
    while :; do
        n=$(ss -Htan state time-wait "$filter" 2>/dev/null | wc -l)
        ((n < 1000 || waited >= 65)) && break
        ((waited == 0)) && log "  waiting for $n TIME_WAIT sockets to drain"
        sleep 5
        waited=$((waited + 5))
    done
}

TMO=$((DURATION * 6 + 30))
REDIS_N1=$((DURATION * 100000))
REDIS_N16=$((DURATION * 800000))
LAT_RATE=""

# Each scenario prints one JSON object on stdout: {"value":..,"extra":{..},"units":..}
# (or fails). $1 = target.
sc_iperf() {
    local t=$1 streams=$2 rev=$3 out port
    port=$(tport "$t" iperf)
    [[ $t == direct ]] && port=$(bport iperf)
    # shellcheck disable=SC2086
    if ! out=$(timeout -k 5 "$TMO" iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -P "$streams" $rev \
        --connect-timeout 5000 -J 2>"$TMP/iperf3-client.err"); then
        jq -r '.error // empty' <<<"$out" >&2 2>/dev/null || true
        head -c 300 "$TMP/iperf3-client.err" >&2
        start_iperf >&2 # a failed test can leave the server stuck
        return 1
    fi
    jq -ce '{value: (.end.sum_received.bits_per_second / 1e9),
            extra: {bytes: .end.sum_received.bytes, retransmits: (.end.sum_sent.retransmits // 0)}}' <<<"$out"
}

sc_redis() {
    local t=$1 cmd=$2 pipe=$3 n out line port
    port=$(tport "$t" redis)
    [[ $t == direct ]] && port=$(bport redis)
    n=$REDIS_N1
    ((pipe > 1)) && n=$REDIS_N16
    out=$(timeout -k 5 "$TMO" redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -n "$n" -t "$cmd" -P "$pipe" --csv 2>&1) ||
        { echo "${out:0:300}" >&2; return 1; }
    line=$(grep -i "^\"$cmd\"" <<<"$out" | tail -1) || { echo "${out:0:300}" >&2; return 1; }
    IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"${line//\"/}"
    jq -nce --argjson rps "$rps" --argjson p50 "$p50" --argjson p99 "$p99" --argjson n "$n" \
        '{value: $rps, extra: {p50_ms: $p50, p99_ms: $p99, requests: $n}}'
}

sc_pgbench() {
    local t=$1 connect=$2 out tps lat failed port
    port=$(tport "$t" pg)
    [[ $t == direct ]] && port=$(bport pg)
    if [[ -n $connect ]]; then wait_tw "$t" pg; fi
    # shellcheck disable=SC2086
    out=$(PGCONNECT_TIMEOUT=5 timeout -k 5 "$TMO" "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -S \
        -c 16 -j 2 -T "$DURATION" $connect postgres 2>&1) || { echo "${out:0:300}" >&2; return 1; }
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | head -1)
    [[ -n $tps ]] || { echo "${out:0:300}" >&2; return 1; }
    jq -nce --argjson tps "$tps" --argjson lat "${lat:-null}" --argjson failed "${failed:-0}" \
        '{value: $tps, extra: {latency_avg_ms: $lat, failed: $failed, requests: ($tps * '"$DURATION"')}}'
}

loadgen_port() { if [[ $1 == direct ]]; then bport echo; else tport "$1" echo; fi; }

# loadgen_json ARGS...: runs the loadgen; fails on verification errors.
loadgen_json() {
    local out
    out=$(timeout -k 5 "$TMO" "$LOADGEN" --json-only "$@" 2>&1) || { echo "${out:0:300}" >&2; return 1; }
    if [[ $(jq -r '.verify_failures // 0' <<<"$out") != 0 ]]; then
        echo "bytes came back altered: $out" >&2
        return 1
    fi
    echo "$out"
}

sc_pingpong() {
    local t=$1 out
    out=$(loadgen_json pingpong --target "127.0.0.1:$(loadgen_port "$t")" --conns 50 --size 64 \
        --duration "$DURATION" --threads "$LOADGEN_THREADS") || return 1
    jq -ce 'select(.requests > 0) | {value: .rps, extra: {p50_us, p99_us, p999_us, requests, errors, loadgen_cpu_s}}' <<<"$out"
}

sc_churn() {
    local t=$1 out port
    port=$(loadgen_port "$t")
    wait_tw "$t" echo
    out=$(loadgen_json churn --target "127.0.0.1:$port" --conns 50 --size 64 \
        --duration "$DURATION" --threads "$LOADGEN_THREADS") || return 1
    jq -ce 'select(.connections > 0) | {value: .cps, extra: {p50_us, p99_us, requests: .connections, errors, connect_errors, loadgen_cpu_s}}' <<<"$out"
}

calibrate_latency() {
    local out max
    if out=$(jq -rs '[.[] | select(.scenario == "pingpong" and .target == "direct" and .ok) | .value] | sort |
        if length > 0 then .[length / 2 | floor] else empty end' "$JSONL") && [[ -n $out ]]; then
        max=$out
    else
        log "  calibrating: closed-loop pingpong max against direct"
        out=$(loadgen_json pingpong --target "127.0.0.1:$(bport echo)" --conns 50 --size 64 \
            --duration "$DURATION" --threads "$LOADGEN_THREADS") || die "latency calibration failed"
        max=$(jq -r .rps <<<"$out")
    fi
    LAT_RATE=$(awk -v m="$max" -v f="$LAT_FRACTION" 'BEGIN { r = int(m * f + 0.5); print (r < 100 ? 100 : r) }')
    log "  open-loop rate for 'latency': $LAT_RATE req/s ($LAT_FRACTION x direct closed-loop max $max)"
}

sc_latency() {
    local t=$1 out
    [[ -n $LAT_RATE ]] || { echo "no open-loop rate calibrated" >&2; return 1; }
    out=$(loadgen_json pingpong --target "127.0.0.1:$(loadgen_port "$t")" --conns 50 --size 64 \
        --duration "$DURATION" --rate "$LAT_RATE" --threads "$LOADGEN_THREADS") || return 1
    jq -ce 'select(.requests > 0) | {value: .p99_us, extra: {p50_us, p999_us, rps, offered_rps, backlog_at_end, requests, errors, loadgen_cpu_s}}' <<<"$out"
}

sc_idle() {
    local t=$1 out pids
    if [[ $t == direct ]]; then pids=$ECHO_PID; else pids=${TPIDS[$t]}; fi
    pids=$(tr -s ' ' ',' <<<"$pids" | sed 's/^,//; s/,$//')
    out=$(loadgen_json idle --target "127.0.0.1:$(loadgen_port "$t")" --conns "$IDLE_CONNS" --hold 2 \
        --settle 1 --pid "$pids" --duration 60) || return 1
    jq -ce 'select(.opened > 0 and .rss_per_conn_kib != null) |
        {value: .rss_per_conn_kib, extra: {pss_per_conn_kib, opened, rss_before_kib, rss_after_kib, rss_after_hold_kib, setup_s, errors}}' <<<"$out"
}

# scenario metadata: description | metric | unit | better | cpu normaliser
scen_meta() {
    case $1 in
    iperf1) echo "iperf3 1 stream, client to server|throughput|Gbit/s|higher|GB" ;;
    iperf1r) echo "iperf3 1 stream, server to client (-R)|throughput|Gbit/s|higher|GB" ;;
    iperf4) echo "iperf3 -P 4|throughput|Gbit/s|higher|GB" ;;
    redis-set) echo "redis-benchmark SET -c 50 -P 1|requests/s|rps|higher|Mreq" ;;
    redis-get) echo "redis-benchmark GET -c 50 -P 1|requests/s|rps|higher|Mreq" ;;
    redis-set-p16) echo "redis-benchmark SET -c 50 -P 16|requests/s|rps|higher|Mreq" ;;
    redis-get-p16) echo "redis-benchmark GET -c 50 -P 16|requests/s|rps|higher|Mreq" ;;
    pgbench-s) echo "pgbench -S -c 16 -j 2 (select only)|transactions/s|tps|higher|Mreq" ;;
    pgbench-sc) echo "pgbench -S -C -c 16 -j 2 (new connection per transaction)|transactions/s|tps|higher|Mreq" ;;
    pingpong) echo "loadgen pingpong closed loop, 50 conns, 64 B|requests/s|rps|higher|Mreq" ;;
    churn) echo "loadgen churn: connect, 64 B echo, close; 50 in parallel|connections/s|cps|higher|Mreq" ;;
    latency) echo "loadgen pingpong open loop at ${LAT_FRACTION} x direct max, 50 conns, 64 B|p99 latency|us|lower|Mreq" ;;
    idle) echo "loadgen idle: $IDLE_CONNS connections held, one exchange each|memory per connection (RSS)|KiB|lower|" ;;
    esac
}

run_scenario() {
    local s=$1 t=$2
    case $s in
    iperf1) sc_iperf "$t" 1 "" ;;
    iperf1r) sc_iperf "$t" 1 -R ;;
    iperf4) sc_iperf "$t" 4 "" ;;
    redis-set) sc_redis "$t" set 1 ;;
    redis-get) sc_redis "$t" get 1 ;;
    redis-set-p16) sc_redis "$t" set 16 ;;
    redis-get-p16) sc_redis "$t" get 16 ;;
    pgbench-s) sc_pgbench "$t" "" ;;
    pgbench-sc) sc_pgbench "$t" -C ;;
    pingpong) sc_pingpong "$t" ;;
    churn) sc_churn "$t" ;;
    latency) sc_latency "$t" ;;
    idle) sc_idle "$t" ;;
    esac
}

# run_one SCENARIO TARGET REP: one measurement, one JSON line in $JSONL.
run_one() {
    local s=$1 t=$2 rep=$3 desc metric unit better norm res ok=true err="" c0=0 c1=0 cpu=null threads=null
    IFS='|' read -r desc metric unit better norm <<<"$(scen_meta "$s")"
    if [[ ${TSTATUS[$t]} != ok ]]; then
        jq -nc --arg s "$s" --arg t "$t" --argjson rep "$rep" --arg err "${TSTATUS[$t]}" --arg desc "$desc" \
            --arg metric "$metric" --arg unit "$unit" --arg better "$better" --arg norm "$norm" \
            '{scenario: $s, target: $t, rep: $rep, ok: false, error: $err, desc: $desc, metric: $metric,
              unit: $unit, better: $better, cpu_norm: $norm}' >>"$JSONL"
        return
    fi
    focus "$t"
    local pids=${TPIDS[$t]:-}
    rm -f "$TMP/threads"
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        c0=$(cpu_ticks $pids)
        # shellcheck disable=SC2086
        sample_threads $pids &
        SAMPLER_PID=$!
    fi
    local perf_pid=""
    if [[ -n $pids && $SYSCALLS == 1 ]]; then
        # -p takes every thread of the processes listed.
        perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$(tr -s ' ' ',' <<<"$pids")" \
            -o "$TMP/perf.out" 2>/dev/null &
        perf_pid=$!
    fi
    if ! res=$(run_scenario "$s" "$t" 2>"$TMP/last.err"); then
        ok=false
        err=$(tr '\n' ' ' <"$TMP/last.err" | head -c 400)
        res='{}'
    fi
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        local sc cs
        sc=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ { print $1 }' "$TMP/perf.out" 2>/dev/null)
        cs=$(awk -F, '$3 ~ /context-switches/ { print $1 }' "$TMP/perf.out" 2>/dev/null)
        if [[ $sc =~ ^[0-9]+$ && $cs =~ ^[0-9]+$ && $ok == true ]]; then
            res=$(jq -c --argjson sc "$sc" --argjson cs "$cs" '.extra += {syscalls: $sc, csw: $cs}
                | if (.extra.requests // 0) > 0 then .extra += {syscalls_per_req: ($sc / .extra.requests),
                    csw_per_req: ($cs / .extra.requests)} else . end' <<<"$res")
        fi
    fi
    if [[ -n $pids ]]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=""
        # shellcheck disable=SC2086
        c1=$(cpu_ticks $pids)
        cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
        [[ -f $TMP/threads ]] && threads=$(<"$TMP/threads")
        # A proxy that died during the run fails the rest of its rows.
        local p
        for p in $pids; do
            if ! kill -0 "$p" 2>/dev/null; then
                TSTATUS[$t]="failed: process $p exited during $s ($(tail -c 200 "$TMP/$t.log" | tr '\n' ' '))"
                ok=false
                err=${TSTATUS[$t]}
            fi
        done
    fi
    jq -nc --arg s "$s" --arg t "$t" --argjson rep "$rep" --argjson ok "$ok" --arg err "$err" \
        --argjson res "$res" --argjson cpu "$cpu" --argjson threads "$threads" --arg desc "$desc" \
        --arg metric "$metric" --arg unit "$unit" --arg better "$better" --arg norm "$norm" \
        '{scenario: $s, target: $t, rep: $rep, ok: $ok, value: $res.value, extra: ($res.extra // {}),
          cpu_s: $cpu, threads_max: $threads, desc: $desc, metric: $metric, unit: $unit,
          better: $better, cpu_norm: $norm} + (if $err != "" then {error: $err} else {} end)' >>"$JSONL"
    local shown
    shown=$(jq -r 'if .ok then "\(.value * 100 | round / 100) \(.unit)" + (if .cpu_s != null then "  cpu \(.cpu_s) s" else "" end)
        else "FAILED: \(.error // "")" end' <<<"$(tail -1 "$JSONL")")
    log "  $s  $t  rep $rep: ${shown:0:200}"
}

# ------------------------------------------------------------------ main
log "machine: $(nproc) cores, kernel $(uname -r); WORKERS=$WORKERS REPEAT=$REPEAT DURATION=$DURATION"
log "scenarios: ${SCEN[*]}"
log "targets: ${TGTS[*]}"
start_backends
for t in "${TGTS[@]}"; do
    if [[ $t == direct ]]; then
        TSTATUS[$t]=ok
        continue
    fi
    start_proxy "$t"
    log "proxy $t: ${TSTATUS[$t]}${TPIDS[$t]:+ (pid ${TPIDS[$t]})}"
done

started_at=$SECONDS
for ((rep = 1; rep <= REPEAT; rep++)); do
    # Rotate the target order each repeat so no target always runs first.
    order=()
    for ((i = 0; i < ${#TGTS[@]}; i++)); do order+=("${TGTS[(i + rep - 1) % ${#TGTS[@]}]}"); done
    for s in "${SCEN[@]}"; do
        log "rep $rep/$REPEAT  $s"
        if [[ $s == latency && -z $LAT_RATE ]]; then
            focus direct
            calibrate_latency
        fi
        for t in "${order[@]}"; do run_one "$s" "$t" "$rep"; done
    done
done
resume_all
log "measurements done in $((SECONDS - started_at)) s"

# ------------------------------------------------------------------ report
versions=$(
    echo "- machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
    echo "- haproxy $(haproxy -v | head -1 | awk '{print $3}'), nginx $(nginx -v 2>&1 | sed 's|.*/||'), redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), iperf3 $(iperf3 --version | head -1 | awk '{print $2}')"
    echo "- sluicegate $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)${TSTATUS[sluicegate]:+ (${TSTATUS[sluicegate]})}"
    echo "- WORKERS=$WORKERS REPEAT=$REPEAT DURATION=${DURATION}s LOADGEN_THREADS=$LOADGEN_THREADS PAUSE_IDLE=$PAUSE_IDLE PIN_PEERS=$PIN_PEERS SYSCALLS=$SYSCALLS; $(date -u +%Y-%m-%dT%H:%MZ)"
)
python3 "$ROOT/scripts/lib/report.py" bench "$JSONL" "$RESULTS_DIR/latest.md" "$versions"
log "wrote $RESULTS_DIR/latest.md and $JSONL"

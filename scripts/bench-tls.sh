#!/usr/bin/env bash
# TLS termination benchmark: haproxy | nginx (stream) | sluicegate, each
# terminating TLS with the same ECDSA P-256 certificate and speaking plain TCP to
# the same backends. Same conventions as scripts/bench.sh (TARGETS, SCENARIOS,
# REPEAT interleaved, median [min, max], ratio to the best peer, proxy CPU).
#
#   scripts/bench-tls.sh                                  # everything (about 8 min)
#   REPEAT=1 DURATION=3 scripts/bench-tls.sh              # quick look
#   SCENARIOS=hs13,redis-get TARGETS=nginx,sluicegate scripts/bench-tls.sh
#
# Scenarios:
#   hs13, hs12      TLS connections/s: CONC threads of connect, full handshake
#                   (no resumption), one redis PING through the proxy, close
#                   (examples/tls_handshakes.rs, a rustls client); TLS 1.3 / 1.2
#   stime13/12      the same load from `openssl s_time -new` (CONC processes);
#                   OpenSSL 3.0's client costs ~0.6 ms CPU per handshake, so on
#                   2 cores this mostly measures the client: see "per cpu s"
#   redis-get/-set  redis-benchmark --tls -c 50 -P 1 through the proxy to a plain
#                   redis-server
#   bulk-up/-down   one TLS stream (python ssl client) to / from the loadgen sink
#   idle            IDLE_CONNS TLS connections held (handshake + one PING each):
#                   proxy RSS delta per connection
#
# Knobs: WORKERS (2) REPEAT (3) DURATION (5 s) CONC (4) RB_THREADS (2) IDLE_CONNS (2000)
# PIN_CORES (true) SCENARIOS (all) TARGETS (haproxy,nginx,sluicegate) BASE_PORT (18000)
# SKIP_BUILD (0) KEEP_TMP (0) RESULTS_DIR (bench/results) SLUICEGATE_BIN
# (target/release/sluicegate). Results: stdout, RESULTS_DIR/tls-latest.md,
# RESULTS_DIR/tls-latest.jsonl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKERS=${WORKERS:-2}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-5}
CONC=${CONC:-4}
RB_THREADS=${RB_THREADS:-2}
PIN_CORES=${PIN_CORES:-true} # sluicegate's runtime.pinCores (its default: true)
IDLE_CONNS=${IDLE_CONNS:-2000}
SCENARIOS=${SCENARIOS:-all}
TARGETS=${TARGETS:-haproxy,nginx,sluicegate}
BASE_PORT=${BASE_PORT:-18000}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
SLUICEGATE_BIN=${SLUICEGATE_BIN:-$ROOT/target/release/sluicegate}
LOADGEN=$ROOT/bench/loadgen/target/release/sluicegate-loadgen
HS_BIN=${HS_BIN:-$(dirname "$SLUICEGATE_BIN")/examples/tls_handshakes}

ALL_SCENARIOS=(hs13 hs12 stime13 stime12 redis-get redis-set bulk-up bulk-down idle)
ALL_TARGETS=(haproxy nginx sluicegate)

LOG_TAG=bench-tls
# shellcheck source=lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

require_positive WORKERS REPEAT DURATION CONC IDLE_CONNS BASE_PORT
((IDLE_CONNS <= 6000)) || die "IDLE_CONNS must be <= 6000 (open-file limit 20000 per process)"
if [[ $SCENARIOS == all ]]; then SCEN=("${ALL_SCENARIOS[@]}"); else IFS=, read -ra SCEN <<<"$SCENARIOS"; fi
for s in "${SCEN[@]}"; do [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s'"; done
IFS=, read -ra TGTS <<<"$TARGETS"
for t in "${TGTS[@]}"; do [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t'"; done

# ------------------------------------------------------------------ ports
# Backends on BASE+2 (redis) and BASE+5 (sink); target k listens on
# BASE+100k+2 / +5 and dials the backends on 127.0.0.(10+k), so the TIME_WAIT
# sockets of one target's handshake churn never slow another target.
declare -A TIDX=([haproxy]=1 [nginx]=3 [sluicegate]=4)
REDIS_PORT=$((BASE_PORT + 2))
SINK_PORT=$((BASE_PORT + 5))
tport() { echo $((BASE_PORT + 100 * TIDX[$1] + $2)); } # tport TARGET 2|5
bip() { echo "127.0.0.$((10 + TIDX[$1]))"; }
BACKEND_IPS="127.0.0.1"
for t in "${ALL_TARGETS[@]}"; do BACKEND_IPS+=" $(bip "$t")"; done

# ------------------------------------------------------------------ cleanup
TMP=""
declare -A TSTATUS
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    stop_started
    finish_tmp "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM

for c in haproxy nginx redis-server redis-benchmark openssl python3 jq ss; do
    command -v "$c" >/dev/null || die "$c not found (scripts/bench.sh installs the packages)"
done
if [[ $SKIP_BUILD != 1 ]]; then
    log "building sluicegate and the loadgen"
    (cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet --example tls_handshakes) ||
        die "sluicegate build failed"
    cargo build --release --quiet --manifest-path "$ROOT/bench/loadgen/Cargo.toml"
fi
[[ -x $SLUICEGATE_BIN ]] || die "$SLUICEGATE_BIN missing"
[[ -x $LOADGEN ]] || die "$LOADGEN missing (run without SKIP_BUILD=1)"
[[ -x $HS_BIN ]] || die "$HS_BIN missing (run without SKIP_BUILD=1)"

TMP=$(mktemp -d /tmp/sluicegate-bench-tls.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$RESULTS_DIR"
JSONL=$RESULTS_DIR/tls-latest.jsonl
: >"$JSONL"


# ------------------------------------------------------------------ certificate
# One ECDSA P-256 leaf (CN/SAN bench.test) signed by a scratch CA, for every proxy.
tls_cert "$TMP" bench.test
CRT=$TMP/bench.test.crt KEY=$TMP/bench.test.key CA=$TMP/ca.crt

# ------------------------------------------------------------------ backends
start_bg redis redis-server --port "$REDIS_PORT" --bind "$BACKEND_IPS" --save "" --appendonly no \
    --protected-mode no --daemonize no --dir "$TMP" --maxclients 10000
wait_listen "$LAST_PID" 10 "$REDIS_PORT" || die "redis-server did not start"
sink_addrs=""
for ip in $BACKEND_IPS; do sink_addrs+="${sink_addrs:+,}$ip:$SINK_PORT"; done
start_bg sink "$LOADGEN" sink-server --listen "$sink_addrs"
wait_listen "$LAST_PID" 10 "$SINK_PORT" || die "sink server did not start: $(cat "$TMP/sink.log")"

# ------------------------------------------------------------------ proxies
# Like for like: same worker count, no logging, connect 5 s / idle 60 s,
# OpenSSL's (or rustls') default TLS settings, session tickets on (default).
# The configs are the templates bench/peers/*-tls.*.in.
write_config() {
    local t=$1 ip
    ip=$(bip "$t")
    local ports=(REDIS_LISTEN "$(tport "$t" 2)" SINK_LISTEN "$(tport "$t" 5)"
        REDIS_BACKEND "$ip:$REDIS_PORT" SINK_BACKEND "$ip:$SINK_PORT")
    case $t in
    haproxy) fill "$PEERS/haproxy-tls.cfg.in" WORKERS "$WORKERS" PEM "$TMP/bench.test.pem" "${ports[@]}" >"$TMP/haproxy.cfg" ;;
    nginx) fill "$PEERS/nginx-tls.conf.in" WORKERS "$WORKERS" TMP "$TMP" CRT "$CRT" KEY "$KEY" "${ports[@]}" >"$TMP/nginx.conf" ;;
    sluicegate)
        fill "$PEERS/sluicegate-tls.toml.in" WORKERS "$WORKERS" PIN_CORES "$PIN_CORES" CRT "$CRT" KEY "$KEY" \
            "${ports[@]}" >"$TMP/sluicegate.toml"
        ;;
    esac
}

start_proxy() {
    local t=$1 pid
    write_config "$t"
    case $t in
    haproxy) start_bg haproxy haproxy -f "$TMP/haproxy.cfg" -db ;;
    nginx) start_bg nginx nginx -c "$TMP/nginx.conf" ;;
    sluicegate) start_bg sluicegate "$SLUICEGATE_BIN" -c "$TMP/sluicegate.toml" ;;
    esac
    pid=$LAST_PID
    if ! wait_listen "$pid" 15 "$(tport "$t" 2)" "$(tport "$t" 5)"; then
        TSTATUS[$t]="failed: did not listen ($(tail -c 300 "$TMP/$t.log" | tr '\n' ' '))"
        return
    fi
    TPIDS[$t]=$pid
    if [[ $t == nginx ]]; then
        sleep 0.3
        TPIDS[$t]="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
    fi
    # Smoke test: PING through TLS.
    if [[ $(redis-cli -h 127.0.0.1 -p "$(tport "$t" 2)" --tls --sni bench.test --cacert "$CA" PING 2>&1) != PONG ]]; then
        TSTATUS[$t]="failed: smoke test (redis PING through TLS)"
        return
    fi
    TSTATUS[$t]=ok
}

restart_proxy() {
    local t=$1 p
    for p in ${TPIDS[$t]}; do kill -CONT "$p" 2>/dev/null || true; done
    p=${TPIDS[$t]%% *}
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    while listening "$(tport "$t" 2)"; do sleep 0.1; done
    start_proxy "$t"
}

# ------------------------------------------------------------------ measuring
# Let TIME_WAIT sockets of an earlier handshake run against this target drain.
wait_tw() {
    local t=$1 n waited=0
    while :; do
        n=$(ss -Htan state time-wait "( dport = :$(tport "$t" 2) or dst $(bip "$t") )" 2>/dev/null | wc -l)
        ((n < 5000 || waited >= 65)) && break
        ((waited == 0)) && log "  waiting for $n TIME_WAIT sockets to drain"
        sleep 5
        waited=$((waited + 5))
    done
}


# Each scenario prints {"value":..,"extra":{..}} on stdout or fails. $1 = target.
sc_handshakes() {
    local t=$1 ver=$2 i total=0 n t0 t1
    wait_tw "$t"
    t0=$(date +%s.%N)
    for ((i = 0; i < CONC; i++)); do
        timeout -k 5 $((DURATION + 30)) openssl s_time -connect "127.0.0.1:$(tport "$t" 2)" -new \
            -time "$DURATION" "$ver" >"$TMP/s_time.$i" 2>&1 &
    done
    wait
    t1=$(date +%s.%N) # s_time overruns -time by up to a second: use the wall clock
    for ((i = 0; i < CONC; i++)); do
        n=$(grep -oE '^[0-9]+ connections in [0-9]+ real' "$TMP/s_time.$i" | awk '{print $1}' | head -1)
        [[ -n $n ]] || { head -c 300 "$TMP/s_time.$i" >&2; return 1; }
        total=$((total + n))
    done
    echo "{\"value\": $(awk -v n="$total" -v a="$t0" -v b="$t1" 'BEGIN{print n/(b-a)}'), \"extra\": {\"requests\": $total}}"
}

sc_rate() {
    local t=$1 ver=$2
    wait_tw "$t"
    timeout -k 5 $((DURATION + 30)) "$HS_BIN" "127.0.0.1:$(tport "$t" 2)" "$DURATION" "$CONC" "$ver"
}

sc_redis() {
    local t=$1 cmd=$2 out rps
    out=$(timeout -k 5 $((DURATION * 10 + 30)) redis-benchmark -h 127.0.0.1 -p "$(tport "$t" 2)" --tls \
        --sni bench.test --cacert "$CA" --threads "$RB_THREADS" -t "$cmd" -c 50 -n $((DURATION * 40000)) -q 2>&1) || return 1
    rps=$(grep -oE '[0-9.]+ requests per second' <<<"$out" | awk '{print $1}' | tail -1)
    [[ -n $rps ]] || { echo "$out" | head -c 300 >&2; return 1; }
    echo "{\"value\": $rps, \"extra\": {\"requests\": $((DURATION * 40000))}}"
}

sc_bulk() { timeout -k 5 $((DURATION + 30)) python3 "$TLSCLIENT" bulk "$(tport "$1" 5)" "$CA" bench.test "$DURATION" "$2"; }

sc_idle() {
    # shellcheck disable=SC2086
    timeout -k 5 120 python3 "$TLSCLIENT" idle "$(tport "$1" 2)" "$CA" bench.test "$IDLE_CONNS" ${TPIDS[$1]}
}

scen_meta() { # description|metric|unit|better|cpu normalisation
    case $1 in
    hs13) echo "rustls client, $CONC threads: connect + full TLS 1.3 handshake + PING + close, ECDSA P-256|TLS connections/s|cps|higher|Mreq" ;;
    hs12) echo "rustls client, $CONC threads: connect + full TLS 1.2 handshake + PING + close, ECDSA P-256|TLS connections/s|cps|higher|Mreq" ;;
    stime13) echo "openssl s_time -new, TLS 1.3, $CONC clients, ECDSA P-256|full handshakes/s|cps|higher|Mreq" ;;
    stime12) echo "openssl s_time -new, TLS 1.2, $CONC clients, ECDSA P-256|full handshakes/s|cps|higher|Mreq" ;;
    redis-get) echo "redis-benchmark --tls GET -c 50 -P 1 --threads $RB_THREADS|requests/s|rps|higher|Mreq" ;;
    redis-set) echo "redis-benchmark --tls SET -c 50 -P 1 --threads $RB_THREADS|requests/s|rps|higher|Mreq" ;;
    bulk-up) echo "1 TLS stream client -> proxy (decrypt) -> sink|throughput|Gbit/s|higher|GB" ;;
    bulk-down) echo "1 TLS stream sink -> proxy (encrypt) -> client|throughput|Gbit/s|higher|GB" ;;
    idle) echo "$IDLE_CONNS TLS connections held, one PING each|memory per idle TLS session (RSS)|KiB|lower|" ;;
    esac
}

run_scenario() {
    case $2 in
    hs13) sc_rate "$1" 13 ;;
    hs12) sc_rate "$1" 12 ;;
    stime13) sc_handshakes "$1" -tls1_3 ;;
    stime12) sc_handshakes "$1" -tls1_2 ;;
    redis-get) sc_redis "$1" get ;;
    redis-set) sc_redis "$1" set ;;
    bulk-up) sc_bulk "$1" up ;;
    bulk-down) sc_bulk "$1" down ;;
    idle) sc_idle "$1" ;;
    esac
}

# ------------------------------------------------------------------ run
for t in "${TGTS[@]}"; do start_proxy "$t"; log "$t: ${TSTATUS[$t]}"; done
log "scenarios: ${SCEN[*]}; targets: ${TGTS[*]}; REPEAT=$REPEAT DURATION=${DURATION}s"
for s in "${SCEN[@]}"; do
    IFS='|' read -r desc metric unit better norm <<<"$(scen_meta "$s")"
    for ((r = 1; r <= REPEAT; r++)); do
        for t in "${TGTS[@]}"; do
            base=$(jq -nc --arg s "$s" --arg t "$t" --arg d "$desc" --arg m "$metric" --arg u "$unit" \
                --arg b "$better" --arg n "$norm" --argjson r "$r" \
                '{scenario:$s,target:$t,desc:$d,metric:$m,unit:$u,better:$b,cpu_norm:$n,repeat:$r}')
            if [[ ${TSTATUS[$t]} != ok ]]; then
                jq -c --arg e "${TSTATUS[$t]}" '. + {ok:false,error:$e}' <<<"$base" >>"$JSONL"
                continue
            fi
            # Freed memory is reused by the next run: measure idle memory on a
            # freshly started proxy every time.
            [[ $s == idle ]] && restart_proxy "$t"
            focus "$t"
            # shellcheck disable=SC2086
            c0=$(cpu_ticks ${TPIDS[$t]})
            if out=$(run_scenario "$t" "$s" 2>"$TMP/err"); then
                # shellcheck disable=SC2086
                c1=$(cpu_ticks ${TPIDS[$t]})
                cpu=$(awk -v a="$c0" -v b="$c1" -v k="$CLK_TCK" 'BEGIN{print (b-a)/k}')
                jq -c --argjson o "$out" --argjson c "$cpu" '. + $o + {ok:true,cpu_s:$c}' <<<"$base" >>"$JSONL"
                log "$s $t #$r: $(jq -r .value <<<"$out") $unit (cpu ${cpu}s)"
            else
                jq -c --arg e "$(head -c 200 "$TMP/err")" '. + {ok:false,error:$e}' <<<"$base" >>"$JSONL"
                log "$s $t #$r: FAILED $(head -c 200 "$TMP/err")"
            fi
        done
    done
done
for t in "${!TPIDS[@]}"; do for p in ${TPIDS[$t]}; do kill -CONT "$p" 2>/dev/null || true; done; done

versions="- $(uname -r); $(nproc) cores; $(haproxy -v 2>/dev/null | head -1 | cut -c1-40); $(nginx -v 2>&1 | cut -d' ' -f3); $(openssl version); WORKERS=$WORKERS REPEAT=$REPEAT DURATION=${DURATION}s CONC=$CONC; $(date -u +%Y-%m-%dT%H:%MZ)"
python3 "$ROOT/scripts/lib/report.py" tls "$JSONL" "$RESULTS_DIR/tls-latest.md" "$versions"
log "wrote $RESULTS_DIR/tls-latest.md and $JSONL"

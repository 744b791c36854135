#!/usr/bin/env bash
# TLS passthrough benchmark: haproxy | nginx (stream) | sluicegate, each routing
# by SNI (pt.bench.test) to the same TLS backend without touching TLS, and
# direct (the client talks TLS straight to the backend). Same conventions as
# scripts/bench-tls.sh (TARGETS, SCENARIOS, REPEAT interleaved, median
# [min, max], ratio to the best peer, proxy CPU) plus a ratio to direct.
#
#   scripts/bench-passthrough.sh                           # about 4 min
#   REPEAT=1 DURATION=3 scripts/bench-passthrough.sh       # quick look
#   SCENARIOS=hs13,hs12 TARGETS=direct,sluicegate scripts/bench-passthrough.sh
#
# The TLS backend is a separate HAProxy (`mode tcp`, `ssl crt`, BACKEND_THREADS
# threads) terminating TLS with an ECDSA P-256 certificate for pt.bench.test in
# front of the loadgen sink server, so it can serve bulk data in both directions
# and take full handshakes on several threads. It is not one of the measured
# proxies (its own process, never paused) but it shares the machine's cores
# with the client and the proxy under test.
#
# Scenarios:
#   bulk-up/-down   one TLS stream (python ssl client, 1 MiB writes / reads)
#                   to / from the sink behind the backend, DURATION seconds
#   hs13/hs12       TLS handshakes/s: CONC threads of connect, full handshake
#                   with SNI pt.bench.test (no resumption), close_notify, read
#                   to EOF, close; TLS 1.3 / 1.2. The client is the rustls
#                   example of the crate (examples/tls_handshakes.rs with
#                   --sni pt.bench.test --no-ping; bench-tls.sh uses it too).
#                   `openssl s_time` cannot be used: OpenSSL 3.0's s_time
#                   sends no SNI, so no SNI router can route it.
#
# Knobs: WORKERS (2) REPEAT (3) DURATION (4 s) CONC (4) BACKEND_THREADS (2)
# SCENARIOS (bulk-up,bulk-down,hs13) TARGETS (direct,haproxy,nginx,sluicegate)
# BASE_PORT (19000) KEEP_TMP (0) RESULTS_DIR (bench/results) SLUICEGATE_BIN
# (target/release/sluicegate), HS_BIN (target/release/examples/tls_handshakes).
# Never builds anything: `cargo build --release --example tls_handshakes`
# builds both. Results: stdout,
# RESULTS_DIR/passthrough-latest.md, RESULTS_DIR/passthrough-latest.jsonl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKERS=${WORKERS:-2}
REPEAT=${REPEAT:-3}
DURATION=${DURATION:-4}
CONC=${CONC:-4}
BACKEND_THREADS=${BACKEND_THREADS:-2}
SCENARIOS=${SCENARIOS:-bulk-up,bulk-down,hs13}
TARGETS=${TARGETS:-direct,haproxy,nginx,sluicegate}
BASE_PORT=${BASE_PORT:-19000}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
SLUICEGATE_BIN=${SLUICEGATE_BIN:-$ROOT/target/release/sluicegate}
LOADGEN=$ROOT/bench/loadgen/target/release/sluicegate-loadgen
HS_BIN=${HS_BIN:-$(dirname "$SLUICEGATE_BIN")/examples/tls_handshakes}
SNI=pt.bench.test

ALL_SCENARIOS=(bulk-up bulk-down hs13 hs12)
ALL_TARGETS=(direct haproxy nginx sluicegate)

LOG_TAG=bench-pt
# shellcheck source=lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

require_positive WORKERS REPEAT DURATION CONC BACKEND_THREADS BASE_PORT
IFS=, read -ra SCEN <<<"$SCENARIOS"
for s in "${SCEN[@]}"; do [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s'"; done
IFS=, read -ra TGTS <<<"$TARGETS"
for t in "${TGTS[@]}"; do [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || die "unknown target '$t'"; done

# ------------------------------------------------------------------ ports
# Sink BASE+5 (127.0.0.1), TLS backend BASE+1 on 127.0.0.1 (direct) and on
# 127.0.0.(10+k) for proxy k, which listens on 127.0.0.1:BASE+100k+1: the
# TIME_WAIT sockets of one target's handshake churn never slow another target.
declare -A TIDX=([direct]=0 [haproxy]=1 [nginx]=3 [sluicegate]=4)
SINK_PORT=$((BASE_PORT + 5))
BK_PORT=$((BASE_PORT + 1))
tport() { if [[ $1 == direct ]]; then echo "$BK_PORT"; else echo $((BASE_PORT + 100 * TIDX[$1] + 1)); fi; }
bip() { echo "127.0.0.$((10 + TIDX[$1]))"; }

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

for c in haproxy nginx openssl python3 jq ss; do
    command -v "$c" >/dev/null || die "$c not found (scripts/bench.sh installs the packages)"
done
[[ -x $SLUICEGATE_BIN ]] || die "$SLUICEGATE_BIN missing (cargo build --release)"
[[ -x $LOADGEN ]] || die "$LOADGEN missing (cargo build --release --manifest-path bench/loadgen/Cargo.toml)"
[[ -x $HS_BIN ]] || die "$HS_BIN missing (cargo build --release --example tls_handshakes)"

TMP=$(mktemp -d /tmp/sluicegate-bench-pt.XXXXXX)
chmod 755 "$TMP"
mkdir -p "$RESULTS_DIR"
JSONL=$RESULTS_DIR/passthrough-latest.jsonl
: >"$JSONL"


# ------------------------------------------------------------------ certificate
# ECDSA P-256 leaf (CN/SAN pt.bench.test) signed by a scratch CA; only the
# backend holds it: the proxies never see a key.
tls_cert "$TMP" "$SNI"
CA=$TMP/ca.crt

# ------------------------------------------------------------------ backend
start_bg sink "$LOADGEN" sink-server --listen "127.0.0.1:$SINK_PORT"
wait_listen "$LAST_PID" 10 "$SINK_PORT" || die "sink server did not start: $(cat "$TMP/sink.log")"
binds=""
for t in "${ALL_TARGETS[@]}"; do
    ip=127.0.0.1
    [[ $t == direct ]] || ip=$(bip "$t")
    binds+="${binds:+$'\n'}    bind $ip:$BK_PORT ssl crt $TMP/$SNI.pem"
done
fill "$PEERS/haproxy-passthrough-backend.cfg.in" BACKEND_THREADS "$BACKEND_THREADS" BINDS "$binds" \
    SINK "127.0.0.1:$SINK_PORT" >"$TMP/backend.cfg"
start_bg backend haproxy -f "$TMP/backend.cfg" -db
BACKEND_PID=$LAST_PID
wait_listen "$BACKEND_PID" 10 "$BK_PORT" || die "TLS backend did not start: $(cat "$TMP/backend.log")"



# ------------------------------------------------------------------ proxies
# Like for like: same worker count, no logging, connect 5 s / idle 60 s; each
# waits for the ClientHello, routes SNI pt.bench.test to the backend and then
# relays bytes untouched. The configs are the templates
# bench/peers/*-passthrough.*.in.
write_config() {
    local t=$1 ip
    ip=$(bip "$t")
    local common=(WORKERS "$WORKERS" LISTEN "$(tport "$t")" SNI "$SNI" BACKEND "$ip:$BK_PORT")
    case $t in
    haproxy) fill "$PEERS/haproxy-passthrough.cfg.in" "${common[@]}" >"$TMP/haproxy.cfg" ;;
    nginx) fill "$PEERS/nginx-passthrough.conf.in" "${common[@]}" TMP "$TMP" >"$TMP/nginx.conf" ;;
    sluicegate) fill "$PEERS/sluicegate-passthrough.toml.in" "${common[@]}" >"$TMP/sluicegate.toml" ;;
    esac
}

start_proxy() {
    local t=$1 pid
    if [[ $t == direct ]]; then
        TPIDS[$t]=""
    else
        write_config "$t"
        case $t in
        haproxy) start_bg haproxy haproxy -f "$TMP/haproxy.cfg" -db ;;
        nginx) start_bg nginx nginx -c "$TMP/nginx.conf" ;;
        sluicegate) start_bg sluicegate "$SLUICEGATE_BIN" -c "$TMP/sluicegate.toml" ;;
        esac
        pid=$LAST_PID
        if ! wait_listen "$pid" 15 "$(tport "$t")"; then
            TSTATUS[$t]="failed: did not listen ($(tail -c 300 "$TMP/$t.log" | tr '\n' ' '))"
            return
        fi
        TPIDS[$t]=$pid
        if [[ $t == nginx ]]; then
            sleep 0.3
            TPIDS[$t]="$pid $(pgrep -P "$pid" | tr '\n' ' ')"
        fi
    fi
    if [[ $(timeout 10 python3 "$TLSCLIENT" smoke "$(tport "$t")" "$CA" "$SNI" 2>&1) != ok ]]; then
        TSTATUS[$t]="failed: smoke test (verified TLS to $SNI through the target)"
        return
    fi
    TSTATUS[$t]=ok
}

# ------------------------------------------------------------------ measuring
wait_tw() {
    local t=$1 n waited=0 filt
    filt="( dport = :$(tport "$t") )"
    [[ $t == direct ]] || filt="( dport = :$(tport "$t") or dst $(bip "$t") )"
    while :; do
        n=$(ss -Htan state time-wait "$filt" 2>/dev/null | wc -l)
        ((n < 5000 || waited >= 65)) && break
        ((waited == 0)) && log "  waiting for $n TIME_WAIT sockets to drain"
        sleep 5
        waited=$((waited + 5))
    done
}

sc_bulk() { timeout -k 5 $((DURATION + 30)) python3 "$TLSCLIENT" bulk "$(tport "$1")" "$CA" "$SNI" "$DURATION" "$2"; }

sc_rate() {
    wait_tw "$1"
    timeout -k 5 $((DURATION + 30)) "$HS_BIN" "127.0.0.1:$(tport "$1")" "$DURATION" "$CONC" "$2" --sni "$SNI" --no-ping
}

scen_meta() { # description|metric|unit|better
    case $1 in
    bulk-up) echo "1 TLS stream client -> proxy (SNI route, passthrough) -> TLS backend -> sink|throughput|Gbit/s|higher" ;;
    bulk-down) echo "1 TLS stream sink -> TLS backend -> proxy (passthrough) -> client|throughput|Gbit/s|higher" ;;
    hs13) echo "rustls client, $CONC threads: connect + full TLS 1.3 handshake (SNI $SNI) + close, ECDSA P-256, through passthrough|TLS handshakes/s|cps|higher" ;;
    hs12) echo "rustls client, $CONC threads: connect + full TLS 1.2 handshake (SNI $SNI) + close, ECDSA P-256, through passthrough|TLS handshakes/s|cps|higher" ;;
    esac
}

run_scenario() {
    case $2 in
    bulk-up) sc_bulk "$1" up ;;
    bulk-down) sc_bulk "$1" down ;;
    hs13) sc_rate "$1" 13 ;;
    hs12) sc_rate "$1" 12 ;;
    esac
}

# ------------------------------------------------------------------ run
for t in "${TGTS[@]}"; do start_proxy "$t"; log "$t: ${TSTATUS[$t]}"; done
log "scenarios: ${SCEN[*]}; targets: ${TGTS[*]}; REPEAT=$REPEAT DURATION=${DURATION}s"
for s in "${SCEN[@]}"; do
    IFS='|' read -r desc metric unit better <<<"$(scen_meta "$s")"
    for ((r = 1; r <= REPEAT; r++)); do
        # Rotate the target order each repeat.
        order=("${TGTS[@]:$(((r - 1) % ${#TGTS[@]}))}" "${TGTS[@]:0:$(((r - 1) % ${#TGTS[@]}))}")
        for t in "${order[@]}"; do
            base=$(jq -nc --arg s "$s" --arg t "$t" --arg d "$desc" --arg m "$metric" --arg u "$unit" \
                --arg b "$better" --argjson r "$r" \
                '{scenario:$s,target:$t,desc:$d,metric:$m,unit:$u,better:$b,repeat:$r}')
            if [[ ${TSTATUS[$t]} != ok ]]; then
                jq -c --arg e "${TSTATUS[$t]}" '. + {ok:false,error:$e}' <<<"$base" >>"$JSONL"
                continue
            fi
            focus "$t"
            # shellcheck disable=SC2086
            c0=$(cpu_ticks ${TPIDS[$t]})
            b0=$(cpu_ticks "$BACKEND_PID")
            if out=$(run_scenario "$t" "$s" 2>"$TMP/err"); then
                # shellcheck disable=SC2086
                c1=$(cpu_ticks ${TPIDS[$t]})
                b1=$(cpu_ticks "$BACKEND_PID")
                cpu=$(awk -v a="$c0" -v b="$c1" -v k="$CLK_TCK" 'BEGIN{print (b-a)/k}')
                bcpu=$(awk -v a="$b0" -v b="$b1" -v k="$CLK_TCK" 'BEGIN{print (b-a)/k}')
                [[ $t == direct ]] && cpu=null
                [[ $(jq -r '.extra.failed // 0' <<<"$out") == 0 && $(jq -r '(.extra.join_tail_s // 0) < 1' <<<"$out") == true ]] || log "  $(jq -c .extra <<<"$out")"
                jq -c --argjson o "$out" --argjson c "$cpu" --argjson bc "$bcpu" \
                    '. + $o + {ok:true,cpu_s:$c,backend_cpu_s:$bc}' <<<"$base" >>"$JSONL"
                log "$s $t #$r: $(jq -r .value <<<"$out") $unit (proxy cpu ${cpu/null/-}s, backend cpu ${bcpu}s)"
            else
                jq -c --arg e "$(head -c 200 "$TMP/err")" '. + {ok:false,error:$e}' <<<"$base" >>"$JSONL"
                log "$s $t #$r: FAILED $(head -c 200 "$TMP/err")"
            fi
        done
    done
done
for t in "${!TPIDS[@]}"; do for p in ${TPIDS[$t]}; do kill -CONT "$p" 2>/dev/null || true; done; done

versions="- $(uname -r); $(nproc) cores; $(haproxy -v 2>/dev/null | head -1 | cut -c1-40); $(nginx -v 2>&1 | cut -d' ' -f3); $(openssl version); WORKERS=$WORKERS REPEAT=$REPEAT DURATION=${DURATION}s CONC=$CONC BACKEND_THREADS=$BACKEND_THREADS; $(date -u +%Y-%m-%dT%H:%MZ)"
python3 "$ROOT/scripts/lib/report.py" passthrough "$JSONL" "$RESULTS_DIR/passthrough-latest.md" "$versions"
log "wrote $RESULTS_DIR/passthrough-latest.md and $JSONL"

# Shared by scripts/bench.sh, bench-tls.sh, bench-passthrough.sh,
# bench-balance.sh and soak.sh (sourced; bash). Process start and stop by PID,
# readiness, CPU measurement, pausing the proxies not measured, a scratch TLS
# certificate, peer configs from the templates in bench/peers/. A script sets
# LOG_TAG (and DIE_CODE, default 1) before use, and TMP before start_bg; its
# cleanup calls stop_started. Its report step is scripts/lib/report.py.

log() { printf '[%s %(%H:%M:%S)T] %s\n' "${LOG_TAG:-bench}" -1 "$*" >&2; }
die() {
    log "error: $*"
    exit "${DIE_CODE:-1}"
}

# require_positive VAR...: each variable holds a positive integer.
require_positive() {
    local v
    for v in "$@"; do
        [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
    done
}

# Every process start_bg started, stopped by PID by stop_started.
STARTED=()
# Per measured target, its PIDs (space separated), for focus and resume_all.
declare -A TPIDS

# start_bg NAME CMD...: runs CMD in the background, stdout/stderr to
# $TMP/NAME.{out,log}; its PID in LAST_PID.
start_bg() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.log" &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
}

# stop_started: SIGCONT + SIGTERM to every started process (a stopped one
# handles SIGTERM only once continued), up to 5 s for them to end, then
# SIGKILL.
stop_started() {
    local p alive
    for p in "${STARTED[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill -TERM "$p" 2>/dev/null || true
    done
    for _ in {1..50}; do
        alive=0
        for p in "${STARTED[@]}"; do
            if kill -0 "$p" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${STARTED[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# finish_tmp RC: keep $TMP (and say where) when RC != 0 or KEEP_TMP=1,
# otherwise remove it.
finish_tmp() {
    if [[ -n ${TMP:-} && -d $TMP ]]; then
        if [[ ${KEEP_TMP:-0} == 1 || $1 != 0 ]]; then log "logs and configs kept in $TMP"; else rm -rf "$TMP"; fi
    fi
}

# The peer config templates (bench/peers/*.in).
PEERS=${PEERS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../bench/peers" && pwd)}

# fill TEMPLATE KEY VALUE...: prints TEMPLATE with every @KEY@ replaced by
# VALUE (taken literally; it may span lines).
fill() {
    local s
    s=$(<"$1")
    shift
    while (($#)); do
        s=${s//"@$1@"/"$2"}
        shift 2
    done
    printf '%s\n' "$s"
}

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# wait_listen PID SECONDS PORT...: every port listening while PID lives.
wait_listen() {
    local pid=$1 secs=$2 p deadline
    shift 2
    deadline=$((SECONDS + secs))
    for p in "$@"; do
        until listening "$p"; do
            kill -0 "$pid" 2>/dev/null || return 1
            ((SECONDS < deadline)) || return 1
            sleep 0.1
        done
    done
}

CLK_TCK=$(getconf CLK_TCK)
# cpu_ticks PID...: utime+stime of the processes (all threads of each), in ticks.
cpu_ticks() {
    local sum=0 p line rest f
    for p in "$@"; do
        [[ -r /proc/$p/stat ]] || continue
        line=$(<"/proc/$p/stat") || continue
        rest=${line##*) }
        read -ra f <<<"$rest"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

# focus TARGET: pause every other target's processes (SIGSTOP), resume
# TARGET's, so an idle proxy cannot take CPU from the one measured.
# PAUSE_IDLE=0 turns it off.
focus() {
    local t=$1 o p sig
    [[ ${PAUSE_IDLE:-1} == 1 ]] || return 0
    for o in "${!TPIDS[@]}"; do
        sig=STOP
        [[ $o == "$t" ]] && sig=CONT
        for p in ${TPIDS[$o]}; do kill -"$sig" "$p" 2>/dev/null || true; done
    done
}

resume_all() {
    local o p
    for o in "${!TPIDS[@]}"; do for p in ${TPIDS[$o]}; do kill -CONT "$p" 2>/dev/null || true; done; done
}

# tls_cert DIR NAME: a scratch CA (DIR/ca.crt) and an ECDSA P-256 leaf for
# NAME signed by it: DIR/NAME.crt, DIR/NAME.key and DIR/NAME.pem (both, for
# HAProxy).
tls_cert() {
    local d=$1 n=$2
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=bench CA" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" \
        -keyout "$d/$n.key" -out "$d/$n.csr" 2>/dev/null
    echo "subjectAltName=DNS:$n" >"$d/$n.ext"
    openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/$n.ext" -out "$d/$n.crt" 2>/dev/null
    cat "$d/$n.crt" "$d/$n.key" >"$d/$n.pem"
}

# The TLS client of the benchmarks (python ssl): see scripts/lib/tlsclient.py.
TLSCLIENT=$(dirname "${BASH_SOURCE[0]}")/tlsclient.py

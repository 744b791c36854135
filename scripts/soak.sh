#!/usr/bin/env bash
# Soak test (not run in CI): SOAK_MINUTES of mixed PostgreSQL and Redis traffic
# through the release binary, with a SIGHUP reload every RELOAD_EVERY seconds.
#
#   scripts/soak.sh                      # 30 minutes
#   SOAK_MINUTES=2 scripts/soak.sh       # a quick proof that it works
#
# Every minute: a weighted pgbench mix (-c 8: select-only and tpcb-like) and
# rounds of redis-benchmark (-c 20, SET and GET, -P 1 and -P 16) run through the
# proxy for LOAD_SECONDS; then, with no client connected, one line with the
# proxy's RSS (VmRSS), open descriptors and threads, the interval's pgbench tps
# and p99 (per script, from a sampled transaction log), the last redis round's
# rps and p99, the /ping status and time, the reloads done, and the errors seen
# in the interval: pgbench failed transactions or aborted clients, redis-benchmark
# failures, integrity checks through the proxy (tpcb-like keeps
# sum(accounts.abalance) = sum(history.delta); a Redis value written is read
# back), server dial failures in /metrics, and proxy log lines at warn or error.
# At the end a summary (RSS and descriptors first/last/max, total errors).
#
# Exit status: 0 only if no error was seen, the proxy lived throughout, and
# between the first and the last quiet sample RSS grew by at most
# RSS_GROWTH_MAX_MIB and descriptors by at most FD_GROWTH_MAX (both measured
# with no client connected, so they compare like with like).
#
# Knobs (environment): SOAK_MINUTES (30) WORKERS (2) RELOAD_EVERY (10 s)
# LOAD_SECONDS (55 per minute) PG_SCALE (10) REDIS_N (100000 per -P 1 test,
# 8x for -P 16) RSS_GROWTH_MAX_MIB (32) FD_GROWTH_MAX (16) BASE_PORT (18000)
# SKIP_BUILD (0) KEEP_TMP (0) SLUICEGATE_BIN (target/release/sluicegate).
# Needs: postgresql (initdb, pg_ctl, pgbench, psql), redis-server, redis-tools,
# curl, ss. Runs as root; PostgreSQL runs as user postgres.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOAK_MINUTES=${SOAK_MINUTES:-30}
WORKERS=${WORKERS:-2}
RELOAD_EVERY=${RELOAD_EVERY:-10}
LOAD_SECONDS=${LOAD_SECONDS:-55}
PG_SCALE=${PG_SCALE:-10}
REDIS_N=${REDIS_N:-100000}
RSS_GROWTH_MAX_MIB=${RSS_GROWTH_MAX_MIB:-32}
FD_GROWTH_MAX=${FD_GROWTH_MAX:-16}
BASE_PORT=${BASE_PORT:-18000}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
SLUICEGATE_BIN=${SLUICEGATE_BIN:-$ROOT/target/release/sluicegate}

LOG_TAG=soak
DIE_CODE=2
# shellcheck source=lib/bench.sh
source "$ROOT/scripts/lib/bench.sh"

require_positive SOAK_MINUTES WORKERS RELOAD_EVERY LOAD_SECONDS PG_SCALE REDIS_N RSS_GROWTH_MAX_MIB FD_GROWTH_MAX BASE_PORT
((BASE_PORT >= 1024 && BASE_PORT + 20 < 32768)) || die "BASE_PORT must leave room below the ephemeral range (32768)"

ADMIN_PORT=$BASE_PORT
PG_PROXY=$((BASE_PORT + 1))
REDIS_PROXY=$((BASE_PORT + 2))
PG_PORT=$((BASE_PORT + 11))
REDIS_PORT=$((BASE_PORT + 12))

PG_BIN=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1)
[[ -n $PG_BIN ]] || die "PostgreSQL binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
for c in redis-server redis-benchmark redis-cli curl ss "$PG_BIN/pgbench" "$PG_BIN/psql"; do
    command -v "$c" >/dev/null || die "$c not found"
done
id postgres >/dev/null 2>&1 || die "no user postgres (install the postgresql package)"

# ------------------------------------------------------------------ cleanup
# The same start/cleanup pattern as scripts/bench.sh: every PID started here is
# killed by PID at exit, PostgreSQL is stopped with pg_ctl.
TMP=""
PG_DATA=""
STARTED=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [[ -n $PG_DATA && -f $PG_DATA/postmaster.pid ]]; then
        su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D '$PG_DATA' -m immediate stop" >/dev/null 2>&1
    fi
    stop_started
    finish_tmp "$rc"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'exit 143' TERM


# ------------------------------------------------------------------ build, backends
if [[ $SKIP_BUILD != 1 ]]; then
    log "building sluicegate (release)"
    (cd "$ROOT" && cargo build --release --quiet)
fi
[[ -x $SLUICEGATE_BIN ]] || die "$SLUICEGATE_BIN missing (run without SKIP_BUILD=1)"
for p in "$ADMIN_PORT" "$PG_PROXY" "$REDIS_PROXY" "$PG_PORT" "$REDIS_PORT"; do
    listening "$p" && die "port $p is in use (set BASE_PORT)"
done

TMP=$(mktemp -d /tmp/sluicegate-soak.XXXXXX)
chmod 755 "$TMP" # PostgreSQL (user postgres) must enter it

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no \
    --daemonize no --dir "$TMP" --logfile "$TMP/redis-server.log" &
STARTED+=($!)
wait_listen "$!" 10 "$REDIS_PORT" || die "redis-server did not start: $(tail -5 "$TMP/redis-server.log")"

log "starting PostgreSQL and loading pgbench -s $PG_SCALE"
mkdir -p "$TMP/pg" && chown postgres: "$TMP/pg"
PG_DATA=$TMP/pg/data
su postgres -s /bin/sh -c "mkdir -m 700 '$PG_DATA'"
su postgres -s /bin/sh -c "$PG_BIN/initdb -D '$PG_DATA' -A trust -U postgres" >"$TMP/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$TMP/initdb.log")"
cat >>"$PG_DATA/postgresql.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_DATA'
max_connections = 100
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
echo "host all all 127.0.0.0/8 trust" >>"$PG_DATA/pg_hba.conf"
su postgres -s /bin/sh -c "$PG_BIN/pg_ctl -D '$PG_DATA' -l '$TMP/pg/postgres.log' -w start" >"$TMP/pg_ctl.log" 2>&1 ||
    die "PostgreSQL did not start: $(tail -5 "$TMP/pg/postgres.log" "$TMP/pg_ctl.log" 2>&1)"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -i -s "$PG_SCALE" -q postgres >"$TMP/pgbench-init.log" 2>&1 ||
    die "pgbench -i failed: $(tail -5 "$TMP/pgbench-init.log")"

# ------------------------------------------------------------------ proxy
CFG=$TMP/sluicegate.toml
# write_config GENERATION: the same listeners each time (a reload may not change
# them); each generation renames an extra router and turns health checks on or
# off, so every reload really builds and publishes a new snapshot and restarts
# the checks.
write_config() {
    local g=$1 hc=""
    if ((g % 2)); then
        hc=$(printf '[tcp.services.%s.loadBalancer.healthCheck]\ninterval = "2s"\ntimeout = "1s"\n' pg redis)
    fi
    cat >"$CFG.new" <<EOF
# scripts/soak.sh, generation $g
[runtime]
workers = $WORKERS
accessLog = false
[entryPoints.pg]
address = "127.0.0.1:$PG_PROXY"
[entryPoints.redis]
address = "127.0.0.1:$REDIS_PROXY"
[entryPoints.traefik]
address = "127.0.0.1:$ADMIN_PORT"
[ping]
[metrics.prometheus]
[tcp.routers.pg]
entryPoints = ["pg"]
rule = "HostSNI(\`*\`)"
service = "pg"
[tcp.routers.redis]
entryPoints = ["redis"]
rule = "HostSNI(\`*\`)"
service = "redis"
[tcp.routers.reload-$g]
entryPoints = ["pg"]
rule = "ClientIP(\`192.0.2.$((g % 250 + 1))\`)"
service = "pg"
[tcp.services.pg.loadBalancer]
[[tcp.services.pg.loadBalancer.servers]]
address = "127.0.0.1:$PG_PORT"
[tcp.services.redis.loadBalancer]
[[tcp.services.redis.loadBalancer.servers]]
address = "127.0.0.1:$REDIS_PORT"
$hc
EOF
    mv "$CFG.new" "$CFG" # atomic: a reload never reads half a file
}
write_config 0
"$SLUICEGATE_BIN" check -c "$CFG" >"$TMP/check.log" 2>&1 || die "config check failed: $(cat "$TMP/check.log")"
"$SLUICEGATE_BIN" -c "$CFG" >"$TMP/proxy.out" 2>"$TMP/proxy.log" &
PROXY_PID=$!
STARTED+=("$PROXY_PID")
wait_listen "$PROXY_PID" 15 "$PG_PROXY" "$REDIS_PROXY" "$ADMIN_PORT" ||
    die "sluicegate did not listen: $(tail -5 "$TMP/proxy.log")"
log "sluicegate $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?') pid $PROXY_PID, $WORKERS workers; $(nproc) cores, kernel $(uname -r)"

# ------------------------------------------------------------------ measuring
proc_field() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }
rss_kib() { proc_field "$PROXY_PID" VmRSS; }
threads() { proc_field "$PROXY_PID" Threads; }
fds() { local f=(/proc/"$PROXY_PID"/fd/*); echo "${#f[@]}"; }
alive() { kill -0 "$PROXY_PID" 2>/dev/null; }
# Sum of a Prometheus family over all its series.
metric_sum() {
    curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v f="$1" 'index($0, f "{") == 1 { s += $NF } END { printf "%d\n", s }'
}
proxy_warnings() { grep -cE ' level=(warn|error) ' "$TMP/proxy.log" || true; }

# Reloads, and a sample of RSS and descriptors under load, every RELOAD_EVERY s.
reloader() {
    local g=0
    while alive; do
        sleep "$RELOAD_EVERY"
        g=$((g + 1))
        write_config "$g"
        kill -HUP "$PROXY_PID" 2>/dev/null || break
        echo "$g" >"$TMP/reloads.sent"
        echo "$(rss_kib) $(fds) $(threads)" >>"$TMP/samples"
    done
}
reloader &
STARTED+=($!)

# redis_rounds DEADLINE OUT: rounds of SET/GET at -P 1 and -P 16 until DEADLINE
# (epoch seconds); each test's CSV row goes to OUT as "P,<csv>"; failures to OUT.err.
redis_rounds() {
    local deadline=$1 out=$2 p n res
    while (($(date +%s) < deadline)); do
        for p in 1 16; do
            n=$REDIS_N
            ((p > 1)) && n=$((REDIS_N * 8))
            if res=$(timeout -k 5 120 redis-benchmark -h 127.0.0.1 -p "$REDIS_PROXY" -c 20 -n "$n" \
                -r 100000 -t set,get -P "$p" --csv 2>&1); then
                grep -E '^"(SET|GET)"' <<<"$res" | sed "s/^/$p,/" >>"$out" || echo "P$p: no result: ${res:0:200}" >>"$out.err"
                grep -iE 'error' <<<"$res" | head -3 >>"$out.err" || true
            else
                echo "P$p: exit $?: $(grep -m1 -i error <<<"$res" || echo "${res:0:200}")" >>"$out.err"
                sleep 1 # a backend that is down must not turn this into a busy loop
            fi
        done
    done
}

# redis_cell OUT P TEST: "rps/p99ms" of the last row for TEST at -P P.
redis_cell() {
    local line
    line=$(grep "^$2,\"$3\"" "$1" 2>/dev/null | tail -1) || true
    [[ -n $line ]] || { echo "-"; return; }
    IFS=, read -r _ _ rps _ _ _ _ p99 _ <<<"${line//\"/}"
    printf '%.0fk/%s' "$(awk -v r="$rps" 'BEGIN { print r / 1000 }')" "$p99"
}

# p99 (ms) of transactions of one pgbench script (0 select-only, 1 tpcb-like) in
# the sampled per-transaction logs PREFIX.* (field 3: latency in us).
pg_p99() {
    cat "$1".* 2>/dev/null | awk -v s="$2" '$4 == s { print $3 }' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR) { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f", v[i] / 1000 } else print "-" }'
}

# Integrity through the proxy: tpcb-like moves money with history rows, so the
# sums always agree; a fresh Redis value reads back.
check_integrity() {
    local m=$1 sums v
    sums=$(PGCONNECT_TIMEOUT=5 timeout 60 "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PROXY" -U postgres -At -c \
        "select (select sum(abalance) from pgbench_accounts), (select coalesce(sum(delta),0) from pgbench_history)" postgres 2>&1) ||
        { echo "psql through the proxy failed: $sums"; return; }
    [[ $sums =~ ^(-?[0-9]+)\|(-?[0-9]+)$ && ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]] ||
        echo "pgbench sums disagree (accounts|history): $sums"
    v="soak-$m-$RANDOM$RANDOM"
    redis-cli -h 127.0.0.1 -p "$REDIS_PROXY" set soak:check "$v" >/dev/null 2>&1 || true
    [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PROXY" get soak:check 2>&1) == "$v" ]] ||
        echo "redis value did not read back through the proxy"
}

# ------------------------------------------------------------------ the soak
printf '%-5s %8s %5s %4s | %7s %8s %8s %6s | %-13s %-13s %-13s %-13s | %-12s %7s | %s\n' \
    min "rss_MiB" fds thr pg_tps "p99_S" "p99_tpcb" failed "set_P1" "get_P1" "set_P16" "get_P16" \
    "ping" reloads "errors (interval/total)"
total_errors=0
warn_seen=$(proxy_warnings)
dial_seen=$(metric_sum sluicegate_server_dial_failures_total)
RSS=() FDS=()
for ((m = 1; m <= SOAK_MINUTES; m++)); do
    alive || { log "sluicegate exited: $(tail -5 "$TMP/proxy.log")"; total_errors=$((total_errors + 1)); break; }
    errs=()
    end=$(($(date +%s) + LOAD_SECONDS))
    rout=$TMP/redis-$m.csv
    : >"$rout"
    redis_rounds "$end" "$rout" &
    rpid=$!
    STARTED+=("$rpid")
    pgout=$(PGCONNECT_TIMEOUT=5 timeout -k 5 $((LOAD_SECONDS + 60)) "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PROXY" \
        -U postgres -n -c 8 -j 2 -T "$LOAD_SECONDS" -b select-only@1 -b tpcb-like@1 \
        -l --sampling-rate 0.05 --log-prefix "$TMP/pglog-$m" postgres 2>&1) ||
        errs+=("pgbench exit $?: $(grep -iE 'error|abort' <<<"$pgout" | head -2 | tr '\n' ' ')")
    wait "$rpid" || true
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$pgout" | head -1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$pgout" | head -1)
    [[ -n $tps ]] || errs+=("pgbench: no result")
    ((${failed:-0} == 0)) || errs+=("pgbench: $failed failed transactions")
    if [[ -s $rout.err ]]; then
        while IFS= read -r l; do errs+=("redis: $l"); done <"$rout.err"
    fi
    [[ -s $rout ]] || errs+=("redis-benchmark: no result")
    while IFS= read -r l; do [[ -n $l ]] && errs+=("$l"); done < <(check_integrity "$m")
    # Quiet sample: every client has disconnected.
    sleep 2
    ping=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}/%{time_total}' "http://127.0.0.1:$ADMIN_PORT/ping" || echo "fail")
    [[ $ping == 200/* ]] || errs+=("/ping: $ping")
    dial=$(metric_sum sluicegate_server_dial_failures_total)
    ((dial == dial_seen)) || errs+=("$((dial - dial_seen)) server dial failures (/metrics)")
    dial_seen=$dial
    warn_now=$(proxy_warnings)
    if ((warn_now > warn_seen)); then
        errs+=("$((warn_now - warn_seen)) proxy log lines at warn/error, last: $(grep -E ' level=(warn|error) ' "$TMP/proxy.log" | tail -1)")
    fi
    warn_seen=$warn_now
    rss=$(rss_kib) nfd=$(fds) thr=$(threads)
    RSS+=("$rss") FDS+=("$nfd")
    echo "$rss $nfd $thr" >>"$TMP/samples"
    total_errors=$((total_errors + ${#errs[@]}))
    ping_ms=$(awk -F/ '{ printf "%s/%.1fms", $1, $2 * 1000 }' <<<"$ping")
    printf '%-5s %8.1f %5s %4s | %7.0f %8s %8s %6s | %-13s %-13s %-13s %-13s | %-12s %7s | %s\n' \
        "$m" "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" "$nfd" "$thr" "${tps:-0}" \
        "$(pg_p99 "$TMP/pglog-$m" 0)" "$(pg_p99 "$TMP/pglog-$m" 1)" "${failed:--}" \
        "$(redis_cell "$rout" 1 SET)" "$(redis_cell "$rout" 1 GET)" \
        "$(redis_cell "$rout" 16 SET)" "$(redis_cell "$rout" 16 GET)" \
        "$ping_ms" "$(cat "$TMP/reloads.sent" 2>/dev/null || echo 0)" "${#errs[@]}/$total_errors"
    for e in "${errs[@]:0:10}"; do printf '      ! %s\n' "${e:0:300}"; done
    ((${#errs[@]} <= 10)) || printf '      ! ... and %d more\n' $((${#errs[@]} - 10))
    rm -f "$TMP/pglog-$m".*
done

# ------------------------------------------------------------------ summary
reloaded=$(grep -c ' msg=reloaded ' "$TMP/proxy.log" || true)
sent=$(cat "$TMP/reloads.sent" 2>/dev/null || echo 0)
# The reload sent last may still be in progress.
((reloaded + 1 >= sent)) || { log "only $reloaded of $sent reloads logged msg=reloaded"; total_errors=$((total_errors + 1)); }
read -r rss_max fd_max < <(awk 'NR == 1 || $1 > r { r = $1 } NR == 1 || $2 > f { f = $2 } END { print r, f }' "$TMP/samples")
status=0
echo
echo "summary: $SOAK_MINUTES min, $sent reloads sent, $reloaded logged as reloaded"
if ((${#RSS[@]})); then
    first=${RSS[0]} last=${RSS[-1]} ffirst=${FDS[0]} flast=${FDS[-1]}
    printf 'RSS (MiB, quiet samples): first %.1f  last %.1f  max %.1f (any sample)\n' \
        "$(awk -v v="$first" 'BEGIN { print v / 1024 }')" "$(awk -v v="$last" 'BEGIN { print v / 1024 }')" \
        "$(awk -v v="$rss_max" 'BEGIN { print v / 1024 }')"
    echo "fds (quiet samples): first $ffirst  last $flast  max $fd_max (any sample)"
    if ((last - first > RSS_GROWTH_MAX_MIB * 1024)); then
        echo "FAIL: RSS grew by $(((last - first) / 1024)) MiB (bound $RSS_GROWTH_MAX_MIB MiB)"
        status=1
    fi
    if ((flast - ffirst > FD_GROWTH_MAX)); then
        echo "FAIL: descriptors grew by $((flast - ffirst)) (bound $FD_GROWTH_MAX)"
        status=1
    fi
fi
echo "errors: $total_errors"
((total_errors == 0)) || status=1
alive || { echo "FAIL: sluicegate is not running"; status=1; }
((status == 0)) && echo "soak: OK" || echo "soak: FAILED"
exit "$status"

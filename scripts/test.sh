#!/usr/bin/env bash
# Install what the tests use (Debian packages; needs root or sudo) and run
# every test: the crate's unit and integration tests, and the load generator's
# own tests. Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the integration tests drive as real clients and servers.
PKGS=(redis-server redis-tools postgresql postgresql-contrib openssl python3 procps iproute2 util-linux coreutils etcd-server systemd curl man-db dpkg patroni python3-pip pebble)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# psycopg 3 with its bundled libpq (PostgreSQL 17+ client: direct TLS,
# cancel_safe) for tests/pg_front.rs, into whichever python3 runs the tests.
if ! python3 -c 'import psycopg' 2>/dev/null; then
  python3 -m pip install -q 'psycopg[binary]' 2>/dev/null \
    || python3 -m pip install -q --break-system-packages 'psycopg[binary]'
fi
# Debian starts a redis-server service on install; the tests run their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop redis-server 2>/dev/null || true; fi

# Tests that lack a tool skip loudly (locally) or fail (CI=true); they also
# append a line here, so the count is printed whatever the harness hides.
SKIP_LOG="$(mktemp)"
trap 'rm -f "$SKIP_LOG"' EXIT
export SLUICEGATE_SKIP_LOG="$SKIP_LOG"

# The skip count is printed whether the tests pass or fail.
rc=0
cargo test --all-targets "$@" || rc=$?
if [ -f bench/loadgen/Cargo.toml ]; then
  cargo test --release --manifest-path bench/loadgen/Cargo.toml || rc=$?
fi

skipped=$(sort -u "$SKIP_LOG" | wc -l)
echo "skipped tests: $skipped"
if [ "$skipped" -gt 0 ]; then sort -u "$SKIP_LOG" | sed 's/^/  skipped: /'; fi
exit "$rc"

#!/usr/bin/env bash
# Run the fuzz targets of fuzz/ one after another with cargo-fuzz (nightly,
# libFuzzer), each for a fixed time, single job.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Defaults: 600 seconds, every target in fuzz/fuzz_targets. Installs
# cargo-fuzz if it is missing. What each run finds that reaches new coverage
# is merged into fuzz/corpus/<target>/: only the inputs that reach code edges
# the corpus already there does not (edge coverage, not hit counts, so the
# corpus grows by little), and the seeds named by the unit tests stay. Commit
# those files: plain `cargo test` replays them.
# A crash or hang leaves its input under fuzz/artifacts/<target>/ and makes the
# script exit 1 after the remaining targets have run. libFuzzer stops a target
# at its first crash; FUZZ_KEEP_GOING=1 runs each in fork mode (one worker,
# -ignore_crashes=1) so that a known crash still gets the whole time.
# A summary line per target is printed at the end: seconds run, executions,
# corpus entries added, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-600}"
[ $# -gt 0 ] && shift
case "$secs" in '' | *[!0-9]*)
  echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
  ;;
esac

if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# Extra read-only seed directories per target: corpora of inputs a target
# also decodes, though no target is named after them.
extra_seeds() {
  case "$1" in
    pg_startup) echo fuzz/corpus/pg_backend ;;
  esac
}

logdir="$(mktemp -d "${TMPDIR:-/tmp}/sluicegate-fuzz.XXXXXX")"
summary=()
failed=0
for t in "${targets[@]}"; do
  if [ ! -f "fuzz/fuzz_targets/$t.rs" ]; then
    echo "no fuzz target $t (fuzz/fuzz_targets/$t.rs)" >&2
    exit 2
  fi
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  found="$logdir/$t-found"
  mkdir -p "$found"
  before=$(find "$corpus" -type f | wc -l)
  crashes_before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  # shellcheck disable=SC2046 # extra_seeds is a list of paths without spaces
  seeds=("$corpus" $(extra_seeds "$t"))
  echo "== $t: ${secs}s (log: $logdir/$t.log)"
  # Built first, so that the time measured is the fuzzing alone.
  cargo +nightly fuzz build "$t" >"$logdir/$t-build.log" 2>&1 || {
    echo "build of $t failed: $logdir/$t-build.log" >&2
    exit 1
  }
  start=$(date +%s)
  # New inputs go to $found (the first directory); the corpus is read only.
  rc=0
  keep_going=()
  [ "${FUZZ_KEEP_GOING:-0}" = 1 ] && keep_going=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  cargo +nightly fuzz run "$t" "$found" "${seeds[@]}" -- \
    -max_total_time="$secs" -timeout=25 -print_final_stats=1 "${keep_going[@]}" \
    >"$logdir/$t.log" 2>&1 || rc=$?
  ran=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logdir/$t.log" | tail -1)
  # Fork mode prints no final stats: its last status line counts them.
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "$logdir/$t.log" | tail -1)
  # Keep only what reaches new edges over the corpus.
  cargo +nightly fuzz run "$t" "$corpus" "$found" -- -merge=1 -use_counters=0 \
    >"$logdir/$t-merge.log" 2>&1 || echo "merge for $t failed: $logdir/$t-merge.log" >&2
  added=$(($(find "$corpus" -type f | wc -l) - before))
  crashes=$(($(find "fuzz/artifacts/$t" -type f | wc -l) - crashes_before))
  [ "$crashes" -eq 0 ] || failed=1
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "!! $t exited $rc; tail of its log:"
    tail -30 "$logdir/$t.log"
  fi
  line="$t: ${ran}s, ${execs:-?} executions, $added corpus entries added, $crashes crashes (exit $rc)"
  echo "$line"
  summary+=("$line")
done

echo
echo "fuzz summary (logs in $logdir):"
printf '  %s\n' "${summary[@]}"
exit "$failed"

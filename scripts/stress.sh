#!/usr/bin/env bash
# Stress the transfer suite: builds like scripts/test.sh (same build folder, same ZCX_SANITIZE /
# ZCX_BUILD_TYPE, see scripts/build-env.sh), then runs build/tests/transfer_test N times and
# reports how often it failed and how.
#   scripts/stress.sh                  # 20 runs of the host instances ('*/tcp:*/shm')
#   scripts/stress.sh 100              # 100 runs
#   ZCX_STRESS_FILTER='*Close*/tcp' scripts/stress.sh 50 --gtest_repeat=2
# Arguments after N go to transfer_test (after the filter, so a --gtest_filter there wins).
# Environment: ZCX_STRESS_FILTER   gtest filter (default '*/tcp:*/shm': every host instance)
#              ZCX_STRESS_TIMEOUT  limit per run in seconds (default 900); then SIGTERM to the
#                                  run's process group, SIGKILL 10 s later
# The log of every failing run is kept in <build>/stress-logs/run-K.log (the folder is emptied
# first; passing runs leave no log). At the end: runs, passes, failures split into assertion
# failures (gtest exit 1), crashes (killed by a signal: exit > 128) and timeouts (exit 124), the
# failing tests with the number of runs each failed in, and the wall time.
# Exit status: 0 every run passed; 1 a run failed; 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=20
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
  runs=$1
  shift
fi
if [ "$runs" -lt 1 ]; then
  echo "usage: scripts/stress.sh [N>=1] [transfer_test arguments...]" >&2
  exit 2
fi
filter=${ZCX_STRESS_FILTER:-*/tcp:*/shm}
run_timeout=${ZCX_STRESS_TIMEOUT:-900}

# shellcheck source=scripts/build-env.sh
. scripts/build-env.sh

binary=$build/tests/transfer_test
logs=$build/stress-logs
rm -rf "$logs"
mkdir -p "$logs"

# The test a run that died was in: the last "[ RUN      ]" with no "[       OK ]"/"[  FAILED  ]".
unfinished_test() {
  awk '/^\[ RUN      \] /{t=$4} /^\[       OK \] |^\[  FAILED  \] /{t=""} END{if (t!="") print t}' "$1"
}

passes=0 assertion_failures=0 crashes=0 timeouts=0
failed_names=()  # one entry per (run, failing test)
start=$(date +%s)
echo "stress: $runs runs of $binary --gtest_filter='$filter' ${*:+$* }(limit ${run_timeout} s each)"
for ((k = 1; k <= runs; k++)); do
  log=$logs/run-$k.log
  run_start=$(date +%s)
  rc=0
  timeout --kill-after=10 "$run_timeout" "$binary" --gtest_color=no --gtest_filter="$filter" "$@" \
    >"$log" 2>&1 || rc=$?
  took=$(($(date +%s) - run_start))
  if [ "$rc" -eq 0 ]; then
    passes=$((passes + 1))
    rm -f "$log"
    echo "stress: run $k/$runs passed (${took} s)"
    continue
  fi
  # Tests gtest reports as failed (each is listed twice: when it fails and in the summary).
  mapfile -t names < <(sed -n 's/^\[  FAILED  \] \([^ ,]*\).*/\1/p' "$log" | grep -v '^[0-9]*$' | sort -u)
  # 137 after the limit: the run ignored SIGTERM and timeout's SIGKILL ended it.
  if [ "$rc" -eq 124 ] || { [ "$rc" -eq 137 ] && [ "$took" -ge "$run_timeout" ]; }; then
    rc=124
    timeouts=$((timeouts + 1))
    how="timed out after ${run_timeout} s"
  elif [ "$rc" -gt 128 ]; then
    crashes=$((crashes + 1))
    how="killed by SIG$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128)))"
  else
    assertion_failures=$((assertion_failures + 1))
    how="failed (exit $rc)"
  fi
  if [ "$rc" -eq 124 ] || [ "$rc" -gt 128 ]; then
    in_test=$(unfinished_test "$log")
    [ -z "$in_test" ] || names+=("$in_test (${how%% after*})")
  fi
  [ ${#names[@]} -gt 0 ] || names=("(no test named: see the log)")
  failed_names+=("${names[@]}")
  echo "stress: run $k/$runs $how (${took} s): ${names[*]}; log $log"
done
wall=$(($(date +%s) - start))

failures=$((runs - passes))
echo "stress: ==== summary ===="
echo "stress: runs $runs, passed $passes, failed $failures" \
  "(assertion failures $assertion_failures, crashes $crashes, timeouts $timeouts)"
if [ "$failures" -gt 0 ]; then
  echo "stress: failing tests (number of runs):"
  printf '%s\n' "${failed_names[@]}" | sort | uniq -c | sort -rn | sed 's/^/stress:   /'
  echo "stress: logs of the failing runs: $logs/"
else
  rmdir "$logs"
fi
echo "stress: wall time ${wall} s"
[ "$failures" -eq 0 ]

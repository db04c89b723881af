#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, clang) and runs each from its checked-in seed corpus,
# one at a time, on a scratch copy of the corpus (the checked-in one does not grow).
#   scripts/fuzz.sh            # 30 s per target
#   scripts/fuzz.sh 20         # 20 s per target
#   scripts/fuzz.sh -runs=N    # N executions per target
# Fails on the first crash, leak or broken property; the input is kept in build-fuzz/crashes/.
# Targets: one per folder of tests/fuzz/corpus/ (control_frame, hello, reject, lookup, lookup_reply,
# descriptor, ucx_frame, verbs_wire, auth_frames: the authentication frames and the frame MAC).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

limit=${1:-30}
case "$limit" in
  -runs=[0-9]*) budget=("$limit") ;;
  [0-9]*) budget=("-max_total_time=$limit") ;;
  *) echo "usage: $0 [SECONDS_PER_TARGET | -runs=N]" >&2; exit 2 ;;
esac

build=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DZCX_BUILD_FUZZERS=ON -DZCX_BUILD_TESTS=OFF -DZCX_BUILD_PERF=OFF >/dev/null
cmake --build "$build" --target zcx_fuzzers -j "${ZCX_JOBS:-2}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$build/crashes"

for corpus in tests/fuzz/corpus/*/; do
  name=$(basename "$corpus")
  cp -r "$corpus" "$scratch/$name"
  log="$scratch/$name.log"
  start=$(date +%s)
  if ! "$build/tests/fuzz/${name}_fuzz" "${budget[@]}" -max_len=4096 -print_final_stats=1 \
      -artifact_prefix="$build/crashes/${name}-" "$scratch/$name" >"$log" 2>&1; then
    # From the first report (broken property, sanitizer, timeout) on; else the end of the log.
    grep -m1 -A30 -E 'fuzz property failed|==ERROR|runtime error|deadly signal|timeout' "$log" >&2 ||
      tail -n 40 "$log" >&2
    echo "fuzz: ${name} FAILED; reproduce with $build/tests/fuzz/${name}_fuzz <input in $build/crashes/>" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "fuzz: ${name}: ${runs} executions in $(( $(date +%s) - start )) s, no crash"
done

#!/usr/bin/env bash
# between-nodes.sh - zcx_perf against perftest (ib_write_bw, ib_read_bw, ib_send_bw) between two soft-RoCE
# guests (scripts/rxe-cluster.sh -n 2, 1 vCPU each), alternating in one run: zcx, raw, zcx, raw...
# Server on node 1, client on node 0, 64 KiB messages, each tool with its default options except
# the iteration count (the same for both, so that every run takes a bounded time).
#
# Usage: perf/between-nodes.sh [-r ROUNDS] [-n ITERS] [-t TEST] [-z "FLAGS"]
#   -r ROUNDS  alternations (default 3)
#   -n ITERS   operations per run, both tools (default 1000)
#   -t TEST    write_bw (default), read_bw or send_bw: zcx_perf --test=TEST against ib_TEST
#   -z FLAGS   more zcx_perf client flags, e.g. "--progress_spin_us=1000000" (default: none)
# Prints one line per run (MB/s = 10^6 B/s for both; perftest prints MiB/s, converted here; CPU =
# (user+sys)/wall of each process, in % of one vCPU), then the medians and their ratio (a run that
# failed or that perftest reports as 0.00 MB/s is left out of its median).
# Needs build/perf/zcx_perf. Logs: perf/out-nodes/.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
ROUNDS=3 ITERS=1000 TEST=write_bw ZFLAGS=""
while getopts "r:n:t:z:h" o; do
  case $o in
    r) ROUNDS=$OPTARG ;;
    n) ITERS=$OPTARG ;;
    t) TEST=$OPTARG ;;
    z) ZFLAGS=$OPTARG ;;
    *) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 2 ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $ITERS =~ ^[1-9][0-9]*$ ]] || { echo "between-nodes: -r and -n want numbers" >&2; exit 2; }
[[ $TEST =~ ^(write|read|send)_bw$ ]] || { echo "between-nodes: -t wants write_bw, read_bw or send_bw" >&2; exit 2; }
[ -x "$REPO_ROOT/build/perf/zcx_perf" ] || { echo "between-nodes: build build/perf/zcx_perf first" >&2; exit 2; }
OUT=$REPO_ROOT/perf/out-nodes
rm -rf "$OUT" && mkdir -p "$OUT"

# The guest half (bash, on both nodes). $1 out folder, $2 rounds, $3 iterations.
guest() {
  cat <<'EOF'
set -uo pipefail
out=$1 rounds=$2 iters=$3 test=$4
read -r -a zflags <<< "${5:-}"
perf=build/perf/zcx_perf
read -r -a ips <<< "$ZCX_NODE_IPS"
TIMEFORMAT='%R %U %S'
wait_file() { for _ in $(seq 1200); do [ -s "$1" ] && return 0; sleep 0.1; done; return 1; }
cpu() { awk '{ printf "%.0f", ($2 + $3) / $1 * 100 }' "$1"; }
for ((i = 1; i <= rounds; i++)); do
  port=$((19400 + i))
  if [ "$ZCX_NODE" = 1 ]; then
    { time "$perf" --listen="${ips[1]}" --port=$port --ready_fd=3 3> "$out/zcx.$i.ready" > "$out/zcx.$i.server.log" 2>&1; } 2> "$out/zcx.$i.server.time"
    { time "ib_$test" -d rxe0 -x 1 -F -s 65536 -n "$iters" -p $port > "$out/raw.$i.server.log" 2>&1; } 2> "$out/raw.$i.server.time" &
    # (perftest's "Waiting for client" sits in its stdout buffer: look at the socket instead)
    for _ in $(seq 600); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
    echo "$port" > "$out/raw.$i.listening"
    wait
  else
    wait_file "$out/zcx.$i.ready" || { echo "no zcx_perf server"; exit 1; }
    { time "$perf" --test="$test" --size=65536 --iters="$iters" --port=$port "${zflags[@]}" "${ips[1]}" > "$out/zcx.$i.client.log" 2>&1; } 2> "$out/zcx.$i.client.time"
    wait_file "$out/raw.$i.listening" || { echo "no ib_$test server"; exit 1; }
    { time "ib_$test" -d rxe0 -x 1 -F -s 65536 -n "$iters" -p $port "${ips[1]}" > "$out/raw.$i.client.log" 2>&1; } 2> "$out/raw.$i.client.time"
    z=$(awk '/^ *65536 / { print $4 }' "$out/zcx.$i.client.log")
    r=$(awk '/#bytes/ { h = 1; next } h && $1 == 65536 { printf "%.2f", $4 * 1048576 / 1e6; exit }' "$out/raw.$i.client.log")
    # (under TCG perftest sometimes reports 0.00 for a run that moved its data: not a figure)
    [ "$r" != 0.00 ] || r=INVALID
    sleep 1   # (the server's time file)
    echo "round $i: zcx_perf ${z:-FAILED} MB/s (client CPU $(cpu "$out/zcx.$i.client.time")%, server $(cpu "$out/zcx.$i.server.time")%)  ib_$test ${r:-FAILED} MB/s (client CPU $(cpu "$out/raw.$i.client.time")%, server $(cpu "$out/raw.$i.server.time")%)" | tee -a "$out/rounds.txt"
  fi
done
EOF
}

cd "$REPO_ROOT"
rc=0
scripts/rxe-cluster.sh -n 2 -c 1 -t 3600 -- bash -c "$(guest)" between-nodes "$OUT" "$ROUNDS" "$ITERS" "$TEST" "$ZFLAGS" || rc=$?
[ -f "$OUT/rounds.txt" ] || { echo "between-nodes: no results (rxe-cluster.sh exit $rc)" >&2; exit 1; }
awk '$4 + 0 > 0 { z[++nz] = $4 } $12 + 0 > 0 { r[++nr] = $12 }
  function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  END { mz = med(z, nz); mr = med(r, nr)
        printf "medians: zcx_perf %.2f MB/s (%d runs), ib_%s %.2f MB/s (%d valid runs), zcx/raw %.2f\n", mz, nz, test, mr, nr, (mr > 0 ? mz / mr : 0) }' test="$TEST" "$OUT/rounds.txt"
exit "$rc"

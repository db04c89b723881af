#!/bin/bash
# rxe-send-rounds.sh - inside a soft-RoCE guest, alternate zcx_perf send_bw and ib_send_bw at
# 64 KiB on rxe0 (server on CPU 0, client on CPU 1, compare.sh's arguments), printing per round
# each tool's MB/s, both processes' user/system CPU seconds and the rxe0 hw_counters that moved
# (retransmissions: completer_retry_err, duplicate_request).
#   scripts/rxe-vm.sh -e ROUNDS=8 -e "TOOLS=zcx ib" -- bash perf/rxe-send-rounds.sh
# TOOLS: "zcx" (defaults), "zcxN" (--transport_params verbs.ack_timeout=N), "ib" (ib_send_bw).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ZCX=${ZCX_PERF:-$ROOT/build/perf/zcx_perf}
DEV=${RXE_DEV:-rxe0}
IP=${RXE_IP:-10.11.0.1}
COUNTERS=/sys/class/infiniband/$DEV/ports/1/hw_counters
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

snap() {  # snap FILE: every hw counter of the port, sorted by name
  local f
  for f in "$COUNTERS"/*; do echo "$(basename "$f") $(cat "$f")"; done | sort >"$1"
}
delta() { join "$1" "$2" | awk '$3 != $2 { printf "%s=%d ", $1, $3 - $2 }'; }

port=20000
for r in $(seq "${ROUNDS:-8}"); do
  for tool in ${TOOLS:-zcx ib}; do
    port=$((port + 1))
    snap "$TMP/before"
    if [[ $tool == zcx* ]]; then
      zargs=()
      [[ -n ${tool#zcx} ]] && zargs=(--transport_params "verbs.ack_timeout=${tool#zcx}")
      timeout 120 taskset -c 0 /usr/bin/time -f "%U %S" "$ZCX" --listen "$IP" --port "$port" \
        --transport verbs --device "$DEV" --gid_index 1 "${zargs[@]}" --quiet=false --v=1 \
        >"$TMP/server.log" 2>&1 &
      sleep 1
      out=$(timeout 120 taskset -c 1 /usr/bin/time -f "%U %S" "$ZCX" --transport verbs --device "$DEV" \
        --gid_index 1 --test send_bw --size 65536 --depth 128 --iters 2000 --port "$port" \
        --json "${zargs[@]}" "$IP" 2>&1)
      mbps=$(grep -o '"bw_avg_MBps":[0-9.]*' <<<"$out" | cut -d: -f2)
    else
      timeout 120 taskset -c 0 /usr/bin/time -f "%U %S" ib_send_bw -d "$DEV" -x 1 -p "$port" -F -s 65536 \
        -n 2000 >"$TMP/server.log" 2>&1 &
      sleep 1
      out=$(timeout 120 taskset -c 1 /usr/bin/time -f "%U %S" ib_send_bw -d "$DEV" -x 1 -p "$port" -F \
        -s 65536 -n 2000 "$IP" 2>&1)
      # perftest prints MiB/s as "MB/s"
      mbps=$(awk '$1 == 65536 { print $4 * 1.048576 }' <<<"$out" | tail -1)
    fi
    wait  # the server (it exits after its one client; timeout ends it otherwise)
    snap "$TMP/after"
    if [[ $tool == zcx* ]]; then grep -h "ACK timeout" "$TMP/server.log" | head -1 | cut -c1-160; fi
    [[ -n $mbps ]] || echo "round $r $tool FAILED: $(tail -3 <<<"$out")"
    echo "round $r $tool MBps=$mbps client_cpu=[$(tail -1 <<<"$out")]" \
      "server_cpu=[$(tail -1 "$TMP/server.log")] $(delta "$TMP/before" "$TMP/after")"
  done
done

#!/usr/bin/env bash
# test-cluster.sh - zcx between soft-RoCE nodes: a multi-node suite on three QEMU guests joined by
# one emulated Ethernet rail (scripts/rxe-cluster.sh -n 3), for CI and for hosts without RDMA.
# Steps:
#   1. scripts/install-deps.sh, then build zcx_perf and transfer_test into build/ (configures build/ like scripts/test-rxe.sh if
#      it is not configured yet)
#   2. one cluster run, every transfer over the verbs transport (rxe0, RC QPs), every byte checked:
#      pairs       node 0 -> node 1: zcx_perf write_bw, read_bw, send_bw with --verify at several
#                  sizes (each test's server process must end well too)
#      transfer    the transfer suite (transfer_test, verbs cases but the 64 MiB one) on node 0 with every peer process
#                  on node 1 (ZCX_TEST_REMOTE_PEER, tests/peer_process.h)
#      all-to-all  every node writes to and reads from every other node, verified; in each round
#                  all nodes move data at once (node i to node i+k)
#      link cut    node 0 writes to node 1 without pause; node 1's NIC loses its link (QEMU
#                  set_link off): both processes must fail within LINK_BOUND seconds with a reason
#                  naming the broken peer, not hang or wait for the 120 s operation deadline; once
#                  the link is back, a new connection moves verified data again
#      node kill   node 0 writes to node 2; node 2's guest is stopped (QEMU quit, like a crashed
#                  host): node 0 must fail within KILL_BOUND seconds (peer_timeout 10 s + slack)
#   3. if that passed, a second cluster run with two nodes and two rails (rxe-cluster.sh -n 2 -r 2):
#      rails       zcx_perf write_bw/read_bw node 0 -> node 1 with --device=rxe0,rxe1, every
#                  byte verified and both rails carrying data ("rails" in the JSON)
#      rail cut    node 1's rail-1 NIC loses its link under a 45 s write_bw: the run still
#                  ends well with every byte verified, rail 1 stops carrying data (its slices
#                  move to rail 0); once the link is back a new connection uses both rails
# Fails (non-zero) if the build fails, any check fails, a test process does not end in time, or
# the cluster cannot run. Logs: build/cluster-logs/ (one file per process). See docs/soft-roce.md.
#
# Usage: scripts/test-cluster.sh
# Environment: ZCX_CLUSTER_TIMEOUT  limit of the whole cluster run in seconds (default 900)
#              (and rxe-cluster.sh's: ZCX_RXE_CACHE, ZCX_RXE_MTU)
# Exit status: 0 all passed; 1 a check failed; 124 the cluster run timed out; 125 the cluster
#              could not be run (scripts/rxe-cluster.sh's message says why).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT BUILD_DIR=$REPO_ROOT/build
readonly TIME_LIMIT=${ZCX_CLUSTER_TIMEOUT:-900}

step() { echo "=== test-cluster: $*"; }
die() { echo "test-cluster: error: $*" >&2; exit 1; }

build() {
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$REPO_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DZCX_WERROR=ON || die "cmake configure failed"
  fi
  cmake --build "$BUILD_DIR" -j2 --target zcx_perf transfer_test || die "build failed"
}

# The guest half (bash, run on every node from the repository root). $1: build folder, $2: log
# folder (empty at the start: the host cleans it). Nodes coordinate through files in $2.
guest_script() {
  cat <<'EOF'
set -uo pipefail
build=$1 logs=$2 mode=${3:-main}
perf=$build/perf/zcx_perf
DEVICE=rxe0
me=$ZCX_NODE n=$ZCX_NODES
read -r -a ips <<< "$ZCX_NODE_IPS"
readonly LINK_BOUND=60 KILL_BOUND=40 WAIT=300 BARRIER_WAIT=600
failures=() summary=()
fail() { echo "FAIL: $*"; failures+=("$*"); }
ok() { echo "ok: $*"; summary+=("$*"); }
now() { date +%s; }

# Every node (of those given, default all) reaches NAME; fails after WAIT seconds.
barrier() {
  local name=$1 t_end=$(( $(date +%s) + BARRIER_WAIT )) m
  shift
  local nodes=("$@")
  [ ${#nodes[@]} -gt 0 ] || nodes=($(seq 0 $((n - 1))))
  touch "$logs/sync.$name.$me"
  for m in "${nodes[@]}"; do
    until [ -e "$logs/sync.$name.$m" ]; do
      [ "$(now)" -lt "$t_end" ] || { fail "barrier $name: node $m did not come within ${BARRIER_WAIT}s"; return 1; }
      sleep 0.2
    done
  done
}

# start_server TAG PORT: a one-client zcx_perf server on this node (pid in SERVER_PID).
start_server() {
  "$perf" --transport=verbs --device="$DEVICE" --listen="$RXE_IP" --port="$2" --ready_fd=3 \
    3> "$logs/$1.ready" > "$logs/$1.server.log" 2>&1 &
  SERVER_PID=$!
}

# wait_server TAG: the server of TAG (this node's SERVER_PID) must exit 0 within WAIT seconds.
wait_server() {
  local t_end=$(( $(now) + WAIT )) rc=0
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    if [ "$(now)" -ge "$t_end" ]; then
      kill -9 "$SERVER_PID"; fail "$1: server still running after ${WAIT}s"; return
    fi
    sleep 0.2
  done
  wait "$SERVER_PID" || rc=$?
  [ "$rc" = 0 ] || fail "$1: server exited with status $rc: $(tail -n 3 "$logs/$1.server.log" | tr '\n' ' ')"
}

# wait_ready TAG: the server of TAG (on another node) listens.
wait_ready() {
  local t_end=$(( $(now) + WAIT ))
  until [ -s "$logs/$1.ready" ]; do
    [ "$(now)" -lt "$t_end" ] || { fail "$1: its server did not listen within ${WAIT}s"; return 1; }
    sleep 0.2
  done
}

# client TAG SERVER_IP PORT ARGS...: a verified zcx_perf client run; checks that it passed,
# ran on verbs and verified every byte it moved.
client() {
  local tag=$1 ip=$2 port=$3 rc=0 line bytes verified
  shift 3
  wait_ready "$tag" || return 0
  timeout -k 5 "$WAIT" "$perf" --transport=verbs --device="$DEVICE" --port="$port" --json --verify "$@" \
    "$ip" > "$logs/$tag.client.log" 2>&1 || rc=$?
  line=$(grep '^{' "$logs/$tag.client.log" | tail -1)
  if [ "$rc" != 0 ]; then
    fail "$tag: zcx_perf $* exited with status $rc: $(grep -v '^{' "$logs/$tag.client.log" | tail -n 3 | tr '\n' ' ')"
  elif [[ $line != *'"transport":"verbs"'* ]]; then
    fail "$tag: not on verbs: $line"
  else
    bytes=$(sed -n 's/.*"iterations":\([0-9]*\).*/\1/p' <<< "$line")
    bytes=$(( bytes * $(sed -n 's/.*"size":\([0-9]*\).*/\1/p' <<< "$line") ))
    verified=$(sed -n 's/.*"verified_bytes":\([0-9]*\).*/\1/p' <<< "$line")
    if [ -z "$verified" ] || [ "$verified" -lt "$bytes" ] || [ "$bytes" = 0 ]; then
      fail "$tag: only ${verified:-no} of $bytes bytes verified: $line"
    else
      ok "$tag: $* -> $(sed -n 's/.*"bw_avg_MBps":\([0-9.e+]*\).*/\1/p' <<< "$line") MB/s, $verified bytes verified"
    fi
  fi
}

# rails_bytes TAG: the bytes of every rail in the client's JSON line ("rails"), one per line.
rails_bytes() {
  grep '^{' "$logs/$1.client.log" | tail -1 | grep -o '"rails":\[[^]]*\]' | grep -o '"bytes":[0-9]*' | cut -d: -f2
}

report() {
  echo "=== node $me summary (logs in $logs)"
  for s in "${summary[@]}"; do echo "  ok    $s"; done
  for f in "${failures[@]}"; do echo "  FAIL  $f"; done
}

# ------------------------------------------------------------------ multi-rail (-r 2 run)
if [ "$mode" = rails ]; then
  DEVICE=$RXE_DEVS   # rxe0,rxe1: one QP per rail, large operations striped
  echo "=== rails ($DEVICE, node 0 -> node 1, verified, both rails carry data)"
  rail_tests=(
    "write_bw --size=1048576 --depth=8 --iters=8"
    "write_bw --size=4194304 --depth=4 --iters=4"
    "read_bw --size=1048576 --iters=32"
    "read_bw --size=300007 --iters=64"
  )
  i=0
  for t in "${rail_tests[@]}"; do
    tag=rails$i port=$((19600 + i))
    read -r -a targs <<< "$t"
    if [ "$me" = 1 ]; then start_server "$tag" "$port"; wait_server "$tag"; fi
    if [ "$me" = 0 ]; then
      nf=${#failures[@]}
      client "$tag" "${ips[1]}" "$port" --test="${targs[@]}"
      read -r -d "" -a rb <<< "$(rails_bytes "$tag")" || true
      if [ "${#failures[@]}" = "$nf" ]; then
        if [ "${#rb[@]}" != 2 ] || [ "${rb[0]}" = 0 ] || [ "${rb[1]}" = 0 ]; then
          fail "$tag: not striped over both rails: rails bytes '${rb[*]}'"
        else ok "$tag: rxe0 ${rb[0]} B, rxe1 ${rb[1]} B"
        fi
      fi
    fi
    i=$((i + 1))
  done
  barrier rails 0 1

  # Rail 1 of node 1 loses its link under load: the slices it had move to rail 0, the run
  # finishes with every byte verified, and rail 1 carried less than rail 0.
  echo "=== rail cut under load (node 1's rail 1)"
  if [ "$me" = 1 ]; then start_server railcut 19650; wait_server railcut; fi
  if [ "$me" = 0 ]; then
    wait_ready railcut
    GLOG_logtostderr=1 timeout -k 5 $WAIT "$perf" --transport=verbs --device="$DEVICE" --port=19650 \
      --json --verify --test=write_bw --size=1048576 --depth=8 --duration=45 "${ips[1]}" \
      > "$logs/railcut.client.log" 2>&1 &
    cpid=$!
    sleep 8
    kill -0 "$cpid" 2>/dev/null || fail "rail cut: the client ended before the cut: $(tail -n 3 "$logs/railcut.client.log" | tr '\n' ' ')"
    "$ZCX_CLUSTER_CTL/ctl" link 1 1 down || fail "rail cut: could not cut node 1's rail 1"
    rc=0; wait "$cpid" || rc=$?
    line=$(grep '^{' "$logs/railcut.client.log" | tail -1)
    read -r -d "" -a rb <<< "$(rails_bytes railcut)" || true
    verified=$(sed -n 's/.*"verified_bytes":\([0-9]*\).*/\1/p' <<< "$line")
    errors=$(sed -n 's/.*"verify_errors":\([0-9]*\).*/\1/p' <<< "$line")
    if [ "$rc" != 0 ]; then fail "rail cut: the client failed (status $rc): $(grep -v '^{' "$logs/railcut.client.log" | tail -n 3 | tr '\n' ' ')"
    elif [ "${errors:-1}" != 0 ] || [ "${verified:-0}" = 0 ]; then fail "rail cut: verification: $line"
    elif ! grep -q 'rail rxe1 failed' "$logs/railcut.client.log"; then fail "rail cut: the client never saw rail rxe1 fail"
    elif [ "${#rb[@]}" != 2 ] || [ "${rb[1]}" -ge "${rb[0]}" ]; then fail "rail cut: rail 1 did not stop carrying data: rails bytes '${rb[*]}'"
    else ok "rail cut: the run finished over rail 0, $verified bytes verified; rxe0 ${rb[0]} B, rxe1 ${rb[1]} B"
    fi
    "$ZCX_CLUSTER_CTL/ctl" link 1 1 up || fail "rail cut: could not restore node 1's rail 1"
  fi
  barrier railcut 0 1
  # Once the link is back a new connection stripes over both rails again.
  if [ "$me" = 1 ]; then
    for _ in $(seq 100); do grep -q ACTIVE /sys/class/infiniband/rxe1/ports/1/state && break; sleep 0.1; done
    start_server rejoin 19651; wait_server rejoin
  fi
  if [ "$me" = 0 ]; then
    client rejoin "${ips[1]}" 19651 --test=write_bw --size=1048576 --depth=8 --iters=8
    read -r -d "" -a rb <<< "$(rails_bytes rejoin)" || true
    [ "${#rb[@]}" = 2 ] && [ "${rb[1]:-0}" != 0 ] || fail "rejoin: rail 1 carries nothing: '${rb[*]}'"
  fi
  report
  [ ${#failures[@]} -eq 0 ]
  exit
fi

# ------------------------------------------------------------------ pairs: node 0 -> node 1
# write_bw --verify checks the last write of every slot (one per operation in flight): with
# --iters equal to --depth every write has its own slot, so every byte written is checked.
pair_tests=(
  "write_bw --size=65536 --depth=64 --iters=64"
  "write_bw --size=4093 --qps=2 --depth=32 --iters=32"
  "write_bw --size=1048583 --depth=8 --iters=8"
  "read_bw --size=65536 --iters=200"
  "read_bw --size=1048583 --iters=16"
  "send_bw --size=65536 --iters=200"
  "send_bw --size=4093 --iters=400"
  "write_lat --size=8 --iters=200"
)
echo "=== pairs (node 0 -> node 1, verified)"
i=0
for t in "${pair_tests[@]}"; do
  tag=pair$i port=$((19000 + i))
  read -r -a targs <<< "$t"
  if [ "$me" = 1 ]; then start_server "$tag" "$port"; wait_server "$tag"; fi
  if [ "$me" = 0 ]; then client "$tag" "${ips[1]}" "$port" --test="${targs[@]}"; fi
  i=$((i + 1))
done
barrier pairs

# ------------------------------------------------------------------ transfer suite, peer on node 1
# HugeWriteAndReadBack64MiB is left to scripts/test-rxe.sh (one guest): 64 MiB within the suite's
# 20 s operation deadline needs > 3.4 MB/s between guests, more than a loaded 2-core host gives.
transfer_filter='*verbs*:-*HugeWriteAndReadBack64MiB*'
echo "=== transfer suite (node 0, peers on node 1: $transfer_filter)"
if [ "$me" = 1 ]; then
  "$build/tests/transfer_test" --zcx-peer-server="$RXE_IP:19500" > "$logs/transfer.peer-server.log" 2>&1 &
  peer_server=$!
fi
if [ "$me" = 0 ]; then
  rc=0
  for _ in $(seq 100); do grep -q listening "$logs/transfer.peer-server.log" 2>/dev/null && break; sleep 0.2; done
  ZCX_TEST_REMOTE_PEER=${ips[1]}:19500 timeout -k 10 600 "$build/tests/transfer_test" \
    --gtest_filter="$transfer_filter" --gtest_color=no > "$logs/transfer.log" 2>&1 || rc=$?
  ran=$(sed -n 's/^\[==========\] \([0-9]*\) tests\{0,1\} from .* ran\..*/\1/p' "$logs/transfer.log" | tail -1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\{0,1\}.*/\1/p' "$logs/transfer.log" | tail -1)
  if [ "$rc" != 0 ]; then fail "transfer_test with remote peers exited with status $rc: $(grep -E '^\[  FAILED' "$logs/transfer.log" | head -n 5 | tr '\n' ' ')"
  elif [ -z "$ran" ] || [ "$ran" = 0 ]; then fail "transfer_test ran no tests"
  elif [ -n "$skipped" ] && [ "$skipped" != 0 ]; then fail "transfer_test skipped $skipped tests"
  elif ! grep -q "remote peer" "$logs/transfer.log"; then fail "transfer_test did not use the remote peer"
  else ok "transfer_test: $ran verbs tests passed, every peer on node 1 ($(grep -c 'remote peer' "$logs/transfer.log") peer processes)"
  fi
fi
barrier transfer
if [ "$me" = 1 ]; then kill "$peer_server" 2>/dev/null; wait "$peer_server" 2>/dev/null; fi

# ------------------------------------------------------------------ all-to-all
echo "=== all-to-all ($n nodes, verified)"
for ((k = 1; k < n; k++)); do
  to=$(( (me + k) % n ))
  for t in write_bw read_bw; do
    tag=a2a.k$k.$t port=$((19100 + 10 * k))
    # Every node serves the node k before it and is a client of the node k after it, at once.
    start_server "$tag.to$me" "$port"
    client "$tag.to$to" "${ips[to]}" "$port" --test=$t --size=65536 --depth=32 --iters=32
    wait_server "$tag.to$me"
    barrier "$tag"
  done
done

# ------------------------------------------------------------------ link cut: node 0 -> node 1
echo "=== link cut under load (node 0 -> node 1)"
if [ "$me" = 1 ]; then
  start_server cut 19200
  t0=$(now)
  while kill -0 "$SERVER_PID" 2>/dev/null && [ $(( $(now) - t0 )) -lt $WAIT ]; do sleep 0.2; done
  rc=0; kill -0 "$SERVER_PID" 2>/dev/null && { kill -9 "$SERVER_PID"; rc=hang; }
  [ "$rc" = hang ] || { wait "$SERVER_PID" || rc=$?; }
  t_cut=$(cat "$logs/cut.time" 2>/dev/null || echo 0)
  if [ "$rc" = hang ]; then fail "link cut: the server on node 1 still ran ${WAIT}s after the cut"
  elif [ "$rc" = 0 ]; then fail "link cut: the server on node 1 did not notice the cut (exit 0)"
  elif [ $(( $(now) - t_cut )) -gt $LINK_BOUND ]; then fail "link cut: the server on node 1 noticed only after $(( $(now) - t_cut ))s"
  else ok "link cut: node 1's server failed $(( $(now) - t_cut ))s after the cut: $(grep -v '^{' "$logs/cut.server.log" | tail -n 1)"
  fi
fi
if [ "$me" = 0 ]; then
  wait_ready cut
  timeout -k 5 $WAIT "$perf" --transport=verbs --device=rxe0 --port=19200 --test=write_bw \
    --size=65536 --duration=180 "${ips[1]}" > "$logs/cut.client.log" 2>&1 &
  cpid=$!
  sleep 5   # under load
  if ! kill -0 "$cpid" 2>/dev/null; then fail "link cut: the client ended before the cut: $(tail -n 3 "$logs/cut.client.log" | tr '\n' ' ')"; fi
  now > "$logs/cut.time"
  "$ZCX_CLUSTER_CTL/ctl" link 1 0 down || fail "link cut: could not cut node 1's link"
  t_cut=$(now) rc=0
  wait "$cpid" || rc=$?
  took=$(( $(now) - t_cut ))
  reason=$(grep -v '^{' "$logs/cut.client.log" | grep 'zcx_perf:' | tail -n 1)
  if [ "$rc" = 0 ]; then fail "link cut: the client did not notice the cut (exit 0)"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then fail "link cut: the client hung (killed after ${WAIT}s)"
  elif [ "$took" -gt $LINK_BOUND ]; then fail "link cut: the client failed only after ${took}s: $reason"
  elif ! grep -qiE 'stopped answering|unreachable|peer (closed|timed out|is gone|silent)|connection (broken|reset|lost)|keepalive|link down' <<< "$reason"; then
    fail "link cut: the client failed after ${took}s without naming the broken peer: $reason"
  else ok "link cut: node 0's client failed ${took}s after the cut: $reason"
  fi
  sleep 2
  "$ZCX_CLUSTER_CTL/ctl" link 1 0 up || fail "link cut: could not restore node 1's link"
fi
barrier cut 0 1
if [ "$me" = 1 ]; then
  for _ in $(seq 100); do grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state && break; sleep 0.1; done
  start_server relink 19201; wait_server relink
fi
if [ "$me" = 0 ]; then client relink "${ips[1]}" 19201 --test=write_bw --size=65536 --depth=32 --iters=32; fi
barrier relinked

# ------------------------------------------------------------------ node kill: node 0 -> node 2
if [ "$n" -ge 3 ]; then
  echo "=== node killed mid-transfer (node 0 -> node 2)"
  if [ "$me" = 2 ]; then
    report
    printf '%s\n' "${failures[@]}" > "$logs/node2.failures"
    start_server kill 19300
    touch "$logs/node2.reported"
    wait "$SERVER_PID"   # (the guest is stopped under it)
    exit 1   # not reached unless the guest was not stopped
  fi
  if [ "$me" = 0 ]; then
    wait_ready kill
    timeout -k 5 $WAIT "$perf" --transport=verbs --device=rxe0 --port=19300 --test=write_bw \
      --size=65536 --duration=180 "${ips[2]}" > "$logs/kill.client.log" 2>&1 &
    cpid=$!
    sleep 5
    kill -0 "$cpid" 2>/dev/null || fail "node kill: the client ended before the kill: $(tail -n 3 "$logs/kill.client.log" | tr '\n' ' ')"
    for _ in $(seq 300); do [ -e "$logs/node2.reported" ] && break; sleep 0.2; done
    "$ZCX_CLUSTER_CTL/ctl" kill 2 || fail "node kill: could not stop node 2"
    t_kill=$(now) rc=0
    wait "$cpid" || rc=$?
    took=$(( $(now) - t_kill ))
    reason=$(grep 'zcx_perf:' "$logs/kill.client.log" | tail -n 1)
    if [ "$rc" = 0 ]; then fail "node kill: the client did not notice (exit 0)"
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then fail "node kill: the client hung (killed after ${WAIT}s)"
    elif [ "$took" -gt $KILL_BOUND ]; then fail "node kill: the client failed only after ${took}s: $reason"
    else ok "node kill: node 0's client failed ${took}s after node 2 stopped: $reason"
    fi
    while read -r f; do [ -z "$f" ] || failures+=("node 2: $f"); done < "$logs/node2.failures"
  fi
fi

report
[ ${#failures[@]} -eq 0 ]
EOF
}

main() {
  [ $# -eq 0 ] || { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 2; }
  cd "$REPO_ROOT"
  local t0 t1 rc=0 logs=$BUILD_DIR/cluster-logs
  t0=$(date +%s)
  step "install-deps"
  scripts/install-deps.sh
  step "build ($BUILD_DIR)"
  build
  rm -rf "$logs" && mkdir -p "$logs/rails"
  step "cluster run (scripts/rxe-cluster.sh -n 3)"
  t1=$(date +%s)
  scripts/rxe-cluster.sh -n 3 -t "$TIME_LIMIT" -s "$REPO_ROOT" -C "$REPO_ROOT" -- \
    bash -c "$(guest_script)" test-cluster "$BUILD_DIR" "$logs" || rc=$?
  step "cluster wall time $(( $(date +%s) - t1 )) s (boot included); total $(( $(date +%s) - t0 )) s"
  if [ "$rc" = 0 ]; then
    # Multi-rail: two nodes with two NICs each (rxe0 on rail 0, rxe1 on rail 1).
    step "multi-rail run (scripts/rxe-cluster.sh -n 2 -r 2)"
    t1=$(date +%s)
    scripts/rxe-cluster.sh -n 2 -r 2 -t "$TIME_LIMIT" -s "$REPO_ROOT" -C "$REPO_ROOT" -- \
      bash -c "$(guest_script)" test-cluster "$BUILD_DIR" "$logs/rails" rails || rc=$?
    step "multi-rail wall time $(( $(date +%s) - t1 )) s (boot included)"
  fi
  case $rc in
    0) step "PASSED" ;;
    124) step "FAILED: the cluster run timed out" ;;
    125) step "FAILED: could not run the cluster (see scripts/rxe-cluster.sh's message above)" ;;
    *) step "FAILED"; rc=1 ;;
  esac
  exit "$rc"
}

main "$@"

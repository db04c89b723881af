#!/usr/bin/env bash
# test-rxe.sh - run zcx's verbs tests on soft-RoCE, in one QEMU guest (scripts/rxe-vm.sh).
# Works on hosts without RDMA (CI). Steps:
#   1. scripts/install-deps.sh
#   2. configure (if build/ is not configured yet) and build into build/ (the folder
#      scripts/test.sh uses; RelWithDebInfo, no sanitizers)
#   3. one guest run: the rxe0 summary, then
#        build/tests/transfer_test --gtest_filter='*verbs*'   (core suite on the verbs transport)
#        build/tests/verbs_transport_test                    (the transport's own tests)
#        build/tests/verbs_rails_test                        (multi-rail: rxe0 + rxe1 on dummy1)
#        build/tests/security_test --gtest_filter='*verbs*'  (forged/revoked accesses refused)
#      each if built; then ib_write_bw (perftest) over rxe0 as a reference.
# Fails (non-zero) if the build fails, if neither test binary exists, if a binary fails, runs
# no test or skips any (nothing may be skipped where a device exists), or if perftest fails.
# Logs of the guest run: build/rxe-logs/. See docs/soft-roce.md.
#
# Usage: scripts/test-rxe.sh
# Environment: ZCX_RXE_TEST_TIMEOUT  limit per test binary in seconds (default 600)
#              (and scripts/rxe-vm.sh's: ZCX_RXE_CACHE, ZCX_RXE_MTU)
# Exit status: 0 all passed; 1 a test or check failed; 124 the guest timed out;
#              125 the guest could not be run (scripts/rxe-vm.sh's message says why).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT BUILD_DIR=$REPO_ROOT/build
readonly TEST_TIMEOUT=${ZCX_RXE_TEST_TIMEOUT:-600}

step() { echo "=== test-rxe: $*"; }
die() { echo "test-rxe: error: $*" >&2; exit 1; }

build() {
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$REPO_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DZCX_WERROR=ON || die "cmake configure failed"
  fi
  cmake --build "$BUILD_DIR" -j2 || die "build failed"
}

# The guest half (bash, run in the guest from the repository root). $1: build folder.
# RXE_DEV and RXE_IP come from rxe-vm.sh.
guest_script() {
  cat <<'EOF'
set -uo pipefail
build=$1 test_timeout=$2
logs=$build/rxe-logs
rm -rf "$logs" && mkdir -p "$logs"
failures=() summary=()
fail() { echo "test-rxe: FAIL: $*"; failures+=("$*"); }

# Index of the RoCE v2 GID holding RXE_IP (an IPv4-mapped GID, ::ffff:a.b.c.d) on port 1.
ipv4_gid_index() {
  local d=/sys/class/infiniband/$RXE_DEV/ports/1 f i
  for f in "$d"/gids/*; do
    i=${f##*/}
    [[ $(cat "$f" 2>/dev/null) == 0000:0000:0000:0000:0000:ffff:* ]] || continue
    [ "$(cat "$d/gid_attrs/types/$i" 2>/dev/null)" = "RoCE v2" ] && { echo "$i"; return 0; }
  done
  return 1
}

# run_gtest NAME BINARY [ARGS...]: runs one GoogleTest binary and checks its counts.
# Returns 2 when the binary is not built.
run_gtest() {
  local name=$1 bin=$2 log=$logs/$1.log rc=0 ran skipped
  shift 2
  [ -x "$bin" ] || { echo "=== $name: not built ($bin)"; return 2; }
  echo "=== $name $*"
  timeout -k 10 "$test_timeout" "$bin" --gtest_color=no --gtest_brief=0 "$@" 2>&1 | tee "$log" || rc=$?
  ran=$(sed -n 's/^\[==========\] \([0-9]*\) tests\{0,1\} from .* ran\..*/\1/p' "$log" | tail -1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\{0,1\}.*/\1/p' "$log" | tail -1)
  if [ "$rc" = 124 ]; then fail "$name timed out after ${test_timeout}s, in $(grep '^\[ RUN' "$log" | tail -1 | cut -c14-)"
  elif [ "$rc" != 0 ]; then fail "$name exited with status $rc"
  elif [ -z "$ran" ] || [ "$ran" = 0 ]; then fail "$name ran no tests"
  elif [ -n "$skipped" ] && [ "$skipped" != 0 ]; then fail "$name skipped $skipped tests (nothing may be skipped on rxe)"
  else summary+=("$name: $ran tests passed")
  fi
  return 0
}

# Reference: perftest's RDMA write bandwidth over the same device, server and client in the guest.
run_perftest() {
  local args=(-d "$RXE_DEV" -x "$1" -s 65536 -n 2000) srv rc=0 srv_rc=0
  echo "=== perftest: ib_write_bw ${args[*]}"
  timeout 120 ib_write_bw "${args[@]}" > "$logs/ib_write_bw-server.log" 2>&1 &
  srv=$!
  for _ in $(seq 100); do   # wait for the server's TCP port (18515)
    ss -Hltn 'sport = :18515' | grep -q . && break
    sleep 0.1
  done
  timeout 120 ib_write_bw "${args[@]}" "$RXE_IP" > "$logs/ib_write_bw.log" 2>&1 || rc=$?
  wait "$srv" || srv_rc=$?
  [ "$rc" != 0 ] || rc=$srv_rc
  if [ "$rc" = 0 ] && grep -A1 '#bytes' "$logs/ib_write_bw.log"; then
    summary+=("ib_write_bw: $(awk '/#bytes/ { getline; print $4 " MB/s average" }' "$logs/ib_write_bw.log")")
  else
    cat "$logs/ib_write_bw.log" "$logs/ib_write_bw-server.log"
    fail "ib_write_bw (status $rc)"
  fi
}

echo "=== device"
ibv_devinfo -d "$RXE_DEV" | grep -E 'hca_id|state|active_mtu|link_layer'
gid=$(ipv4_gid_index) || { fail "no RoCE v2 IPv4 GID on $RXE_DEV"; gid=1; }
echo "RoCE v2 IPv4 GID index: $gid"

# A second rail for the multi-rail tests: rxe1 on its own dummy netdev and subnet (rail k of
# every node on one fabric; here both "nodes" are this guest). RXE_DEVS tells the tests.
add_second_rail() {
  local i=0
  ip link add dummy1 mtu "$(cat /sys/class/net/dummy0/mtu)" type dummy && ip link set dummy1 up &&
    ip addr add 10.11.1.1/24 dev dummy1 && rdma link add rxe1 type rxe netdev dummy1 || return 1
  until grep -q ACTIVE /sys/class/infiniband/rxe1/ports/1/state 2>/dev/null; do
    i=$((i + 1)); [ $i -le 100 ] || return 1
    sleep 0.1
  done
}
if add_second_rail; then
  export RXE_DEVS=rxe0,rxe1
else
  fail "cannot create rxe1 on dummy1 (second rail for the multi-rail tests)"
fi

built=0
run_gtest transfer_test "$build/tests/transfer_test" --gtest_filter='*verbs*'; [ $? = 2 ] || built=$((built + 1))
run_gtest verbs_transport_test "$build/tests/verbs_transport_test"; [ $? = 2 ] || built=$((built + 1))
# Multi-rail: striping over rxe0+rxe1, rail failover, the contract suite on two rails.
run_gtest verbs_rails_test "$build/tests/verbs_rails_test"; [ $? = 2 ] || built=$((built + 1))
# The trust boundary on verbs: forged descriptors and revoked regions, refused by the NIC.
run_gtest security_test "$build/tests/security_test" --gtest_filter='*verbs*'; [ $? = 2 ] || built=$((built + 1))
[ "$built" -gt 0 ] || fail "neither build/tests/transfer_test nor build/tests/verbs_transport_test is built"
run_perftest "$gid"

echo "=== summary (logs in $logs)"
for s in "${summary[@]}"; do echo "  ok    $s"; done
for f in "${failures[@]}"; do echo "  FAIL  $f"; done
[ ${#failures[@]} -eq 0 ]
EOF
}

main() {
  [ $# -eq 0 ] || { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 2; }
  cd "$REPO_ROOT"
  local t0 t1 rc=0
  t0=$(date +%s)
  step "install-deps"
  scripts/install-deps.sh
  step "build ($BUILD_DIR)"
  build
  step "guest run (scripts/rxe-vm.sh)"
  t1=$(date +%s)
  scripts/rxe-vm.sh -s "$REPO_ROOT" -C "$REPO_ROOT" -t $((2 * TEST_TIMEOUT + 300)) -- \
    bash -c "$(guest_script)" test-rxe "$BUILD_DIR" "$TEST_TIMEOUT" || rc=$?
  step "guest wall time $(( $(date +%s) - t1 )) s (boot included); total $(( $(date +%s) - t0 )) s"
  case $rc in
    0) step "PASSED" ;;
    124) step "FAILED: the guest run timed out" ;;
    125) step "FAILED: could not run the guest (see scripts/rxe-vm.sh's message above)" ;;
    *) step "FAILED"; rc=1 ;;
  esac
  exit "$rc"
}

main "$@"

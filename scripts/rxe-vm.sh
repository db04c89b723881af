#!/usr/bin/env bash
# rxe-vm.sh - run a command inside a throw-away QEMU guest that has a soft-RoCE device (rxe0).
#
# For hosts whose kernel has no RDMA (containers, CI runners): the guest boots Debian's own
# kernel (downloaded once with apt-get, cached), loads rdma_rxe and binds it to a dummy netdev,
# then runs CMD chrooted into the *host's* root filesystem, so host-built binaries and all host
# libraries and tools work unchanged. See docs/soft-roce.md.
#
# Usage: scripts/rxe-vm.sh [options] -- CMD [ARG...]
#   CMD is one shell command line (a single argument, run by /bin/sh), or a program and its
#   arguments (several arguments, passed as they are).
# Options:
#   -s DIR     host folder shared read-write with the guest, at the same path
#              (default: the repository root). Everything else the guest sees of the host is
#              read-only; writes outside DIR land in a tmpfs and vanish with the guest.
#   -C DIR     working directory of CMD in the guest (default: the current directory)
#   -t SECS    time limit for CMD (default 1200); exit status 124 when it is reached
#   -m MEM     guest memory (default 2G)
#   -c N       guest vCPUs (default 2)
#   -e N=V     set environment variable N to V for CMD (repeatable)
#   -v         verbose: full guest kernel log and timings on stderr after the run
#   -B         rebuild the cache (download the kernel again, rebuild the initramfs)
#   -h         this help
# Environment:
#   ZCX_RXE_CACHE  cache folder (default /var/tmp/zcx-rxe-cache-$USER; ~70 MB)
#   ZCX_RXE_MTU    dummy0 MTU (default 1500, rxe MTU 1024; 9000 gives rxe MTU 4096)
# In the guest: CMD runs as root with ulimit -l unlimited, stdin /dev/null, RXE_DEV=rxe0,
#   RXE_IP=10.11.0.1 (dummy0; server and client in the guest both use rxe0 and reach each other
#   through 10.11.0.1 or 127.0.0.1). Its stdout and stderr (merged) stream to this script's
#   stdout through a serial port (~0.5 MB/s: send big outputs to a file under the shared folder).
# Exit status: CMD's own; 124 if CMD timed out or the guest hung; 125 if this runner failed
#   (usage, missing host tools, kernel download, guest boot or rxe setup), with a message.
set -euo pipefail

readonly PROG=rxe-vm
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
# shellcheck source=scripts/rxe-guest.sh
. "$REPO_ROOT/scripts/rxe-guest.sh"
readonly RXE_IP=10.11.0.1

# Settings (options and environment).
SHARE=$REPO_ROOT
WORKDIR=$PWD
TIME_LIMIT=1200
MEM=2G
VCPUS=2
VERBOSE=0
REBUILD=0
EXTRA_ENV=()
CACHE=${ZCX_RXE_CACHE:-/var/tmp/zcx-rxe-cache-$(id -un)}
MTU=${ZCX_RXE_MTU:-1500}
RUN_DIR=
QEMU_PID=

# ------------------------------------------------------------------------------ arguments
parse_args() {
  local opt
  while getopts "s:C:t:m:c:e:vBh" opt; do
    case $opt in
      s) SHARE=$OPTARG ;;
      C) WORKDIR=$OPTARG ;;
      t) TIME_LIMIT=$OPTARG ;;
      m) MEM=$OPTARG ;;
      c) VCPUS=$OPTARG ;;
      e) [[ $OPTARG =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "-e wants NAME=VALUE, not '$OPTARG'"
         EXTRA_ENV+=("$OPTARG") ;;
      v) VERBOSE=1 ;;
      B) REBUILD=1 ;;
      h) usage; exit 0 ;;
      *) usage >&2; exit "$RC_INFRA" ;;
    esac
  done
  shift $((OPTIND - 1))
  [ $# -gt 0 ] || die "no command given (usage: $0 [options] -- CMD [ARG...]; -h for help)"
  if [ $# -eq 1 ]; then
    COMMAND=$1
  else
    COMMAND=
    local a
    for a in "$@"; do COMMAND+="$(sh_quote "$a") "; done
  fi
  [[ $TIME_LIMIT =~ ^[1-9][0-9]*$ ]] || die "-t wants a number of seconds, not '$TIME_LIMIT'"
  [[ $VCPUS =~ ^[1-9][0-9]*$ ]] || die "-c wants a number of vCPUs, not '$VCPUS'"
  [[ $MTU =~ ^[0-9]+$ ]] || die "ZCX_RXE_MTU wants a number, not '$MTU'"
  [ -d "$SHARE" ] || die "shared folder $SHARE does not exist"
  [ -d "$WORKDIR" ] || die "working directory $WORKDIR does not exist"
  SHARE=$(realpath "$SHARE")
  WORKDIR=$(realpath "$WORKDIR")
  [ "$SHARE" != / ] || die "cannot share / read-write; share a folder"
}

# ------------------------------------------------------------------------------ guest side
# Stage 2 (host's /bin/sh, chrooted into the host root): rxe setup, then CMD.
write_guest_stage2() {
  cat <<'EOF'
#!/bin/sh
. /run/zcx-rxe/env
fail() { echo "FAIL $*" >&4; exit 1; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

ip link set lo up || fail "lo"
ip link add dummy0 mtu "$MTU" type dummy && ip link set dummy0 up &&
  ip addr add "$RXE_IP/24" dev dummy0 || fail "cannot create dummy0"
rdma link add rxe0 type rxe netdev dummy0 || fail "rdma link add rxe0 failed (see the console log, -v)"
i=0
until grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state 2>/dev/null; do
  i=$((i + 1)); [ $i -le 100 ] || fail "rxe0 port not ACTIVE: $(cat /sys/class/infiniband/rxe0/ports/1/state)"
  sleep 0.1
done
ulimit -l unlimited || fail "ulimit -l unlimited"
cd "$WORKDIR" || fail "cannot cd to $WORKDIR"

echo "START uptime=$(uptime_s)" >&4
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root USER=root \
    LANG=C.UTF-8 TERM=dumb RXE_DEV=rxe0 RXE_IP="$RXE_IP" /bin/sh -c \
  '. /run/zcx-rxe/extra-env; exec timeout -k 10 "$1" /bin/sh /run/zcx-rxe/cmd' \
  stage2 "$TIME_LIMIT" < /dev/null >&3 2>&3 3>&- 4>&-
rc=$?
echo "END uptime=$(uptime_s)" >&4
echo "RC=$rc" >&4
EOF
}

# Per-run initrd: the cached base plus this run's command, settings and stage 2.
make_vm_initrd() {
  local env extra='' v
  env="SHARE=$(sh_quote "$SHARE")
WORKDIR=$(sh_quote "$WORKDIR")
TIME_LIMIT=$TIME_LIMIT
MTU=$MTU
RXE_IP=$RXE_IP
"
  for v in "${EXTRA_ENV[@]}"; do
    extra+="export ${v%%=*}=$(sh_quote "${v#*=}")"$'\n'
  done
  make_run_initrd "$COMMAND" "$env" "$extra"
}

# ------------------------------------------------------------------------------ run
# shellcheck disable=SC2317  # (called from the EXIT trap)
cleanup() {
  [ -z "$QEMU_PID" ] || kill "$QEMU_PID" 2>/dev/null || true
  [ -z "$RUN_DIR" ] || rm -rf "$RUN_DIR"
}

# Boots the guest; returns QEMU's (or timeout's) exit status.
run_qemu() {
  local append="console=ttyS0 loglevel=3 panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check"
  [ "$VERBOSE" = 1 ] || append="quiet $append"
  # A backstop on the whole VM: the guest enforces TIME_LIMIT on CMD itself; this catches a
  # guest that hangs while booting or shutting down.
  local rc=0
  # TCG only (KVM fails on these hosts). -erms,-fsrm: TCG emulates "rep movsb" slowly, and
  # hiding ERMS makes the guest kernel copy with plain moves (~1.8x rxe bandwidth).
  # no_timer_check: on a loaded host the kernel may otherwise panic under TCG ("IO-APIC + timer
  # doesn't work", seen with three guests on two cores).
  timeout --foreground -k 10 $((TIME_LIMIT + 180)) \
    qemu-system-x86_64 -accel tcg,thread=multi,tb-size=512 -cpu max,-erms,-fsrm \
      -m "$MEM" -smp "$VCPUS" -M pc -nodefaults -no-user-config -display none -no-reboot \
      -kernel "$KERNEL" -initrd "$RUN_DIR/initrd" -append "$append" \
      -serial "file:$RUN_DIR/console.log" \
      -chardev stdio,id=out,signal=off -serial chardev:out \
      -serial "file:$RUN_DIR/status" \
      -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
      -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,multidevs=remap" \
      < /dev/null 2> "$RUN_DIR/qemu.err" &
  # In the background so that a SIGTERM/SIGINT to this script runs its trap at once (which
  # stops QEMU) instead of waiting for QEMU to finish.
  QEMU_PID=$!
  wait "$QEMU_PID" || rc=$?
  QEMU_PID=
  return "$rc"
}

# Reads the guest's status lines, reports, and prints the exit status to use.
report() {
  local qemu_rc=$1 elapsed_ms=$2 rc start end
  tr -d '\r' < "$RUN_DIR/status" > "$RUN_DIR/status.txt" 2>/dev/null || true
  rc=$(sed -n 's/^RC=\([0-9]*\)$/\1/p' "$RUN_DIR/status.txt" | tail -1)
  start=$(sed -n 's/^START uptime=//p' "$RUN_DIR/status.txt")
  end=$(sed -n 's/^END uptime=//p' "$RUN_DIR/status.txt")
  if [ "$VERBOSE" = 1 ]; then
    { echo "----- guest console -----"; cat "$RUN_DIR/console.log"; echo "-------------------------"; } >&2
    log "wall ${elapsed_ms} ms; guest boot+setup ${start:-?} s, command $(awk -v s="${start:-0}" -v e="${end:-0}" 'BEGIN { printf "%.2f", e - s }') s (guest clock)"
  fi
  if [ -n "$rc" ]; then
    [ "$rc" != "$RC_TIMEOUT" ] || log "command timed out after ${TIME_LIMIT}s"
    echo "$rc"; return
  fi
  if grep -q '^FAIL ' "$RUN_DIR/status.txt"; then
    log "error: guest setup failed: $(sed -n 's/^FAIL //p' "$RUN_DIR/status.txt" | head -1)"
    rc=$RC_INFRA
  elif [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    log "error: the guest did not finish within $((TIME_LIMIT + 180))s; killed"
    rc=$RC_TIMEOUT
  else
    log "error: the guest stopped without an exit status (qemu exit $qemu_rc)"
    rc=$RC_INFRA
  fi
  { echo "--- guest console (tail) ---"; tail -n 30 "$RUN_DIR/console.log" 2>/dev/null
    echo "--- qemu stderr ---"; cat "$RUN_DIR/qemu.err" 2>/dev/null; } >&2
  echo "$rc"
}

main() {
  parse_args "$@"
  check_host_tools
  prepare_cache
  RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/zcx-rxe-run.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  make_vm_initrd
  local t0 qemu_rc=0
  t0=$(now_ms)
  run_qemu || qemu_rc=$?
  exit "$(report "$qemu_rc" $(( $(now_ms) - t0 )))"
}

main "$@"

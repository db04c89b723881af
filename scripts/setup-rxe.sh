#!/usr/bin/env bash
# setup-rxe.sh - create a soft-RoCE device (rdma_rxe) on a network interface of this machine,
# for machines whose kernel has rdma_rxe (a VM, a laptop, a CI runner with a full kernel).
# Hosts without RDMA in the kernel (containers, this project's CI) use scripts/rxe-vm.sh instead.
#
# Usage: scripts/setup-rxe.sh NETDEV [RXE_NAME]
#   NETDEV    an up Ethernet interface with an IPv4 address (e.g. eth0, enp0s3)
#   RXE_NAME  name of the rxe device (default rxe0)
# Idempotent: does nothing but report when the device already exists on NETDEV.
# Prints the port state, the GID table with the RoCE v2 IPv4 GID index (the value for perftest's
# -x and for zcx's GID index), and the locked-memory limit. Needs root for modprobe and
# "rdma link add" (uses sudo when not root).
# Exit status: 0 ready; 1 cannot set up (message says why); 2 usage.
set -euo pipefail

readonly PROG=setup-rxe
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo

log() { echo "$PROG: $*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

check_tools() {
  local missing=() t
  for t in modprobe rdma ip ibv_devinfo; do command -v "$t" >/dev/null || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]}. Run scripts/install-deps.sh first."
}

check_netdev() {
  local netdev=$1
  [ -d "/sys/class/net/$netdev" ] ||
    die "no network interface '$netdev' (interfaces: $(cd /sys/class/net && echo *))"
  [ "$netdev" != lo ] || die "rxe cannot use the loopback interface; use an Ethernet (or dummy) interface"
  [ -n "$(ip -4 -o addr show dev "$netdev")" ] ||
    log "warning: $netdev has no IPv4 address: there will be no RoCE v2 IPv4 GID until it gets one"
  local state
  state=$(cat "/sys/class/net/$netdev/operstate")
  case $state in
    up|unknown) ;;   # (dummy and some virtual interfaces report "unknown")
    *) log "warning: $netdev is $state: the rxe port stays DOWN until it is up" ;;
  esac
}

# Loads rdma_rxe, or explains why this kernel cannot.
load_rxe_module() {
  [ -d /sys/module/rdma_rxe ] && return 0   # loaded, or built in
  local err
  if ! err=$($SUDO modprobe rdma_rxe 2>&1); then
    cat >&2 <<EOF
$PROG: error: this kernel ($(uname -r)) cannot load rdma_rxe:
  $err
  Soft-RoCE needs a kernel built with CONFIG_RDMA_RXE (Debian and Ubuntu stock kernels have it;
  on Ubuntu cloud images install linux-modules-extra-\$(uname -r)). Containers share the host's
  kernel and usually lack it. Without it, run the RDMA tests in a QEMU guest instead:
  scripts/rxe-vm.sh or scripts/test-rxe.sh (see docs/soft-roce.md).
EOF
    exit 1
  fi
}

# Prints the rxe device bound to netdev $1, if any ("rdma link" lines: "link rxe0/1 ... netdev eth0").
rxe_on_netdev() {
  rdma link show 2>/dev/null | awk -v nd="$1" '{ for (i = 1; i < NF; i++) if ($i == "netdev" && $(i+1) == nd) { split($2, a, "/"); print a[1]; exit } }'
}

create_link() {
  local netdev=$1 name=$2 existing
  existing=$(rxe_on_netdev "$netdev")
  if [ -n "$existing" ]; then
    [ "$existing" = "$name" ] || die "$netdev already carries rxe device '$existing'; use that name, or remove it: rdma link delete $existing"
    log "$name already exists on $netdev"
    return
  fi
  [ ! -e "/sys/class/infiniband/$name" ] ||
    die "an RDMA device named '$name' already exists on another interface; pick another name"
  $SUDO rdma link add "$name" type rxe netdev "$netdev" || die "rdma link add $name type rxe netdev $netdev failed"
  log "created $name on $netdev"
}

wait_port_active() {
  local name=$1
  for _ in $(seq 50); do
    ibv_devinfo -d "$name" 2>/dev/null | grep -q PORT_ACTIVE && return 0
    sleep 0.1
  done
  ibv_devinfo -d "$name" >&2 || true
  die "$name port is not PORT_ACTIVE (is its interface up with a carrier? is ibverbs-providers installed?)"
}

# Prints the non-empty GIDs of port 1 with their types, then the RoCE v2 IPv4 GID index.
print_gids() {
  local name=$1 dir=/sys/class/infiniband/$1/ports/1 idx gid type v4=''
  echo "GID table of $name port 1 (index, GID, type):"
  for idx in $(cd "$dir/gids" && printf '%s\n' * | sort -n); do
    gid=$(cat "$dir/gids/$idx" 2>/dev/null) || continue   # unused entries may read as EINVAL
    [ "$gid" != 0000:0000:0000:0000:0000:0000:0000:0000 ] || continue
    type=$(cat "$dir/gid_attrs/types/$idx" 2>/dev/null) || type='?'
    printf '  %3s  %s  %s\n' "$idx" "$gid" "$type"
    # An IPv4-mapped GID (::ffff:a.b.c.d) of type RoCE v2: what IPv4 RoCE traffic uses.
    if [ -z "$v4" ] && [ "$type" = "RoCE v2" ] && [[ $gid == 0000:0000:0000:0000:0000:ffff:* ]]; then
      v4=$idx
    fi
  done
  if [ -n "$v4" ]; then
    echo "RoCE v2 IPv4 GID index: $v4   (e.g. ib_write_bw -d $name -x $v4)"
  else
    log "warning: no RoCE v2 IPv4 GID yet (give the interface an IPv4 address)"
  fi
}

print_memlock() {
  local l
  l=$(ulimit -l)
  echo "locked-memory limit (ulimit -l): $l"
  [ "$l" = unlimited ] ||
    log "warning: RDMA registers (pins) memory: raise the limit for big transfers: ulimit -l unlimited, or /etc/security/limits.d/ (memlock)"
}

main() {
  case ${1:-} in -h|--help) usage; exit 0 ;; esac
  if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage >&2; exit 2; fi
  local netdev=$1 name=${2:-rxe0}
  check_tools
  check_netdev "$netdev"
  load_rxe_module
  create_link "$netdev" "$name"
  wait_port_active "$name"
  ibv_devinfo -d "$name" | grep -E 'hca_id|state|active_mtu|link_layer'
  print_gids "$name"
  print_memlock
}

main "$@"

#!/usr/bin/env bash
# rxe-cluster.sh - run a command on every node of a throw-away cluster of QEMU guests joined by
# emulated Ethernet, each node with soft-RoCE devices (rxe0, rxe1, ...) on its NICs.
#
# Like scripts/rxe-vm.sh (whose kernel cache and guest setup it shares: scripts/rxe-guest.sh),
# each guest boots Debian's kernel and runs CMD as root chrooted into the *host's* root
# filesystem, so host-built binaries work unchanged. Nothing leaves the host: each rail is one
# Ethernet segment, a QEMU hub in node 0's QEMU with a TCP socket netdev on 127.0.0.1 to every
# other node (TCP, not UDP multicast: a loaded host drops multicast datagrams, and soft-RoCE's
# retransmission timeouts then cut the bandwidth tenfold). See docs/soft-roce.md.
#
# Usage: scripts/rxe-cluster.sh [options] -- CMD [ARG...]
#   CMD is one shell command line (a single argument, run by /bin/sh), or a program and its
#   arguments (several arguments, passed as they are). It runs on every node at once.
# Options:
#   -n NODES   guests (default 2; 1-8)
#   -r RAILS   virtio-net NICs per guest, one rxe device on each (default 1; 1-4). Rail R is
#              one segment joining every node: node N has 10.20.R.(N+1)/24 on it.
#   -t SECS    time limit for the whole run, boot included (default 1200); when it is reached
#              every guest is killed and the exit status is 124
#   -s DIR     host folder shared read-write with the guests, at the same path (default: the
#              repository root); the rest of the host is read-only (writes vanish with the guest)
#   -C DIR     working directory of CMD in the guests (default: the current directory)
#   -m MEM     memory per guest (default 1G)
#   -c N       vCPUs per guest (default 1; TCG guests on a 2-core host are slow already)
#   -e N=V     set environment variable N to V for CMD (repeatable)
#   -v         verbose: each guest's kernel log and timings on stderr after the run
#   -B         rebuild the cache (download the kernel again, rebuild the initramfs)
#   -h         this help
# Environment:
#   ZCX_RXE_CACHE     cache folder, shared with rxe-vm.sh (default /var/tmp/zcx-rxe-cache-$USER)
#   ZCX_RXE_MTU       NIC MTU (default 1500, rxe MTU 1024; 9000 gives rxe MTU 4096)
#   ZCX_CLUSTER_GRACE seconds the other nodes may still run once a node's CMD failed (default 30)
# On every node CMD gets, besides root, ulimit -l unlimited and stdin /dev/null:
#   ZCX_NODE       this node's index, 0-based          ZCX_NODES  the number of nodes
#   ZCX_NODE_IPS   rail-0 IPv4 of every node, in node order, space-separated
#   RXE_DEVS       this node's rxe devices, comma-separated (rxe0 on rail 0, rxe1 on rail 1, ...)
#   RXE_DEV=rxe0, RXE_IP=this node's rail-0 IPv4 (what rxe-vm.sh's single guest provides too)
#   ZCX_CLUSTER_CTL  a folder with the fault-injection helper, run as "$ZCX_CLUSTER_CTL/ctl ...":
#       ctl link NODE RAIL down|up   cut or restore node NODE's NIC on rail RAIL (QEMU's
#                                    "set_link": the guest sees its carrier drop)
#       ctl kill NODE                stop node NODE's guest at once (QEMU "quit": a crashed host);
#                                    not node 0, which carries the rails' hubs
#     It returns when the runner has done it (exit 0) or failed to (exit 1, with the reason).
#   Every node's CMD starts once all nodes answer ping on every rail.
# Output: each node's stdout and stderr (merged), line by line, prefixed "[node N] ", through a
#   serial port (~0.5 MB/s per guest: send big outputs to a file under the shared folder); then
#   one summary line per node on stderr.
# Exit status: 0 when every node's CMD exited 0 (a node stopped by "ctl kill" counts as done);
#   124 if the time limit was reached; 125 if the runner failed (usage, missing host tools,
#   kernel download, a guest's boot, network or rxe setup), with a message; otherwise the exit
#   status of the first node (lowest index) whose CMD failed. After a failure, the nodes still
#   running are stopped after ZCX_CLUSTER_GRACE seconds. Node 0's QEMU (the rails' hubs) stays up
#   after its CMD has ended until every node's has.
set -euo pipefail

readonly PROG=rxe-cluster
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
# shellcheck source=scripts/rxe-guest.sh
. "$REPO_ROOT/scripts/rxe-guest.sh"
readonly MAX_NODES=8 MAX_RAILS=4

# Settings (options and environment).
NODES=2
RAILS=1
SHARE=$REPO_ROOT
WORKDIR=$PWD
TIME_LIMIT=1200
MEM=1G
VCPUS=1
VERBOSE=0
REBUILD=0
EXTRA_ENV=()
CACHE=${ZCX_RXE_CACHE:-/var/tmp/zcx-rxe-cache-$(id -un)}
MTU=${ZCX_RXE_MTU:-1500}
GRACE=${ZCX_CLUSTER_GRACE:-30}
RUN_DIR=
# Per node: the subshell running QEMU (and its output prefixer), and the node's final state.
NODE_PIDS=()
TIMED_OUT=0
NODE_STATE=()   # running | finished | killed (on request) | stopped (by the runner)

# ------------------------------------------------------------------------------ arguments
parse_args() {
  local opt
  while getopts "n:r:t:s:C:m:c:e:vBh" opt; do
    case $opt in
      n) NODES=$OPTARG ;;
      r) RAILS=$OPTARG ;;
      t) TIME_LIMIT=$OPTARG ;;
      s) SHARE=$OPTARG ;;
      C) WORKDIR=$OPTARG ;;
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
  [[ $NODES =~ ^[1-9][0-9]*$ && $NODES -le $MAX_NODES ]] ||
    die "-n wants a number of nodes from 1 to $MAX_NODES, not '$NODES'"
  [[ $RAILS =~ ^[1-9][0-9]*$ && $RAILS -le $MAX_RAILS ]] ||
    die "-r wants a number of rails from 1 to $MAX_RAILS, not '$RAILS'"
  [[ $TIME_LIMIT =~ ^[1-9][0-9]*$ ]] || die "-t wants a number of seconds, not '$TIME_LIMIT'"
  [[ $VCPUS =~ ^[1-9][0-9]*$ ]] || die "-c wants a number of vCPUs, not '$VCPUS'"
  [[ $MTU =~ ^[0-9]+$ ]] || die "ZCX_RXE_MTU wants a number, not '$MTU'"
  [[ $GRACE =~ ^[0-9]+$ ]] || die "ZCX_CLUSTER_GRACE wants a number of seconds, not '$GRACE'"
  [ -d "$SHARE" ] || die "shared folder $SHARE does not exist"
  [ -d "$WORKDIR" ] || die "working directory $WORKDIR does not exist"
  SHARE=$(realpath "$SHARE")
  WORKDIR=$(realpath "$WORKDIR")
  [ "$SHARE" != / ] || die "cannot share / read-write; share a folder"
  command -v perl >/dev/null || die "missing host tool: perl (talks to the QEMU monitors)"
}

node_ip() { echo "10.20.$2.$(($1 + 1))"; }       # node_ip NODE RAIL
node_mac() { printf '52:54:00:cc:%02x:%02x' "$2" "$1"; }   # node_mac NODE RAIL
rail_port() { echo $((BASE_PORT + $2 * MAX_NODES + $1)); }   # rail_port NODE RAIL (node 0's hub)

# Prints the TCP ports of 127.0.0.1/0.0.0.0 sockets in /proc/net/tcp; with "listen", only those
# listening (state 0A).
tcp_ports() {
  local sl local_addr state
  while read -r sl local_addr _ state _; do
    [ "$sl" != sl ] || continue
    [ "${1:-}" != listen ] || [ "$state" = 0A ] || continue
    echo $((16#${local_addr#*:}))
  done < /proc/net/tcp
}

# Picks BASE_PORT: a block of MAX_RAILS * MAX_NODES TCP ports nobody uses.
pick_ports() {
  local used p ok
  used=$(tcp_ports)
  for _ in $(seq 50); do
    BASE_PORT=$((20000 + RANDOM % 40000))
    ok=1
    for ((p = BASE_PORT; p < BASE_PORT + MAX_RAILS * MAX_NODES; p++)); do
      if grep -qx "$p" <<< "$used"; then ok=0; break; fi
    done
    [ "$ok" = 0 ] || return 0
  done
  die "found no free block of TCP ports on 127.0.0.1"
}

# Waits until node 0's QEMU listens on every hub port (the other nodes connect at start).
wait_hub_ports() {
  local want=$(( (NODES - 1) * RAILS )) have p
  for _ in $(seq 300); do
    have=0
    for p in $(tcp_ports listen); do
      [ "$p" -lt "$BASE_PORT" ] || [ "$p" -ge $((BASE_PORT + MAX_RAILS * MAX_NODES)) ] || have=$((have + 1))
    done
    [ "$have" -lt "$want" ] || return 0
    kill -0 "${NODE_PIDS[0]}" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# ------------------------------------------------------------------------------ guest side
# Stage 2 (host's /bin/sh, chrooted into the host root): NICs, rxe devices, a ping barrier
# between all nodes, then CMD. Status lines on fd 4 as in rxe-vm.sh.
write_guest_stage2() {
  cat <<'EOF'
#!/bin/sh
. /run/zcx-rxe/env
fail() { echo "FAIL $*" >&4; exit 1; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
bb=/run/zcx-rxe/busybox

ip link set lo up || fail "lo"
devs=
r=0
while [ "$r" -lt "$RAILS" ]; do
  # The NIC of rail r is the one with this node's MAC for rail r (no reliance on probe order).
  mac=$(printf '52:54:00:cc:%02x:%02x' "$r" "$NODE")
  nic=
  for f in /sys/class/net/*/address; do
    [ "$(cat "$f")" = "$mac" ] && nic=$(basename "$(dirname "$f")")
  done
  [ -n "$nic" ] || fail "no NIC with MAC $mac (rail $r)"
  ip link set "$nic" mtu "$MTU" up && ip addr add "10.20.$r.$((NODE + 1))/24" dev "$nic" ||
    fail "cannot set up $nic (rail $r)"
  rdma link add "rxe$r" type rxe netdev "$nic" || fail "rdma link add rxe$r on $nic failed"
  i=0
  until grep -q ACTIVE "/sys/class/infiniband/rxe$r/ports/1/state" 2>/dev/null; do
    i=$((i + 1)); [ $i -le 100 ] || fail "rxe$r port not ACTIVE: $(cat "/sys/class/infiniband/rxe$r/ports/1/state")"
    sleep 0.1
  done
  devs=${devs:+$devs,}rxe$r
  r=$((r + 1))
done
ulimit -l unlimited || fail "ulimit -l unlimited"
cd "$WORKDIR" || fail "cannot cd to $WORKDIR"

# Barrier: every other node answers on every rail (the guests boot at different speeds).
t_end=$(($(cut -d. -f1 /proc/uptime) + BARRIER_SECS))
m=0
while [ "$m" -lt "$NODES" ]; do
  r=0
  while [ "$m" != "$NODE" ] && [ "$r" -lt "$RAILS" ]; do
    until $bb ping -c 1 -W 1 -q "10.20.$r.$((m + 1))" > /dev/null 2>&1; do
      [ "$(cut -d. -f1 /proc/uptime)" -lt "$t_end" ] ||
        fail "node $m does not answer on rail $r (10.20.$r.$((m + 1))) after ${BARRIER_SECS}s"
    done
    r=$((r + 1))
  done
  m=$((m + 1))
done

echo "START uptime=$(uptime_s)" >&4
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root USER=root \
    LANG=C.UTF-8 TERM=dumb ZCX_NODE="$NODE" ZCX_NODES="$NODES" ZCX_NODE_IPS="$NODE_IPS" \
    RXE_DEVS="$devs" RXE_DEV=rxe0 RXE_IP="10.20.0.$((NODE + 1))" ZCX_CLUSTER_CTL=/run/zcx-ctl \
    /bin/sh -c '. /run/zcx-rxe/extra-env; exec timeout -k 10 "$1" /bin/sh /run/zcx-rxe/cmd' \
  stage2 "$TIME_LIMIT" < /dev/null >&3 2>&3 3>&- 4>&-
rc=$?
echo "END uptime=$(uptime_s)" >&4
echo "RC=$rc" >&4
# Node 0 carries the rails' hubs: its QEMU must stay until the other nodes are done (the runner
# stops it).
[ "$NODE" != 0 ] || [ "$NODES" = 1 ] || while :; do sleep 3600; done
EOF
}

# The fault-injection helper the guests run as $ZCX_CLUSTER_CTL/ctl (POSIX sh). A request is a
# file NAME.req in the control folder (shared with the host over 9p); the runner answers with
# NAME.done ("ok ..." or "error ...").
write_ctl_helper() {
  cat <<'EOF'
#!/bin/sh
# ctl link NODE RAIL down|up  |  ctl kill NODE   (see scripts/rxe-cluster.sh -h)
set -eu
dir=$(dirname "$0")
case "${1:-}" in
  link) [ $# -eq 4 ] || { echo "usage: ctl link NODE RAIL down|up" >&2; exit 2; } ;;
  kill) [ $# -eq 2 ] || { echo "usage: ctl kill NODE" >&2; exit 2; } ;;
  *) echo "usage: ctl link NODE RAIL down|up | ctl kill NODE" >&2; exit 2 ;;
esac
name=n${ZCX_NODE:-x}.$$.$(cut -d' ' -f1 /proc/uptime)
echo "$*" > "$dir/$name.tmp"
mv "$dir/$name.tmp" "$dir/$name.req"
i=0
while [ ! -f "$dir/$name.done" ]; do
  i=$((i + 1)); [ $i -le 300 ] || { echo "ctl: no answer from the runner in 30 s" >&2; exit 1; }
  sleep 0.1
done
answer=$(cat "$dir/$name.done")
rm -f "$dir/$name.done"
echo "ctl $*: $answer" >&2
case "$answer" in ok*) exit 0 ;; *) exit 1 ;; esac
EOF
}

# ------------------------------------------------------------------------------ host side
# Sends one human-monitor command to node $1's QEMU and prints its answer (empty: none).
monitor() {
  perl -MIO::Socket::UNIX -MIO::Select -e '
    my ($path, $cmd) = @ARGV;
    my $s = IO::Socket::UNIX->new(Peer => $path) or die "cannot reach the monitor: $!\n";
    my $sel = IO::Select->new($s);
    my $buf = "";
    my $upto = sub {   # reads until the buffer holds $n prompts (5 s per read at most)
      my $n = shift;
      while ((() = $buf =~ /\(qemu\) /g) < $n) {
        $sel->can_read(5) or die "no answer from the monitor\n";
        sysread($s, my $chunk, 65536) or die "the monitor closed\n";
        $buf .= $chunk;
      }
    };
    $upto->(1);
    print $s "$cmd\n";
    $upto->(2);
    my $out = (split /\(qemu\) /, $buf)[1];
    $out =~ s/\e\[[0-9;]*[A-Za-z]//g;
    $out =~ s/\r//g;
    $out =~ s/^.*\Q$cmd\E//s;   # the echo of the command (readline redraws it as it comes)
    $out =~ s/^\s+|\s+$//g;
    $out =~ s/\n/; /g;
    print "$out\n" if length $out;
  ' "$RUN_DIR/node$1/monitor.sock" "$2"
}

# Carries out one control request ($1: its file); writes NAME.done.
handle_request() {
  local req=$1 done=${1%.req}.done words answer=
  read -r -a words < "$req" || true
  rm -f "$req"
  case "${words[0]:-}/${#words[@]}" in
    link/4)
      local n=${words[1]} r=${words[2]} how=${words[3]}
      if ! [[ $n =~ ^[0-9]+$ && $n -lt $NODES && $r =~ ^[0-9]+$ && $r -lt $RAILS ]]; then
        answer="error no node $n or rail $r"
      elif [ "$how" != down ] && [ "$how" != up ]; then
        answer="error link wants down or up, not '$how'"
      elif [ "${NODE_STATE[n]}" != running ]; then
        answer="error node $n is not running"
      else
        local out onoff=off
        [ "$how" = down ] || onoff=on
        if ! out=$(monitor "$n" "set_link rail$r $onoff" 2>&1); then answer="error monitor: $out"
        elif [ -n "$out" ]; then answer="error set_link: $out"
        else answer="ok node $n rail $r $how"
        fi
      fi ;;
    kill/2)
      local n=${words[1]}
      if ! [[ $n =~ ^[0-9]+$ && $n -lt $NODES ]]; then answer="error no node $n"
      elif [ "$n" = 0 ]; then answer="error node 0 carries the rails' hubs: kill another node"
      elif [ "${NODE_STATE[n]}" != running ]; then answer="error node $n is not running"
      else
        NODE_STATE[n]=killed
        monitor "$n" quit > /dev/null 2>&1 || true
        kill_node "$n"
        answer="ok node $n killed"
      fi ;;
    *) answer="error unknown request '${words[*]:-}'" ;;
  esac
  log "request: ${words[*]:-} -> $answer"
  echo "$answer" > "$done.tmp" && mv "$done.tmp" "$done"
}

# Stops node $1's QEMU (TERM, then KILL) and reaps its subshell.
kill_node() {
  local n=$1 qpid=''
  qpid=$(cat "$RUN_DIR/node$n/qemu.pid" 2>/dev/null) || true
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$qpid" 2>/dev/null || true
  fi
  [ -z "${NODE_PIDS[n]:-}" ] || { kill "${NODE_PIDS[n]}" 2>/dev/null || true; wait "${NODE_PIDS[n]}" 2>/dev/null || true; }
  NODE_PIDS[n]=
}

# shellcheck disable=SC2317  # (called from the EXIT trap)
cleanup() {
  local n
  for n in "${!NODE_PIDS[@]}"; do kill_node "$n"; done
  [ -z "$RUN_DIR" ] || rm -rf "$RUN_DIR"
}

# Per-node initrd: the cached base plus the node's command, settings and stage 2.
make_node_initrd() {
  local n=$1 env extra='' v ips='' m
  for ((m = 0; m < NODES; m++)); do ips+="${ips:+ }$(node_ip "$m" 0)"; done
  env="SHARE=$(sh_quote "$SHARE")
WORKDIR=$(sh_quote "$WORKDIR")
TIME_LIMIT=$TIME_LIMIT
MTU=$MTU
NODE=$n
NODES=$NODES
RAILS=$RAILS
NODE_IPS=$(sh_quote "$ips")
BARRIER_SECS=$BARRIER_SECS
CTL_TAG=ctl
"
  for v in "${EXTRA_ENV[@]}"; do
    extra+="export ${v%%=*}=$(sh_quote "${v#*=}")"$'\n'
  done
  RUN_DIR=$RUN_DIR/node$n make_run_initrd "$COMMAND" "$env" "$extra"
}

# Boots node $1 in the background; sets NODE_PIDS[$1].
start_node() {
  local n=$1 d=$RUN_DIR/node$1 r nics=()
  local append="console=ttyS0 loglevel=3 panic=-1 mitigations=off nokaslr tsc=reliable no_timer_check"
  [ "$VERBOSE" = 1 ] || append="quiet $append"
  # Rail r: a hub in node 0's QEMU, its NIC on one port, and a TCP socket to every other node's
  # NIC on the others. The guest sees one Ethernet segment; set_link cuts one node's NIC.
  for ((r = 0; r < RAILS; r++)); do
    if [ "$n" = 0 ]; then
      nics+=(-netdev "hubport,id=rail$r,hubid=$r")
      local m
      for ((m = 1; m < NODES; m++)); do
        nics+=(-netdev "socket,id=r${r}to$m,listen=127.0.0.1:$(rail_port "$m" "$r")"
               -netdev "hubport,id=r${r}hub$m,hubid=$r,netdev=r${r}to$m")
      done
    else
      nics+=(-netdev "socket,id=rail$r,connect=127.0.0.1:$(rail_port "$n" "$r")")
    fi
    nics+=(-device "virtio-net-pci,netdev=rail$r,mac=$(node_mac "$n" "$r"),addr=$((16 + r))")
  done
  # TCG only (KVM fails on these hosts); -erms,-fsrm and no_timer_check as in rxe-vm.sh. The
  # outer timeout is a backstop should this script itself be killed without running its trap.
  (
    timeout -k 10 $((TIME_LIMIT + 60)) \
      qemu-system-x86_64 -accel tcg,thread=multi,tb-size=512 -cpu max,-erms,-fsrm \
        -m "$MEM" -smp "$VCPUS" -M pc -nodefaults -no-user-config -display none -no-reboot \
        -name "zcx-node$n" -pidfile "$d/qemu.pid" \
        -kernel "$KERNEL" -initrd "$d/initrd" -append "$append" \
        -serial "file:$d/console.log" \
        -chardev stdio,id=out,signal=off -serial chardev:out \
        -serial "file:$d/status" \
        -monitor "unix:$d/monitor.sock,server=on,wait=off" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,multidevs=remap" \
        -virtfs "local,path=$RUN_DIR/ctl,mount_tag=ctl,security_model=none,multidevs=remap" \
        "${nics[@]}" < /dev/null 2> "$d/qemu.err" |
      sed -u "s/^/[node $n] /"
  ) &
  NODE_PIDS[n]=$!
  NODE_STATE[n]=running
}

# Waits for every node; handles control requests, the time limit and the grace period.
# Sets TIMED_OUT=1 if the time limit was reached.
supervise() {
  local t_end=$(($(date +%s) + TIME_LIMIT)) fail_at='' n req running
  while :; do
    for req in "$RUN_DIR"/ctl/*.req; do
      [ -e "$req" ] && handle_request "$req"
    done
    running=0
    for ((n = NODES - 1; n >= 0; n--)); do
      [ "${NODE_STATE[n]}" = running ] || continue
      # Node 0 (the hubs) has ended when its status says so and no other node still runs.
      if kill -0 "${NODE_PIDS[n]}" 2>/dev/null &&
         { [ "$n" != 0 ] || [ "$running" -gt 0 ] || [ "$(node_rc 0)" = none ]; }; then
        running=$((running + 1))
      else
        [ "$n" != 0 ] || kill_node 0
        wait "${NODE_PIDS[n]}" 2>/dev/null || true
        NODE_PIDS[n]=
        NODE_STATE[n]=finished
        if [ -z "$fail_at" ] && [ "$(node_rc "$n")" != 0 ]; then
          fail_at=$(date +%s)
          log "node $n failed ($(node_rc "$n")); the nodes still running get ${GRACE}s to finish"
        fi
      fi
    done
    [ "$running" -gt 0 ] || return 0
    if [ "$(date +%s)" -ge "$t_end" ]; then
      log "error: time limit of ${TIME_LIMIT}s reached; stopping every guest"
      stop_running
      TIMED_OUT=1
      return 0
    fi
    if [ -n "$fail_at" ] && [ "$(date +%s)" -ge $((fail_at + GRACE)) ]; then
      log "stopping the nodes still running ${GRACE}s after a failure"
      stop_running
      return 0
    fi
    sleep 0.2
  done
}

stop_running() {
  local n
  for ((n = 0; n < NODES; n++)); do
    if [ "${NODE_STATE[n]}" = running ]; then NODE_STATE[n]=stopped; kill_node "$n"; fi
  done
}

# Node $1's CMD exit status from its status port; "setup: why" or "none" if there is none.
node_rc() {
  local st=$RUN_DIR/node$1/status rc
  rc=$(tr -d '\r' < "$st" 2>/dev/null | sed -n 's/^RC=\([0-9]*\)$/\1/p' | tail -1) || true
  if [ -n "$rc" ]; then echo "$rc"; return; fi
  rc=$(tr -d '\r' < "$st" 2>/dev/null | sed -n 's/^FAIL //p' | head -1) || true
  if [ -n "$rc" ]; then echo "setup: $rc"; else echo none; fi
}

# Prints one line per node on stderr; prints the exit status to use.
report() {
  local n rc first_fail='' infra=0 st start end what
  for ((n = 0; n < NODES; n++)); do
    rc=$(node_rc "$n")
    st=$(tr -d '\r' < "$RUN_DIR/node$n/status" 2>/dev/null) || st=
    start=$(sed -n 's/^START uptime=//p' <<< "$st")
    end=$(sed -n 's/^END uptime=//p' <<< "$st")
    case ${NODE_STATE[n]}/$rc in
      killed/*) what="stopped on request (ctl kill)" ;;
      */0) what="exit 0" ;;
      */[0-9]*) what="exit $rc"; [ "$rc" != "$RC_TIMEOUT" ] || what+=" (command timed out)"
                [ -n "$first_fail" ] || first_fail=$rc ;;
      */setup:*) what="guest setup failed: ${rc#setup: }"; infra=1 ;;
      stopped/*) what="stopped before its command ended"
                 if [ "$TIMED_OUT" = 1 ]; then what+=" (time limit)"; else what+=" (after another node failed)"; fi ;;
      *) what="the guest stopped without an exit status"; infra=1 ;;
    esac
    if [ -n "$start" ] && [ -n "$end" ]; then
      what+=" (boot+setup ${start}s, command $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')s)"
    fi
    log "node $n: $what"
    if [ "$VERBOSE" = 1 ] || { [ "$rc" != 0 ] && [ "${NODE_STATE[n]}" = finished ] && [[ ! $rc =~ ^[0-9]+$ ]]; }; then
      { echo "--- node $n: guest console (tail) ---"; tail -n 30 "$RUN_DIR/node$n/console.log" 2>/dev/null
        echo "--- node $n: qemu stderr ---"; cat "$RUN_DIR/node$n/qemu.err" 2>/dev/null; } >&2
    fi
  done
  if [ "$TIMED_OUT" = 1 ]; then echo "$RC_TIMEOUT"
  elif [ "$infra" = 1 ]; then echo "$RC_INFRA"
  elif [ -n "$first_fail" ]; then echo "$first_fail"
  else echo 0
  fi
}

main() {
  parse_args "$@"
  check_host_tools
  prepare_cache
  RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/zcx-rxe-cluster.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  pick_ports
  BARRIER_SECS=$(( TIME_LIMIT < 300 ? TIME_LIMIT : 300 ))
  mkdir -p "$RUN_DIR/ctl"
  write_ctl_helper > "$RUN_DIR/ctl/ctl"
  chmod 755 "$RUN_DIR/ctl/ctl"
  local n t0 rc
  for ((n = 0; n < NODES; n++)); do
    mkdir -p "$RUN_DIR/node$n"
    make_node_initrd "$n"
  done
  t0=$(now_ms)
  log "$NODES nodes, $RAILS rail(s) (hubs in node 0, TCP ports from $BASE_PORT on 127.0.0.1), ${VCPUS} vCPU and $MEM each, limit ${TIME_LIMIT}s"
  start_node 0
  if ! wait_hub_ports; then
    log "error: node 0's QEMU does not listen on its hub ports"
    cat "$RUN_DIR/node0/qemu.err" >&2
    exit "$RC_INFRA"
  fi
  for ((n = 1; n < NODES; n++)); do start_node "$n"; done
  supervise
  rc=$(report)
  log "wall $(( ($(now_ms) - t0) / 1000 )) s; exit status $rc"
  exit "$rc"
}

main "$@"

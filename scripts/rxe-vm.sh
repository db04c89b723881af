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
readonly RC_TIMEOUT=124 RC_INFRA=125
# Kernel modules the guest loads (with their dependencies). crc32_generic must be listed: rxe
# asks the crypto layer for "crc32" by name at run time, and nothing pulls the module in.
# crc32_pclmul is deliberately absent (pclmul is slow under TCG).
readonly GUEST_MODULES="crc32_generic rdma_rxe rdma_ucm ib_uverbs ib_umad dummy overlay 9p 9pnet_virtio virtio_pci"
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

# ------------------------------------------------------------------------------ helpers
log() { echo "$PROG: $*" >&2; }
die() { log "error: $*"; exit "$RC_INFRA"; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
now_ms() { date +%s%3N; }

# Quotes one word for a POSIX shell (the guest side runs dash, which has no $'...').
sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

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

# Everything the runner needs on the host; ip and rdma are the host's own, run in the guest.
check_host_tools() {
  local missing=() t
  for t in qemu-system-x86_64 busybox cpio depmod modprobe xz apt-get apt-cache dpkg-deb \
           flock timeout ip rdma; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  # The initramfs needs busybox-static (the dynamic busybox has no libraries in the guest).
  if command -v busybox >/dev/null && ldd "$(command -v busybox)" >/dev/null 2>&1; then
    missing+=("busybox-static (found a dynamically linked busybox)")
  fi
  [ ${#missing[@]} -eq 0 ] ||
    die "missing host tools: ${missing[*]}. Run scripts/install-deps.sh first."
}

# ------------------------------------------------------------------------------ cache
# Layout of $CACHE:
#   .lock                     serialises cache updates between concurrent runs
#   deb/linux-image-*.deb     Debian's kernel package (kept: rebuilds need no network)
#   vmlinux-KVER              uncompressed kernel (boots ~2.5 s faster under TCG than bzImage)
#   vmlinuz-KVER              the packaged bzImage, fallback if vmlinux extraction failed
#   base-STAMP.cpio           initramfs: busybox + modules + /init (STAMP: this script + kernel)

# Prints the name of the kernel package linux-image-amd64 currently depends on.
resolve_kernel_package() {
  local pkg
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
  if [ -z "$pkg" ] && [ "$(id -u)" -eq 0 ]; then
    log "apt has no linux-image-amd64; running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
          awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
  fi
  [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 (run apt-get update as root)"
  echo "$pkg"
}

# Downloads the kernel package into $CACHE/deb (replacing any older one).
fetch_kernel_deb() {
  local pkg tmp
  pkg=$(resolve_kernel_package)
  log "downloading $pkg (once; cached in $CACHE)"
  tmp=$(mktemp -d "$CACHE/download.XXXXXX")
  chmod 777 "$tmp"   # as root, apt downloads as the _apt user
  (cd "$tmp" && timeout 900 apt-get download -q "$pkg" >&2) || { rm -rf "$tmp"; die "apt-get download $pkg failed"; }
  rm -rf "$CACHE/deb"
  mv "$tmp" "$CACHE/deb"
  chmod 755 "$CACHE/deb"
}

# Extracts the xz-compressed ELF payload of bzImage $1 into $2 (QEMU boots an ELF vmlinux
# directly through its PVH entry point, skipping the slow in-guest decompression).
extract_vmlinux() {
  local bzimage=$1 out=$2 off
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bzimage" | head -1 | cut -d: -f1) || true
  [ -n "$off" ] || return 1
  # (process substitution: tail's SIGPIPE must not trip pipefail)
  xz -dc --single-stream < <(tail -c +$((off + 1)) "$bzimage") > "$out.tmp" 2>/dev/null || true
  if [ "$(head -c 4 "$out.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
    mv "$out.tmp" "$out"
  else
    rm -f "$out.tmp"; return 1
  fi
}

# Builds $CACHE/base-STAMP.cpio from the cached kernel package: the kernel modules rxe and 9p
# need, a static busybox, and /init. Also leaves the kernel image in the cache.
build_base_initramfs() {
  local base=$1 deb=$2 t0 tmp kroot root kver ko rel
  t0=$(now_ms)
  tmp=$(mktemp -d "$CACHE/build.XXXXXX")
  kroot=$tmp/kernel root=$tmp/initramfs
  mkdir -p "$kroot" "$root"
  # Only ./boot and ./lib/modules are needed from the package.
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kroot" --wildcards './boot/vmlinuz-*' './lib/modules/*' ||
    die "cannot unpack $deb"
  kver=$(ls "$kroot/lib/modules")
  [ -f "$kroot/boot/vmlinuz-$kver" ] || die "unexpected layout in $deb"
  if [ ! -f "$CACHE/vmlinux-$kver" ] && [ ! -f "$CACHE/vmlinuz-$kver" ]; then
    extract_vmlinux "$kroot/boot/vmlinuz-$kver" "$CACHE/vmlinux-$kver" ||
      { log "warning: no vmlinux in the bzImage; booting the bzImage (slower)";
        cp "$kroot/boot/vmlinuz-$kver" "$CACHE/vmlinuz-$kver"; }
  fi

  # Modules: the closure of GUEST_MODULES, in load order, from the package's own modules.dep
  # (Debian ships none: depmod makes it).
  depmod -b "$kroot" "$kver"
  local closure='' m
  for m in $GUEST_MODULES; do
    closure+=$(modprobe -d "$kroot" -S "$kver" --show-depends "$m") || die "kernel $kver has no module $m"
    closure+=$'\n'
  done
  mkdir -p "$root/etc/zcx-rxe"
  # shellcheck disable=SC2013  # (module paths have no blanks)
  for ko in $(awk '$1 == "insmod" && !seen[$2]++ { print $2 }' <<< "$closure"); do
    rel=${ko#"$kroot/lib/modules/$kver/"}
    mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
    cp "$ko" "$root/lib/modules/$kver/$rel"
    # dummy would create dummy0 by itself; the guest creates it with the wanted MTU.
    case $rel in */dummy.ko) echo "$rel numdummies=0" ;; *) echo "$rel" ;; esac
  done > "$root/etc/zcx-rxe/modules"

  # busybox runs /init; everything after the host root is mounted uses the host's own tools.
  mkdir -p "$root"/{bin,dev,proc,sys,mnt/ro,mnt/rw,newroot}
  cp "$(command -v busybox)" "$root/bin/busybox"
  local applet
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  write_guest_init > "$root/init"
  write_guest_stage2 > "$root/etc/zcx-rxe/stage2"
  chmod 755 "$root/init"
  # Uncompressed on purpose: unpacking gzip under TCG costs more than reading a few MB.
  (cd "$root" && find . | cpio -o -H newc --quiet > "$base.tmp") && mv "$base.tmp" "$base"
  rm -rf "$tmp"
  log "built $(basename "$base") ($(du -h "$base" | cut -f1)) for kernel $kver in $(( $(now_ms) - t0 )) ms"
}

# Makes sure the cache holds a kernel and a current base initramfs; sets KERNEL and BASE.
prepare_cache() {
  local deb kver stamp
  mkdir -p "$CACHE"
  exec {lock_fd}>>"$CACHE/.lock"
  flock -w 1800 "$lock_fd" || die "timed out waiting for the lock on $CACHE"
  if [ "$REBUILD" = 1 ]; then
    rm -rf "$CACHE/deb" "$CACHE"/vmlinu[xz]-* "$CACHE"/base-*.cpio
  fi
  local debs=("$CACHE"/deb/linux-image-*.deb)
  if [ ! -f "${debs[0]}" ]; then
    fetch_kernel_deb
    debs=("$CACHE"/deb/linux-image-*.deb)
    [ -f "${debs[0]}" ] || die "apt-get download left no linux-image-*.deb in $CACHE/deb"
  fi
  deb=${debs[0]}
  stamp=$( { sha256sum < "${BASH_SOURCE[0]}"; basename "$deb"; sha256sum < "$(command -v busybox)"; } |
           sha256sum | cut -c1-16)
  BASE=$CACHE/base-$stamp.cpio
  if [ ! -f "$BASE" ]; then
    rm -f "$CACHE"/base-*.cpio
    build_base_initramfs "$BASE" "$deb"
  fi
  kver=$(basename "$deb" | sed 's/^linux-image-\(.*\)_.*_.*\.deb$/\1/')
  KERNEL=$CACHE/vmlinux-$kver
  [ -f "$KERNEL" ] || KERNEL=$CACHE/vmlinuz-$kver
  [ -f "$KERNEL" ] || die "no kernel image for $kver in $CACHE (try -B)"
  exec {lock_fd}>&-
}

# ------------------------------------------------------------------------------ guest side
# /init of the initramfs (busybox sh, PID 1). Serial ports: ttyS0 kernel console (a log file
# on the host), ttyS1 CMD's output (the host's stdout), ttyS2 status lines for the host:
# "FAIL <why>" for a setup failure, "RC=<n>" with CMD's exit status.
write_guest_init() {
  cat <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
exec 3>/dev/ttyS1 4>/dev/ttyS2

fail() { echo "FAIL $*" >&4; sync; poweroff -f; }
. /etc/zcx-rxe/env

kver=$(uname -r)
while read -r ko args; do
  # shellcheck disable=SC2086
  insmod "/lib/modules/$kver/$ko" $args || fail "insmod $ko"
done < /etc/zcx-rxe/modules

# The host's / over 9p (read-only, cached) under a tmpfs overlay: the guest can write anywhere,
# those writes are discarded. The shared folder is mounted on top of it, read-write, uncached.
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" hostroot /mnt/ro || fail "cannot mount the host root (9p)"
mount -t tmpfs -o size=50% tmpfs /mnt/rw || fail "tmpfs"
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/ro,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work overlay /newroot ||
  fail "cannot mount the overlay on the host root"
for d in proc sys dev; do mount -o rbind "/$d" "/newroot/$d" || fail "bind /$d"; done
mount -t tmpfs tmpfs /newroot/run || fail "tmpfs /run"
mkdir -p "/newroot$SHARE"
mount -t 9p -o "$opts" share "/newroot$SHARE" || fail "cannot mount the shared folder $SHARE (9p)"
mkdir -p /newroot/run/zcx-rxe
cp /etc/zcx-rxe/* /newroot/run/zcx-rxe/

# Stage 2 runs in the host's root with the host's dash, ip, rdma, timeout. (A full path: busybox
# would otherwise run its own applets, e.g. an "ip" without dummy links.)
chroot /newroot /bin/sh /run/zcx-rxe/stage2
sync
poweroff -f
EOF
}

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

# Per-run initrd: the cached base plus a small cpio with this run's command and settings.
make_run_initrd() {
  local r=$RUN_DIR/root v
  mkdir -p "$r/etc/zcx-rxe"
  printf '%s\n' "$COMMAND" > "$r/etc/zcx-rxe/cmd"
  {
    echo "SHARE=$(sh_quote "$SHARE")"
    echo "WORKDIR=$(sh_quote "$WORKDIR")"
    echo "TIME_LIMIT=$TIME_LIMIT"
    echo "MTU=$MTU"
    echo "RXE_IP=$RXE_IP"
  } > "$r/etc/zcx-rxe/env"
  for v in "${EXTRA_ENV[@]}"; do
    echo "export ${v%%=*}=$(sh_quote "${v#*=}")"
  done > "$r/etc/zcx-rxe/extra-env"
  (cd "$r" && find . | cpio -o -H newc --quiet > "$RUN_DIR/run.cpio")
  cat "$BASE" "$RUN_DIR/run.cpio" > "$RUN_DIR/initrd"
}

# ------------------------------------------------------------------------------ run
# shellcheck disable=SC2317  # (called from the EXIT trap)
cleanup() {
  [ -z "$QEMU_PID" ] || kill "$QEMU_PID" 2>/dev/null || true
  [ -z "$RUN_DIR" ] || rm -rf "$RUN_DIR"
}

# Boots the guest; returns QEMU's (or timeout's) exit status.
run_qemu() {
  local append="console=ttyS0 loglevel=3 panic=-1 mitigations=off nokaslr tsc=reliable"
  [ "$VERBOSE" = 1 ] || append="quiet $append"
  # A backstop on the whole VM: the guest enforces TIME_LIMIT on CMD itself; this catches a
  # guest that hangs while booting or shutting down.
  local rc=0
  # TCG only (KVM fails on these hosts). -erms,-fsrm: TCG emulates "rep movsb" slowly, and
  # hiding ERMS makes the guest kernel copy with plain moves (~1.8x rxe bandwidth).
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
  make_run_initrd
  local t0 qemu_rc=0
  t0=$(now_ms)
  run_qemu || qemu_rc=$?
  exit "$(report "$qemu_rc" $(( $(now_ms) - t0 )))"
}

main "$@"

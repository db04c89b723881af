#!/usr/bin/env bash
# rxe-guest.sh - shared parts of scripts/rxe-vm.sh and scripts/rxe-cluster.sh (sourced, not run):
# host tool checks, the kernel + initramfs cache, the guest's /init, and the per-run initrd.
#
# The sourcing script sets PROG (its name, for messages), CACHE, REBUILD and RUN_DIR, and
# defines write_guest_stage2 (the guest's stage 2: network and rxe setup, then the command).
# See docs/soft-roce.md.
# shellcheck shell=bash

RXE_GUEST_LIB=$(realpath "${BASH_SOURCE[0]}")
readonly RXE_GUEST_LIB
# shellcheck disable=SC2034  # (RC_TIMEOUT: used by the sourcing scripts)
readonly RC_TIMEOUT=124 RC_INFRA=125
# Kernel modules the guest loads (with their dependencies). crc32_generic must be listed: rxe
# asks the crypto layer for "crc32" by name at run time, and nothing pulls the module in.
# crc32_pclmul is deliberately absent (pclmul is slow under TCG). virtio_net: rxe-cluster.sh's NICs.
readonly GUEST_MODULES="crc32_generic rdma_rxe rdma_ucm ib_uverbs ib_umad dummy overlay 9p 9pnet_virtio virtio_pci virtio_net"

log() { echo "$PROG: $*" >&2; }
die() { log "error: $*"; exit "$RC_INFRA"; }
# Prints the header comment of the script that was run.
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
now_ms() { date +%s%3N; }

# Quotes one word for a POSIX shell (the guest side runs dash, which has no $'...').
sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }


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
  stamp=$( { sha256sum < "$RXE_GUEST_LIB"; basename "$deb"; sha256sum < "$(command -v busybox)"; } |
           sha256sum | cut -c1-16)
  BASE=$CACHE/base-$stamp.cpio
  if [ ! -f "$BASE" ]; then
    # Other checkouts (other versions of this file) may use other bases at the same time: only
    # bases unused for two days go.
    find "$CACHE" -maxdepth 1 -name 'base-*.cpio' -mtime +2 -delete
    build_base_initramfs "$BASE" "$deb"
  fi
  touch "$BASE"
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
if [ -n "${CTL_TAG:-}" ]; then   # rxe-cluster.sh: the runner's control folder
  mkdir -p /newroot/run/zcx-ctl
  mount -t 9p -o "$opts" "$CTL_TAG" /newroot/run/zcx-ctl || fail "cannot mount the control folder (9p)"
fi
mkdir -p /newroot/run/zcx-rxe
cp /etc/zcx-rxe/* /newroot/run/zcx-rxe/
cp /bin/busybox /newroot/run/zcx-rxe/busybox   # (ping: the host may have no iputils)

# Stage 2 runs in the host's root with the host's dash, ip, rdma, timeout. (A full path: busybox
# would otherwise run its own applets, e.g. an "ip" without dummy links.)
chroot /newroot /bin/sh /run/zcx-rxe/stage2
sync
poweroff -f
EOF
}

# Per-run initrd $RUN_DIR/initrd: the cached base plus a small cpio holding
# /etc/zcx-rxe/{cmd,env,extra-env,stage2}. $1: the command; $2: env lines (sourced by /init and
# stage 2); $3: extra-env lines (sourced by the command's shell). Stage 2 is write_guest_stage2's.
make_run_initrd() {
  local r=$RUN_DIR/root
  mkdir -p "$r/etc/zcx-rxe"
  printf '%s\n' "$1" > "$r/etc/zcx-rxe/cmd"
  printf '%s' "$2" > "$r/etc/zcx-rxe/env"
  printf '%s' "$3" > "$r/etc/zcx-rxe/extra-env"
  write_guest_stage2 > "$r/etc/zcx-rxe/stage2"
  (cd "$r" && find . | cpio -o -H newc --quiet > "$RUN_DIR/run.cpio")
  cat "$BASE" "$RUN_DIR/run.cpio" > "$RUN_DIR/initrd"
  rm -rf "$r" "$RUN_DIR/run.cpio"
}

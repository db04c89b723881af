#!/usr/bin/env bash
# Installs everything zcx's build, tests and tools need, from Debian's repositories. Idempotent:
# does nothing when every package is already installed.
set -euo pipefail

PACKAGES=(
  # build
  g++ cmake ninja-build pkg-config clang-format
  # scripts/quickstart.sh's summary table; scripts/test-package.sh's symbol checks (nm, readelf)
  python3 binutils
  # the fuzz targets (scripts/fuzz.sh): clang and its libFuzzer runtime
  clang libclang-rt-14-dev
  libucx-dev ucx-utils libibverbs-dev librdmacm-dev ibverbs-providers rdma-core
  libgflags-dev libgoogle-glog-dev libgtest-dev libgmock-dev libbenchmark-dev
  # HMAC-SHA256 authentication of the control channel (OpenSSL libcrypto)
  libssl-dev
  # reference tools compared against, and the many-node perf run
  perftest ibverbs-utils rdmacm-utils openmpi-bin libopenmpi-dev python3-matplotlib
  # the soft-RoCE guest (scripts/rxe-vm.sh)
  qemu-system-x86 busybox-static iproute2 cpio kmod xz-utils
  # the fault suite's 100% packet loss between network namespaces (tests/fault_test.cc)
  nftables
  # discovery through etcd (EngineOptions::metadata): tests/etcd_test.cc starts real etcd
  # members on loopback (etcd-server); etcdctl (etcd-client) to look at the keys by hand
  etcd-server etcd-client
  # the Python package (python/): pybind11 extension, its pytest suite, examples/param_sync.py,
  # and `pip install --no-build-isolation ./python` (setuptools + pip, no downloads)
  python3-dev pybind11-dev python3-numpy python3-torch python3-pytest python3-setuptools
  python3-pip
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

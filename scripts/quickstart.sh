#!/usr/bin/env bash
# The main job on one machine, no RDMA hardware needed: installs what is missing, builds, then
# moves real data between two processes on this machine with zcx_perf --loopback (a server
# process and a client process over the default transport) and prints what moved and how fast.
#   scripts/quickstart.sh                       # write/read bandwidth and latency, verified
#   scripts/quickstart.sh --transport ucx --ucx_tls tcp,self --ucx_net_devices lo   # over TCP
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "${ZCX_JOBS:-$(nproc)}" --target zcx_perf

perf=build/perf/zcx_perf
echo "== zcx quickstart: two processes on this machine, $(nproc) cores =="
for test in write_bw read_bw send_bw; do
  "$perf" --loopback --test "$test" --size 65536 --iters 20000 --verify "$@"
done
"$perf" --loopback --test write_bw --size 4194304 --iters 500 --verify "$@"
for test in write_lat read_lat send_lat; do
  "$perf" --loopback --test "$test" --size 8 --iters 20000 "$@"
done
echo "== done: every byte checked (--verify); run 'build/perf/zcx_perf --help' for more =="

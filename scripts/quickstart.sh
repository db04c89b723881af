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
echo "-- how fast: bandwidth (64 KiB and 4 MiB) and 8-byte latency"
for test in write_bw read_bw send_bw; do
  "$perf" --loopback --test "$test" --size 65536 --iters 20000 "$@"
done
"$perf" --loopback --test write_bw --size 4194304 --iters 500 "$@"
for test in write_lat read_lat send_lat; do
  "$perf" --loopback --test "$test" --size 8 --iters 20000 "$@"
done
# Checking every byte costs more than moving it, so it is a run of its own.
echo "-- what moved: the same tests with every byte that arrived checked (--verify)"
for test in write_bw read_bw send_bw write_lat read_lat send_lat; do
  "$perf" --loopback --test "$test" --size 65536 --iters 2000 --verify "$@"
done
echo "== done; run 'build/perf/zcx_perf --help' for more =="

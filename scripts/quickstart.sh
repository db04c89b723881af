#!/usr/bin/env bash
# The main job on one machine, no RDMA hardware needed: installs what is missing, builds, then
# moves real data between two processes on this machine with zcx_perf --loopback (a server
# process and a client process over the default transport) and prints what moved and how fast,
# and whether every byte arrived intact.
#   scripts/quickstart.sh                       # write/read/send bandwidth and latency, verified
#   scripts/quickstart.sh --transport ucx --ucx_tls tcp,self --ucx_net_devices lo   # over TCP
# The screen shows one line per phase and a summary table; apt, dpkg, cmake and zcx_perf output
# goes to the log (build/quickstart.log; ZCX_QUICKSTART_LOG to change it), which is where to
# look when a phase fails (its last lines are shown then).
set -euo pipefail
cd "$(dirname "$0")/.."

log=${ZCX_QUICKSTART_LOG:-build/quickstart.log}
mkdir -p "$(dirname "$log")"
: >"$log"
results=$(mktemp "${TMPDIR:-/tmp}/zcx-quickstart.XXXXXX")
trap 'rm -f "$results"' EXIT
perf=build/perf/zcx_perf

phases=5
phase_no=0
# phase TITLE COMMAND...: runs COMMAND with its output in the log, prints one line about it.
phase() {
  local title=$1 start=$SECONDS
  shift
  phase_no=$((phase_no + 1))
  printf '[%d/%d] %-46s' "$phase_no" "$phases" "$title"
  echo "=== [$phase_no/$phases] $title: $*" >>"$log"
  if "$@" >>"$log" 2>&1; then
    printf 'ok %5d s\n' $((SECONDS - start))
  else
    printf 'FAILED after %d s\n' $((SECONDS - start))
    echo "--- the last lines of $log:"
    tail -n 15 "$log"
    exit 1
  fi
}

# zcx_perf ... --json: its result lines go to $results, everything else to the log.
perf_runs() {
  local line
  while read -r line; do
    # shellcheck disable=SC2086 # the run's arguments are split on purpose
    "$perf" --loopback --json $line "${extra[@]}" | tee -a "$results" || return 1
  done
}

extra=("$@")
echo "zcx quickstart: two processes on this machine, $(nproc) cores; log: $log"
phase "install dependencies (apt)" scripts/install-deps.sh
phase "configure (cmake)" cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
phase "build zcx_perf (ninja)" cmake --build build -j "${ZCX_JOBS:-$(nproc)}" --target zcx_perf
phase "measure: bandwidth and latency (7 runs)" perf_runs <<'EOF'
--test write_bw --size 65536 --iters 20000
--test read_bw --size 65536 --iters 20000
--test send_bw --size 65536 --iters 20000
--test write_bw --size 4194304 --iters 500
--test write_lat --size 8 --iters 20000
--test read_lat --size 8 --iters 20000
--test send_lat --size 8 --iters 20000
EOF
# Checking every byte costs more than moving it, so it is a run of its own.
phase "verify: every byte checked (6 runs)" perf_runs <<'EOF'
--test write_bw --size 65536 --iters 2000 --verify
--test read_bw --size 65536 --iters 2000 --verify
--test send_bw --size 65536 --iters 2000 --verify
--test write_lat --size 65536 --iters 2000 --verify
--test read_lat --size 65536 --iters 2000 --verify
--test send_lat --size 65536 --iters 2000 --verify
EOF

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def size(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1024 else f"{n} B"
def amount(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
checked = {r["test"]: r for r in rows if r.get("verify")}
speed = [r for r in rows if not r.get("verify")]
if speed:
    print(f"\ntransport: {speed[0]['transport_description']}   MB/s = 10^6 B/s")
print(f"{'test':<10} {'size':>7} {'moved':>9} {'MB/s':>9} {'p50 us':>10} {'p99 us':>10}"
      "  checked (--verify run at 64 KiB)")
shown = []
for r in speed:
    v = checked.pop(r["test"], None)  # shown on the first row of its test
    if v: shown.append(v)
    ok = ("-" if v is None else
          f"{amount(v['verified_bytes'])}, 0 bad" if v["verify_errors"] == 0 else
          f"{v['verify_errors']} BAD bytes")
    bw = "-" if r["test"].endswith("_lat") else f"{r['bw_avg_MBps']:.1f}"
    print(f"{r['test']:<10} {size(r['size']):>7} {amount(r['size'] * r['iterations']):>9} "
          f"{bw:>9} {r['lat_us']['p50']:>10.2f} {r['lat_us']['p99']:>10.2f}  {ok}")
print("latency: one-way for *_lat (half the round trip; read_lat: the full read), "
      "post to completion for *_bw (write_bw: one completion per 100 writes, like perftest; "
      "timed from the first of them)")
shown += checked.values()
bad = sum(v["verify_errors"] for v in shown)
print("every checked byte arrived intact" if bad == 0 and shown else "VERIFICATION FAILED")
sys.exit(0 if bad == 0 and shown else 1)
EOF
echo "more: build/perf/zcx_perf --help; the whole suite: scripts/test.sh"

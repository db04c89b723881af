#!/usr/bin/env bash
# perf/compare.sh - zcx_perf side by side with the raw tool on the same transport and memory kind.
#
# Host: UCX tcp (lo) and UCX shm (posix,cma) against ucx_perftest. Guest (soft-RoCE via
# scripts/rxe-vm.sh): verbs on rxe0 against perftest (ib_write_bw, ib_read_bw, ib_send_bw,
# ib_write_lat, ib_read_lat, ib_send_lat). Each case runs zcx and the raw tool alternately REPS
# times, server pinned to CPU 0 and client to CPU 1, and the table shows the medians and the
# ratio zcx/raw. Units: both tools' bandwidth in MB/s = 10^6 B/s (ucx_perftest and perftest print
# MiB/s under the label "MB/s"; converted here), latency in microseconds, rate in Mmsg/s.
# CPU: user + system seconds of the server and the client process together (rusage at exit) per
# GB (10^9 B) of messages the client posted (size x iterations, each tool's warm-up included).
# Measured the same way for both tools, so each one's start-up counts too: in runs of a few
# milliseconds (shm) it dominates.
#
# Usage: perf/compare.sh [-b BUILD_DIR] [-r REPS] [-p "tcp shm verbs"] [-o OUT_DIR]
#   -b  build folder (default: build/ in the repository; configured and built if zcx_perf is missing)
#   -r  repetitions per tool and case (default 3)
#   -p  parts to run (default "tcp shm verbs"; verbs needs scripts/rxe-vm.sh and QEMU)
#   -o  output folder for raw logs, results.jsonl and table.md (default perf/out)
# Targets (per transport): bandwidth >= 0.97x at 64 KiB-4 MiB, 8-byte latency <= 1.10x,
# message rate >= 0.9x, CPU per GB <= 1.10x.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build
REPS=3
PARTS="tcp shm verbs"
OUT=$ROOT/perf/out
GUEST=0
while getopts "b:r:p:o:gh" opt; do
  case $opt in
    b) BUILD=$(cd "$OPTARG" 2>/dev/null && pwd || echo "$OPTARG") ;;
    r) REPS=$OPTARG ;;
    p) PARTS=$OPTARG ;;
    o) OUT=$OPTARG ;;
    g) GUEST=1 ;;  # internal: we are inside the rxe guest, run the verbs part only
    h) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) exit 2 ;;
  esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: -r wants a positive number" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ZCX=$BUILD/perf/zcx_perf
PORT=${ZCX_COMPARE_PORT:-20000}
CPU_SERVER=${CPU_SERVER:-0}
CPU_CLIENT=${CPU_CLIENT:-1}

log() { echo "compare.sh: $*" >&2; }

# ------------------------------------------------------------------ build
build_if_needed() {
  [[ -x $ZCX ]] && return 0
  log "building zcx_perf in $BUILD"
  local verbs=ON
  pkg-config --exists libibverbs librdmacm 2>/dev/null || verbs=OFF
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZCX_WITH_VERBS=$verbs >/dev/null
  cmake --build "$BUILD" --target zcx_perf -j2
}

# ------------------------------------------------------------------ running one measurement
listening() {  # PORT: is a TCP socket listening on it (IPv4 or IPv6)?
  local hex
  hex=$(printf ':%04X ' "$1")
  grep -q "${hex}[0-9A-F:]* 0A " /proc/net/tcp /proc/net/tcp6 2>/dev/null ||
    awk -v h="$hex" '$2 ~ h && $4 == "0A" {f=1} END {exit !f}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

next_port() { PORT=$((PORT + 1)); while listening "$PORT"; do PORT=$((PORT + 1)); done; }

# CPUTIME OUT CMD...: runs CMD; writes its user and system seconds (microsecond resolution, which
# time(1) does not have) to OUT; passes on SIGTERM and SIGINT; exits with CMD's status.
CPUTIME=(python3 -c '
import os, signal, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda s, _: os.kill(pid, s))
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%.6f %.6f\n" % (ru.ru_utime, ru.ru_stime))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
')

# run_pair LOG SERVER_CMD... -- CLIENT_CMD...: server pinned on CPU_SERVER, client on CPU_CLIENT.
# Each process's user and system seconds go to LOG.server.time and LOG.time.
run_pair() {
  local logf=$1; shift
  local srv=() cli=()
  while [[ $1 != -- ]]; do srv+=("$1"); shift; done
  shift
  cli=("$@")
  rm -f "$logf.server.time" "$logf.time"
  taskset -c "$CPU_SERVER" "${CPUTIME[@]}" "$logf.server.time" "${srv[@]}" >"$logf.server" 2>&1 &
  local spid=$! i
  for i in $(seq 100); do listening "$PORT" && break; sleep 0.05; done
  local rc=0
  timeout 120 taskset -c "$CPU_CLIENT" "${CPUTIME[@]}" "$logf.time" "${cli[@]}" >"$logf" 2>&1 || rc=$?
  if ! timeout 20 tail --pid="$spid" -f /dev/null 2>/dev/null; then kill "$spid" 2>/dev/null || true; fi
  wait "$spid" 2>/dev/null || true
  return $rc
}

# cpu_seconds LOG: user + system seconds of the pair run_pair LOG ran (empty if not measured).
cpu_seconds() {
  local f t=0 line
  for f in "$1.server.time" "$1.time"; do
    line=$(tail -n 1 "$f" 2>/dev/null) || return 0
    [[ $line =~ ^[0-9.]+\ [0-9.]+$ ]] || return 0
    t=$(awk -v t="$t" -v l="$line" 'BEGIN { split(l, a, " "); printf "%.6g", t + a[1] + a[2] }')
  done
  echo "$t"
}

# arg OPTION DEFAULT WORDS...: the value after OPTION among WORDS.
arg() {
  local opt=$1 def=$2; shift 2
  while [[ $# -gt 0 ]]; do
    [[ $1 == "$opt" && $# -gt 1 ]] && { echo "$2"; return; }
    shift
  done
  echo "$def"
}

# zcx_bytes ZCX_ARGS: payload bytes one zcx_perf client run moves, warm-up included (the warm-up
# rules of perf/perf_client.cc: Client::bandwidth, ::selectiveBandwidth and ::latency; zcx_perf's
# defaults --depth 128 and --cq_mod 100; runs without --verify).
zcx_bytes() {
  # shellcheck disable=SC2086
  set -- $1
  local test size iters depth batch cq unsig=0
  test=$(arg --test write_bw "$@"); size=$(arg --size 65536 "$@"); iters=$(arg --iters 0 "$@")
  depth=$(arg --depth 128 "$@"); batch=$(arg --batch 1 "$@"); cq=$(arg --cq_mod 100 "$@")
  [[ " $* " == *" --unsignaled "* ]] && unsig=1
  awk -v t="$test" -v s="$size" -v n="$iters" -v d="$depth" -v b="$batch" -v c="$cq" -v u="$unsig" '
    function min3(a, x, y) { if (x < a) a = x; if (y < a) a = y; return a }
    BEGIN {
    if (t ~ /_lat$/) { w = int(n / 10); if (w > 1000) w = 1000; m = n + w }
    else if (t == "write_bw" && b == 1 && (u || c > 1)) {  # selective signalling
      win = u ? 2 * d * 64 : d; w = min3(int(n / 10) + win, n, 100000); m = n + w }
    else { r = int((n + b - 1) / b); w = min3(int(r / 10) + d, r, 1000); m = (r + w) * b }
    printf "%.0f\n", m * s }'
}

# raw_bytes CLIENT_CMD: payload bytes one raw-tool run moves (ucx_perftest: -n plus its warm-up,
# min(-w (10000), ceil(n / 10)) iterations (ucx_perf_set_warmup); perftest: -n).
raw_bytes() {
  # shellcheck disable=SC2086
  set -- $1
  local tool=$1 n s w=0
  n=$(arg -n 0 "$@"); s=$(arg -s 0 "$@")
  [[ $tool == ucx_perftest ]] && w=$(arg -w 10000 "$@")
  awk -v n="$n" -v s="$s" -v w="$w" 'BEGIN {
    c = int((n + 9) / 10); if (w > c) w = c
    printf "%.0f\n", (n + w) * s }'
}

# per_gb CPU_SECONDS BYTES: CPU-seconds per 10^9 bytes (empty if either is missing).
per_gb() {
  [[ -n $1 && -n $2 && $2 != 0 ]] || return 0
  awk -v c="$1" -v b="$2" 'BEGIN { printf "%.6g\n", c / (b / 1e9) }'
}

# zcx_perf JSON line -> metric (bw: MB/s, lat: avg us, rate: Mmsg/s)
parse_zcx() {
  python3 -c '
import json, sys
kind = sys.argv[1]
for line in open(sys.argv[2]):
    line = line.strip()
    if not line.startswith("{"): continue
    d = json.loads(line)
    print({"bw": d["bw_avg_MBps"], "lat": d["lat_us"]["avg"], "rate": d["msg_rate_Mpps"]}[kind])
    break
' "$1" "$2"
}
# ucx_perftest "Final:" line: iters p50 avg overall bw_avg bw_overall rate_avg rate_overall (MiB/s)
parse_ucx() {
  awk -v k="$1" '/^Final:/ {
    if (k == "bw") printf "%.6g\n", $7 * 1048576 / 1e6;
    else if (k == "lat") printf "%.6g\n", $5;
    else printf "%.6g\n", $9 / 1e6; found = 1 }
    END { exit !found }' "$2"
}
# perftest: bw tables "#bytes #iterations BW_peak BW_avg MsgRate" (MiB/s unless --report_gbits);
# lat tables "#bytes #iterations t_min t_max t_typical t_avg t_stdev p99 p99.9".
parse_perftest() {
  awk -v k="$1" '
    /#bytes/ { hdr = 1; next }
    hdr && $1 ~ /^[0-9]+$/ && NF >= 5 {
      if (k == "bw") printf "%.6g\n", $4 * 1048576 / 1e6;
      else if (k == "rate") printf "%.6g\n", $5;
      else printf "%.6g\n", $6;
      found = 1; exit }
    END { exit !found }' "$2"
}

median() { { grep -v '^$' || true; } | sort -g | awk '{a[NR] = $1} END { if (NR == 0) { print "nan"; exit } if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# part case metric zcx raw ratio target verdict cpu_zcx cpu_raw cpu_ratio cpu_verdict samples
ROWS=$OUT/rows.tsv

# measure PART CASE KIND "ZCX CLIENT ARGS" "RAW SERVER CMD" "RAW CLIENT CMD" RAWPARSER
# The strings are split on spaces; @PORT@ is replaced by the port of each run.
measure() {
  local part=$1 name=$2 kind=$3 zargs=$4 rsrv=$5 rcli=$6 rparse=$7
  local zs=() rs=() zc=() rc=() r v c logf ztest zsize zbytes rbytes
  ztest=$(sed -E 's/.*--test ([a-z_]+).*/\1/' <<<"$zargs")
  zsize=$(sed -E 's/.*--size ([0-9]+).*/\1/' <<<"$zargs")
  zbytes=$(zcx_bytes "$zargs")
  rbytes=$(raw_bytes "$rcli")
  for r in $(seq "$REPS"); do
    next_port
    logf=$OUT/$part.$name.zcx.$r.log
    # shellcheck disable=SC2086
    if run_pair "$logf" $ZCX --listen "$SERVER_IP" --port "$PORT" $ZCX_SERVER_ARGS -- \
                 $ZCX $zargs --port "$PORT" --json "$SERVER_IP"; then
      v=$(parse_zcx "$kind" "$logf") && zs+=("$v")
      c=$(per_gb "$(cpu_seconds "$logf")" "$zbytes")
      [[ -n $c ]] && zc+=("$c")
      grep '^{' "$logf" | sed "s/^{/{\"part\":\"$part\",\"case\":\"$name\",\"tool\":\"zcx\",${c:+\"process_cpu_s_per_GB\":$c,}/" >>"$OUT/results.jsonl" || true
    else
      log "zcx failed: $part $name (see $logf)"
    fi
    next_port
    logf=$OUT/$part.$name.raw.$r.log
    # shellcheck disable=SC2086
    if run_pair "$logf" ${rsrv//@PORT@/$PORT} -- ${rcli//@PORT@/$PORT}; then
      if v=$($rparse "$kind" "$logf"); then
        rs+=("$v")
        c=$(per_gb "$(cpu_seconds "$logf")" "$rbytes")
        [[ -n $c ]] && rc+=("$c")
        echo "{\"part\":\"$part\",\"case\":\"$name\",\"tool\":\"raw\",\"test\":\"$ztest\",\"size\":$zsize,\"metric\":\"$kind\",\"value\":$v${c:+,\"process_cpu_s_per_GB\":$c}}" >>"$OUT/results.jsonl"
      else
        log "could not parse the raw tool's output: $logf"
      fi
    else
      log "raw tool failed: $part $name (see $logf)"
    fi
  done
  local zm rm ratio target verdict
  zm=$(printf '%s\n' "${zs[@]}" | median)
  rm=$(printf '%s\n' "${rs[@]}" | median)
  # (a here-string, not process substitution: the rxe guest has no /dev/fd)
  # Targets: latency <= 1.10x, message rate and send_bw at 64 KiB >= 0.90x, other bandwidth 0.97x.
  read -r ratio target verdict <<<"$(awk -v z="$zm" -v r="$rm" -v k="$kind" -v n="$name" 'BEGIN {
    if (z == "nan" || r == "nan" || r == 0) { print "n/a n/a FAILED"; exit }
    q = z / r
    if (k == "lat") { t = "<=1.10"; ok = q <= 1.10 }
    else if (k == "rate" || n ~ /^send_bw_64K/) { t = ">=0.90"; ok = q >= 0.90 }
    else { t = ">=0.97"; ok = q >= 0.97 }
    printf "%.3f %s %s\n", q, t, ok ? "meets" : "MISSES" }')"
  local czm crm cratio cverdict
  czm=$(printf '%s\n' "${zc[@]}" | median)
  crm=$(printf '%s\n' "${rc[@]}" | median)
  read -r cratio cverdict <<<"$(awk -v z="$czm" -v r="$crm" 'BEGIN {
    if (z == "nan" || r == "nan" || r == 0) { print "n/a n/a"; exit }
    printf "%.3f %s\n", z / r, z / r <= 1.10 ? "meets" : "MISSES" }')"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$part" "$name" "$kind" "$zm" "$rm" "$ratio" \
    "$target" "$verdict" "$czm" "$crm" "$cratio" "$cverdict" "${zs[*]} | ${rs[*]}" >>"$ROWS"
  log "$part $name: zcx $zm raw $rm ratio $ratio ($verdict); CPU s/GB zcx $czm raw $crm ratio $cratio ($cverdict)"
}

# ------------------------------------------------------------------ parts
ucx_part() {  # tcp | shm
  local part=$1 tls devs=""
  if [[ $part == tcp ]]; then
    tls=tcp,self; devs=lo
    export UCX_TLS=$tls UCX_NET_DEVICES=$devs
  else
    tls=posix,cma,self
    export UCX_TLS=$tls
    unset UCX_NET_DEVICES
  fi
  # zcx creates its endpoints with peer error handling and turns on UCX_MM_ERROR_HANDLING itself
  # (needed over shm); ucx_perftest runs without -e, so without error handling: its fastest mode.
  SERVER_IP=127.0.0.1
  ZCX_SERVER_ARGS="--transport ucx --ucx-tls $tls ${devs:+--ucx-net-devices $devs}"
  local z="--transport ucx --ucx-tls $tls ${devs:+--ucx-net-devices $devs}"
  local srv="ucx_perftest -p @PORT@" cli="ucx_perftest 127.0.0.1 -p @PORT@"
  local n64=20000 n1m=4000 n4m=1000 nlat=100000 nrate=200000
  if [[ $part == tcp ]]; then n64=5000; n1m=500; n4m=200; nlat=10000; nrate=50000; fi
  # write_bw with zcx_perf's defaults, which are perftest's: --depth 128, a completion per 100
  # writes (--cq_mod 100: writeUnsignaled + flush).
  measure "$part" put_bw_64K bw "$z --test write_bw --size 65536 --iters $n64" "$srv" "$cli -t ucp_put_bw -s 65536 -n $n64" parse_ucx
  measure "$part" put_bw_4M bw "$z --test write_bw --size 4194304 --iters $n4m" "$srv" "$cli -t ucp_put_bw -s 4194304 -n $n4m" parse_ucx
  measure "$part" get_bw_64K bw "$z --test read_bw --size 65536 --depth 64 --iters $n64" "$srv" "$cli -t ucp_get -s 65536 -n $n64" parse_ucx
  measure "$part" get_bw_4M bw "$z --test read_bw --size 4194304 --depth 16 --iters $n4m" "$srv" "$cli -t ucp_get -s 4194304 -n $n4m" parse_ucx
  # Two-sided: zcx send/recv against UCX active messages (what zcx uses) and tag matching. zcx's
  # send_bw counts a message once the server confirmed it arrived.
  measure "$part" send_bw_64K bw "$z --test send_bw --size 65536 --depth 64 --iters $n64" "$srv" "$cli -t ucp_am_bw -s 65536 -n $n64" parse_ucx
  measure "$part" send_bw_64K_vs_tag bw "$z --test send_bw --size 65536 --depth 64 --iters $n64" "$srv" "$cli -t tag_bw -s 65536 -n $n64" parse_ucx
  measure "$part" send_bw_1M bw "$z --test send_bw --size 1048576 --depth 16 --iters $n1m" "$srv" "$cli -t ucp_am_bw -s 1048576 -n $n1m" parse_ucx
  measure "$part" put_lat_8 lat "$z --test write_lat --size 8 --iters $nlat" "$srv" "$cli -t ucp_put_lat -s 8 -n $nlat" parse_ucx
  measure "$part" put_rate_8 rate "$z --test write_bw --size 8 --iters $nrate" "$srv" "$cli -t ucp_put_bw -s 8 -n $nrate" parse_ucx
  # One Request per write (Connection::write, --cq_mod 1): the per-operation path.
  measure "$part" put_rate_8_per_request rate "$z --test write_bw --size 8 --depth 64 --cq_mod 1 --iters $nrate" "$srv" "$cli -t ucp_put_bw -s 8 -n $nrate" parse_ucx
  # A flush per depth x 64 unsignaled writes (--unsignaled), and 64 writes per request
  # (Connection::writeBatch, one completion per 64 messages).
  measure "$part" put_rate_8_unsignaled rate "$z --test write_bw --size 8 --depth 16 --unsignaled --iters $nrate" "$srv" "$cli -t ucp_put_bw -s 8 -n $nrate" parse_ucx
  measure "$part" put_rate_8_batch64 rate "$z --test write_bw --size 8 --depth 16 --batch 64 --iters $nrate" "$srv" "$cli -t ucp_put_bw -s 8 -n $nrate" parse_ucx
  unset UCX_TLS UCX_NET_DEVICES
}

verbs_part() {  # inside the guest
  local dev=${RXE_DEV:-rxe0} gid=${ZCX_GID_INDEX:-1}
  SERVER_IP=${RXE_IP:-10.11.0.1}
  ZCX_SERVER_ARGS="--transport verbs --device $dev --gid_index $gid"
  local z="--transport verbs --device $dev --gid_index $gid"
  local pt="-d $dev -x $gid -p @PORT@ -F"
  measure verbs write_bw_64K bw "$z --test write_bw --size 65536 --iters 2000" "ib_write_bw $pt -s 65536 -n 2000" "ib_write_bw $pt -s 65536 -n 2000 $SERVER_IP" parse_perftest
  measure verbs write_bw_4M bw "$z --test write_bw --size 4194304 --iters 40" "ib_write_bw $pt -s 4194304 -n 40" "ib_write_bw $pt -s 4194304 -n 40 $SERVER_IP" parse_perftest
  measure verbs read_bw_64K bw "$z --test read_bw --size 65536 --depth 16 --iters 2000" "ib_read_bw $pt -s 65536 -n 2000" "ib_read_bw $pt -s 65536 -n 2000 $SERVER_IP" parse_perftest
  measure verbs send_bw_64K bw "$z --test send_bw --size 65536 --depth 128 --iters 2000" "ib_send_bw $pt -s 65536 -n 2000" "ib_send_bw $pt -s 65536 -n 2000 $SERVER_IP" parse_perftest
  measure verbs write_lat_8 lat "$z --test write_lat --size 8 --iters 2000" "ib_write_lat $pt -s 8 -n 2000" "ib_write_lat $pt -s 8 -n 2000 $SERVER_IP" parse_perftest
  measure verbs read_lat_8 lat "$z --test read_lat --size 8 --iters 2000" "ib_read_lat $pt -s 8 -n 2000" "ib_read_lat $pt -s 8 -n 2000 $SERVER_IP" parse_perftest
  measure verbs send_lat_8 lat "$z --test send_lat --size 8 --iters 2000" "ib_send_lat $pt -s 8 -n 2000" "ib_send_lat $pt -s 8 -n 2000 $SERVER_IP" parse_perftest
  measure verbs write_rate_8 rate "$z --test write_bw --size 8 --iters 20000" "ib_write_bw $pt -s 8 -n 20000" "ib_write_bw $pt -s 8 -n 20000 $SERVER_IP" parse_perftest
  measure verbs write_rate_8_per_request rate "$z --test write_bw --size 8 --cq_mod 1 --iters 20000" "ib_write_bw $pt -s 8 -n 20000" "ib_write_bw $pt -s 8 -n 20000 $SERVER_IP" parse_perftest
  measure verbs write_rate_8_batch16 rate "$z --test write_bw --size 8 --depth 8 --batch 16 --iters 20000" "ib_write_bw $pt -s 8 -n 20000" "ib_write_bw $pt -s 8 -n 20000 $SERVER_IP" parse_perftest
}

print_table() {
  {
    echo "| part | case | metric | zcx | raw | zcx/raw | target | verdict | CPU s/GB zcx | CPU s/GB raw | CPU zcx/raw (<=1.10) |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' '{ printf "| %s | %s | %s | %.4g | %.4g | %s | %s | %s | %.4g | %.4g | %s %s |\n", $1, $2, ($3 == "bw" ? "MB/s" : ($3 == "lat" ? "us (avg)" : "Mmsg/s")), $4, $5, $6, $7, $8, $9, $10, $11, $12 }' "$ROWS"
  } | tee "$OUT/table.md"
}

# ------------------------------------------------------------------ main
if [[ $GUEST == 1 ]]; then
  ulimit -l unlimited 2>/dev/null || true
  verbs_part
  exit 0
fi

build_if_needed
: >"$ROWS"
: >"$OUT/results.jsonl"
start=$(date +%s)
for part in $PARTS; do
  case $part in
    tcp | shm) ucx_part "$part" ;;
    verbs)
      if [[ ! -x $ROOT/scripts/rxe-vm.sh ]]; then
        log "verbs part skipped: scripts/rxe-vm.sh is not there (soft-RoCE guest runner)"
      elif ! command -v qemu-system-x86_64 >/dev/null; then
        log "verbs part skipped: qemu-system-x86_64 is not installed"
      elif ! command -v ib_write_bw >/dev/null; then
        log "verbs part skipped: perftest (ib_write_bw) is not installed"
      else
        log "verbs part: booting the soft-RoCE guest (scripts/rxe-vm.sh)"
        # The guest sees the repository read-write (same path); the host's /tmp is not visible there.
        "$ROOT/scripts/rxe-vm.sh" -s "$ROOT" -C "$ROOT" -t 420 -- \
          "$ROOT/perf/compare.sh" -g -b "$BUILD" -r "$REPS" -o "$OUT/verbs" >"$OUT/verbs-guest.log" 2>&1 ||
          log "the guest run failed (exit $?): see $OUT/verbs-guest.log"
        [[ -f $OUT/verbs/rows.tsv ]] && cat "$OUT/verbs/rows.tsv" >>"$ROWS"
        [[ -f $OUT/verbs/results.jsonl ]] && cat "$OUT/verbs/results.jsonl" >>"$OUT/results.jsonl"
      fi
      ;;
    *) log "unknown part '$part' (tcp, shm, verbs)"; exit 2 ;;
  esac
done
echo
echo "zcx_perf vs raw tool: median of $REPS alternating runs, server on CPU $CPU_SERVER, client on CPU $CPU_CLIENT;"
echo "$(nproc) CPUs, $(. /etc/os-release && echo "$PRETTY_NAME"), $(date -u +%Y-%m-%dT%H:%MZ), $(($(date +%s) - start)) s"
print_table

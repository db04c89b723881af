#!/usr/bin/env bash
# zcx_perf's write_bw paths move the right bytes: --loopback runs (a server process and a client)
# over UCX with --verify, where the server checks the final contents of every slot each round,
# for selective signalling (the default --cq_mod 100 and odd values with several connections),
# one Request per write (--cq_mod 1) and --unsignaled; the JSON says which path ran; bad
# combinations of the flags are refused with a usage error.
# Usage: tests/zcx_perf_test.sh ZCX_PERF TLS   (TLS: tcp | shm)
set -uo pipefail
perf=$1
case $2 in
  tcp) tls=(--transport ucx --ucx_tls tcp,self --ucx_net_devices lo) ;;
  shm) tls=(--transport ucx --ucx_tls posix,cma,self) ;;
  *) echo "usage: $0 ZCX_PERF tcp|shm" >&2; exit 2 ;;
esac
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# run EXPECT_CQ_MOD ARGS...: a verified loopback run; its JSON line must say cq_mod EXPECT.
run() {
  local expect=$1 out rc=0
  shift
  out=$(timeout 120 "$perf" --loopback --json --verify --quiet "${tls[@]}" "$@" 2>&1) || rc=$?
  if [ $rc -ne 0 ]; then
    fail "zcx_perf $* exited $rc"; echo "$out" | tail -5; return
  fi
  local line
  line=$(grep '^{' <<<"$out" | tail -1)
  grep -q '"verify":true' <<<"$line" || fail "zcx_perf $*: no verified result: $line"
  grep -q '"verify_errors":0,' <<<"$line" || fail "zcx_perf $*: verification errors: $line"
  grep -q "\"cq_mod\":$expect," <<<"$line" || fail "zcx_perf $*: expected cq_mod $expect: $line"
  echo "ok: $* -> $(grep -o '"iterations":[0-9]*\|"bw_avg_MBps":[0-9.e+]*' <<<"$line" | tr '\n' ' ')"
}

# The default: a flush per 100 writes, at most --depth (128) unconfirmed, each with its own slot.
run 100 --test write_bw --size 65536 --iters 1000
run 100 --test write_bw --size 4093 --iters 3001
# The cap: cq_mod is at most the depth; several connections; odd counts that end mid-batch.
run 10 --test write_bw --size 8 --depth 10 --cq_mod 64 --qps 2 --iters 1237
run 7 --test write_bw --size 1000 --depth 20 --cq_mod 7 --qps 3 --iters 999
# More slots than the depth.
run 3 --test write_bw --size 512 --depth 32 --slots 40 --cq_mod 3 --iters 500
# One Request per write, and --unsignaled (a flush per depth x 64 writes, window bounded by --slots).
run 1 --test write_bw --size 65536 --cq_mod 1 --depth 16 --iters 500
run 16 --test write_bw --size 8 --depth 16 --unsignaled --iters 20000
# A timed run ends on a flush too.
run 100 --test write_bw --size 256 --duration 0.5
# More unconfirmed writes than the engine takes (256 batches in flight; a 256 KiB write is a
# batch of its own): writeUnsignaled pushes back and the run waits for its oldest flush.
run 512 --test write_bw --size 262144 --depth 16 --slots 512 --unsignaled --iters 2000

# refused TEXT ARGS...: a usage error (exit 2) whose message contains TEXT.
refused() {
  local text=$1 out rc=0
  shift
  out=$("$perf" --loopback --quiet "${tls[@]}" "$@" 2>&1) || rc=$?
  if [ $rc -ne 2 ]; then fail "zcx_perf $*: expected exit 2, got $rc: $out"; return; fi
  grep -q -- "$text" <<<"$out" || fail "zcx_perf $*: message does not say '$text': $out"
  echo "refused: $*"
}
refused "--cq_mod must be" --test write_bw --cq_mod 0
refused "--cq_mod applies to write_bw" --test read_bw --cq_mod 10
refused "--cq_mod applies to write_bw" --test write_bw --batch 4 --cq_mod 10
refused "give --cq_mod or --unsignaled" --test write_bw --unsignaled --cq_mod 10
refused "--mpi measures one Request" --mpi --cq_mod 10
refused "'foo' is not KEY=VALUE" --transport_params foo
refused "'=1' is not KEY=VALUE" --transport_params ucx.tls=tcp,=1
refused "an empty item" --transport_params ucx.tls=tcp,
refused "an empty item" --transport_params a=1,,b=2
refused "ucx.rma is given twice" --transport_params ucx.rma=auto,ucx.rma=checked

# --transport_params reaches the engine of both processes: a value with commas, and an unknown
# key that the engine refuses by name.
params="ucx.tls=${tls[3]}${tls[5]:+,ucx.net_devices=${tls[5]}},ucx.rma=checked"
out=$(timeout 60 "$perf" --loopback --json --quiet --transport ucx --iters 100 \
  --transport_params "$params" 2>&1)
grep -q "\"transport_description\":\"ucx [0-9.]* tls=${tls[3]}.* rma=checked\"" <<<"$out" ||
  fail "--transport_params $params did not reach the engine: $out"
out=$(timeout 60 "$perf" --loopback --quiet --transport ucx --transport_params ucx.no_such=1 2>&1)
grep -q "unknown ucx transport parameter 'ucx.no_such'" <<<"$out" ||
  fail "an unknown transport parameter was not refused by name: $out"

if [ $failures -ne 0 ]; then
  echo "zcx_perf_test ($2): $failures failure(s)"
  exit 1
fi
echo "zcx_perf_test ($2): passed"

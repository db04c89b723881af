// zcx_perf: perftest-style bandwidth and latency tool for zcx.
//
//   server:  zcx_perf --listen HOST[:PORT] [--auth-secret-file PATH] [options]
//   client:  zcx_perf [--auth-secret-file PATH] [options] SERVER
//   both:    zcx_perf --loopback [options]      (forks its own server on 127.0.0.1)
//   MPI:     mpirun -np N zcx_perf --mpi [options]
//
// The client drives every test; the server learns the test from the client's hello message on a
// control connection (connection 0) and serves the data connections (1..qps). Progress is manual
// (the measuring thread busy-polls, like perftest); the server keeps progressing until the client
// says a round is done, since UCX over tcp emulates one-sided operations in software.
//
// This file: the flags, their validation and the choice of mode. The rest: perf_control (the
// client-server protocol), perf_server, perf_client, perf_loopback, perf_mpi, perf_engine
// (engine and buffers from the flags), perf_report (every line of output, JSON included).
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "perf_client.h"
#include "perf_control.h"
#include "perf_engine.h"
#include "perf_flags.h"
#include "perf_loopback.h"
#include "perf_server.h"
#if ZCX_PERF_HAVE_MPI
#include "perf_mpi.h"
#endif

DEFINE_string(test, "write_bw", "write_bw|read_bw|send_bw|write_lat|read_lat|send_lat");
DEFINE_string(size, "65536", "message size in bytes (suffixes K, M, KiB, MiB allowed)");
DEFINE_bool(all, false, "run every power-of-two size from 2 B to 8 MiB");
DEFINE_int64(iters, 0, "operations per connection and size (0: automatic, perftest-like)");
DEFINE_double(duration, 0, "run each size for this many seconds instead of --iters");
DEFINE_int32(depth, 128,
             "operations in flight per connection (bandwidth tests; perftest's --tx-depth)");
DEFINE_int32(qps, 1, "data connections (bandwidth tests)");
DEFINE_int32(cq_mod, 100,
             "write_bw: one completion per this many writes, like perftest's --cq-mod: the "
             "writes go out with Connection::writeUnsignaled and every cq_mod-th is followed by "
             "a flush() (at most --depth writes unconfirmed; capped at --depth). 1: one Request "
             "per write (Connection::write), the per-operation path");
DEFINE_bool(unsignaled, false,
            "write_bw: --cq_mod of --depth x 64 writes with up to twice that unconfirmed: the "
            "raw message rate (with --verify both are capped at --slots)");
DEFINE_int32(slots, 0,
             "buffers per connection that bandwidth tests cycle through (0: one, shared by the "
             "operations in flight like perftest; with --verify one per operation in flight)");
DEFINE_int32(batch, 1,
             "write_bw/read_bw: messages per request (writeBatch/readBatch; one completion each)");
DEFINE_string(transport, "auto", "auto|ucx|verbs");
DEFINE_string(device, "",
              "RDMA device (verbs), e.g. rxe0; several are rails: rxe0,rxe1 or all (large "
              "operations striped over them, JSON \"rails\" shows each one's bytes)");
DEFINE_int32(gid_index, -1, "GID index (verbs; -1: automatic)");
DEFINE_int32(port, 18515, "TCP port of the zcx control listener");
DEFINE_string(listen, "127.0.0.1",
              "server and --mpi ranks: HOST or HOST:PORT to listen on (PORT: --port; [v6]:PORT "
              "for IPv6). The default serves this machine only: to serve other nodes give this "
              "node's address (or 0.0.0.0 for every interface) together with --auth-secret-file");
DEFINE_string(auth_secret_file, "",
              "--auth-secret-file PATH: shared secret peers must prove they know (the same file "
              "content on every side; chmod 600). Without it anyone who reaches the port may "
              "connect");
DEFINE_string(name, "zcx_perf", "this engine's name, as peers see it (and match --expose_to)");
DEFINE_string(metadata, "",
              "etcd://HOST:PORT[,HOST:PORT...]: the server publishes itself there under --name; "
              "a client then takes that name where it took the server's host");
DEFINE_string(advertise_host, "",
              "with --metadata: the host published for clients to dial (needed with --listen "
              "0.0.0.0)");
DEFINE_string(expose_to, "",
              "NAME,NAME,...: expose this side's buffer only to peers of these --name values "
              "(others cannot look it up, and the target refuses their keys; see "
              "docs/SECURITY.md for what each transport enforces). Default: every peer");
DEFINE_bool(verify, false, "check the bytes that arrived (slows the run)");
DEFINE_bool(json, false, "print one JSON object per result line instead of the table");
DEFINE_int32(progress_spin_us, 50,
             "how long progress polls after the last event before it sleeps on the transport's "
             "fd (EngineOptions::progress_spin; 0-1000000)");
DEFINE_bool(cpu_util, false,
            "report each side's CPU use (% of one core, every thread of the process) and "
            "CPU-seconds per GB moved");
DEFINE_bool(loopback, false, "start a server process on 127.0.0.1 and run the client against it");
DEFINE_bool(persistent, false, "server: keep serving clients instead of exiting after one");
DEFINE_string(ucx_tls, "",
              "UCX transports (transport parameter ucx.tls), e.g. tcp,self or posix,cma,self");
DEFINE_string(ucx_net_devices, "", "UCX network devices (ucx.net_devices), e.g. lo");
DEFINE_string(ucx_rma, "",
              "UCX one-sided operations (ucx.rma): checked (the target checks every access; "
              "the default over tcp), native (UCX RMA, unchecked) or auto");
DEFINE_string(transport_params, "",
              "more transport parameters, KEY=VALUE[,KEY=VALUE...] (EngineOptions::"
              "transport_params), e.g. verbs.ack_timeout=14,verbs.sq_depth=256 or "
              "ucx.tls=tcp,self,ucx.net_devices=lo");
DEFINE_string(mem, "alloc",
              "memory: alloc (Engine::allocate) or user (aligned malloc + registerMemory)");
DEFINE_uint64(seed, 1, "seed of the --verify data pattern");
DEFINE_int32(ready_fd, -1,
             "internal (--loopback): server writes its port to this fd when listening");
DEFINE_bool(mpi, false,
            "bootstrap through MPI and measure write_bw between every pair (or a ring)");
DEFINE_string(mpi_pattern, "pairs",
              "--mpi: pairs (every ordered pair, one at a time) or ring (all at once)");
DEFINE_bool(quiet, true, "log only warnings and errors of the library");
DEFINE_bool(metrics, false,
            "print the engine's metrics (Prometheus text, Engine::metricsText()) at the end of "
            "the run, on the client and on the server (stderr with --json)");

namespace zcx::perf {
namespace {

bool parseSize(const std::string& s, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (end == s.c_str() || errno || s[0] == '-') return false;
  std::string suf(end);
  uint64_t mul = 1;
  if (suf.empty() || suf == "B")
    mul = 1;
  else if (suf == "K" || suf == "KiB" || suf == "k")
    mul = 1024;
  else if (suf == "M" || suf == "MiB" || suf == "m")
    mul = 1024 * 1024;
  else if (suf == "G" || suf == "GiB" || suf == "g")
    mul = 1024ull * 1024 * 1024;
  else
    return false;
  *out = v * mul;
  return true;
}

Status validate(ClientConfig* cfg) {
  if (auto params = parseTransportParams(FLAGS_transport_params); !params.ok()) {
    return params.status();
  }
  if (!parseTest(FLAGS_test, &cfg->kind)) {
    return err(StatusCode::kInvalidArgument,
               "--test must be write_bw, read_bw, send_bw, write_lat, read_lat or send_lat, not '" +
                   FLAGS_test + "'");
  }
  if (FLAGS_all) {
    for (uint64_t s = 2; s <= (8u << 20); s *= 2) cfg->sizes.push_back(s);
  } else {
    uint64_t s = 0;
    if (!parseSize(FLAGS_size, &s) || s < 1 || s > kMaxSize) {
      return err(StatusCode::kInvalidArgument,
                 "--size must be between 1 byte and 1 GiB (e.g. 65536, 64K, 4M), not '" +
                     FLAGS_size + "'");
    }
    cfg->sizes.push_back(s);
  }
  if (FLAGS_iters < 0) return err(StatusCode::kInvalidArgument, "--iters must be positive");
  if (FLAGS_duration < 0 || FLAGS_duration > 86400) {
    return err(StatusCode::kInvalidArgument, "--duration must be between 0 and 86400 seconds");
  }
  if (FLAGS_iters > 0 && FLAGS_duration > 0) {
    return err(StatusCode::kInvalidArgument, "give --iters or --duration, not both");
  }
  if (FLAGS_depth < 1 || FLAGS_depth > 4096)
    return err(StatusCode::kInvalidArgument, "--depth must be 1..4096");
  if (FLAGS_qps < 1 || FLAGS_qps > kMaxQps) {
    return err(StatusCode::kInvalidArgument, "--qps must be 1.." + std::to_string(kMaxQps));
  }
  if (FLAGS_transport != "auto" && FLAGS_transport != "ucx" && FLAGS_transport != "verbs") {
    return err(StatusCode::kInvalidArgument,
               "--transport must be auto, ucx or verbs, not '" + FLAGS_transport + "'");
  }
  if (FLAGS_port < 0 || FLAGS_port > 65535)
    return err(StatusCode::kInvalidArgument, "--port must be 0..65535");
  if (FLAGS_listen.empty() || FLAGS_listen.front() == ':') {
    return err(StatusCode::kInvalidArgument,
               "--listen needs a host: 127.0.0.1 (this machine only), this node's address, or "
               "0.0.0.0 (every interface)");
  }
  if (FLAGS_mem != "alloc" && FLAGS_mem != "user") {
    return err(StatusCode::kInvalidArgument, "--mem must be alloc or user");
  }
  if (FLAGS_mpi && !FLAGS_metadata.empty())
    return err(StatusCode::kInvalidArgument, "--metadata does not combine with --mpi");
  if (FLAGS_mpi_pattern != "pairs" && FLAGS_mpi_pattern != "ring") {
    return err(StatusCode::kInvalidArgument, "--mpi_pattern must be pairs or ring");
  }
  if (FLAGS_batch < 1 || FLAGS_batch > 1024)
    return err(StatusCode::kInvalidArgument, "--batch must be 1..1024");
  if (FLAGS_batch > 1 && cfg->kind != TestKind::kWriteBw && cfg->kind != TestKind::kReadBw) {
    return err(StatusCode::kInvalidArgument, "--batch applies to write_bw and read_bw only");
  }
  if (FLAGS_batch > 1 && FLAGS_verify)
    return err(StatusCode::kInvalidArgument, "--batch does not combine with --verify");
  if (FLAGS_unsignaled && (cfg->kind != TestKind::kWriteBw || FLAGS_batch > 1)) {
    return err(StatusCode::kInvalidArgument,
               "--unsignaled applies to write_bw without --batch (unsignaled writes are batched "
               "by the engine)");
  }
  const bool cq_mod_given = !gflags::GetCommandLineFlagInfoOrDie("cq_mod").is_default;
  if (FLAGS_cq_mod < 1 || FLAGS_cq_mod > 65536)
    return err(StatusCode::kInvalidArgument, "--cq_mod must be 1..65536");
  if (FLAGS_mpi && (cq_mod_given || FLAGS_unsignaled)) {
    return err(StatusCode::kInvalidArgument,
               "--mpi measures one Request per write: drop --cq_mod and --unsignaled");
  }
  if (cq_mod_given && FLAGS_unsignaled) {
    return err(StatusCode::kInvalidArgument,
               "give --cq_mod or --unsignaled, not both (--unsignaled is a --cq_mod of --depth "
               "x 64)");
  }
  if (cq_mod_given && FLAGS_cq_mod > 1 && (cfg->kind != TestKind::kWriteBw || FLAGS_batch > 1)) {
    return err(StatusCode::kInvalidArgument,
               "--cq_mod applies to write_bw without --batch (reads, sends and batches complete "
               "one by one)");
  }
  cfg->batch = FLAGS_batch;
  cfg->depth = FLAGS_depth;
  cfg->qps = FLAGS_qps;
  cfg->verify = FLAGS_verify;
  if (isLatency(cfg->kind)) {
    if (FLAGS_qps != 1)
      return err(StatusCode::kInvalidArgument, "latency tests use one connection: drop --qps");
    cfg->depth = 1;
  }
  if (cfg->kind == TestKind::kSendBw || cfg->kind == TestKind::kSendLat) {
    for (uint64_t s : cfg->sizes) {
      if (s > (8u << 20))
        return err(StatusCode::kInvalidArgument, "send tests take messages up to 8 MiB");
    }
  }
  // Like perftest, the operations in flight on one connection share one buffer; --verify gives
  // each its own slot so that data in flight is never overwritten. --slots overrides.
  cfg->slots = cfg->verify && !isLatency(cfg->kind) ? cfg->depth : 1;
  if (FLAGS_slots < 0 || FLAGS_slots > 65536)
    return err(StatusCode::kInvalidArgument, "--slots must be 0 (automatic) to 65536");
  if (FLAGS_slots > 0 && !isLatency(cfg->kind)) {
    if (cfg->verify && FLAGS_slots < cfg->depth) {
      return err(StatusCode::kInvalidArgument,
                 "--verify needs --slots of at least --depth (operations in flight would "
                 "overwrite each other's data)");
    }
    cfg->slots = FLAGS_slots;
  }
  // Selective signalling (write_bw only): like perftest, a completion per cq_mod writes and at
  // most tx-depth (--depth) writes outstanding, cq_mod capped at that as perftest does. Verified
  // writes must not refill a slot whose previous write is still unconfirmed: at most --slots.
  if (cfg->kind == TestKind::kWriteBw && cfg->batch == 1) {
    const uint64_t depth = uint64_t(cfg->depth);
    cfg->window = FLAGS_unsignaled ? 2 * depth * 64 : depth;
    if (cfg->verify) cfg->window = std::min<uint64_t>(cfg->window, uint64_t(cfg->slots));
    cfg->cq_mod =
        std::min<uint64_t>(FLAGS_unsignaled ? depth * 64 : uint64_t(FLAGS_cq_mod), cfg->window);
  }
  uint64_t max_size = *std::max_element(cfg->sizes.begin(), cfg->sizes.end());
  double bytes = double(regionBytes(cfg->kind, max_size, cfg->qps, cfg->slots));
  if (bytes > 8.0 * (1ull << 30)) {
    return err(StatusCode::kInvalidArgument,
               "the test would register more than 8 GiB: lower --depth, --qps or --size");
  }
  return Status::Ok();
}

}  // namespace
}  // namespace zcx::perf

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "perftest-style benchmark for zcx.\n"
      "  server:   zcx_perf --listen HOST[:PORT] [--auth-secret-file PATH] [options]\n"
      "  client:   zcx_perf [--auth-secret-file PATH] [options] SERVER\n"
      "  by name:  zcx_perf --metadata etcd://HOST:PORT --name NAME [options]   (server)\n"
      "            zcx_perf --metadata etcd://HOST:PORT [options] NAME          (client)\n"
      "  loopback: zcx_perf --loopback [options]\n"
      "  MPI:      mpirun -np N zcx_perf --mpi [options]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  FLAGS_logtostderr = true;
  if (FLAGS_quiet) FLAGS_minloglevel = std::max(FLAGS_minloglevel, 1);
  google::InitGoogleLogging(argv[0]);
  signal(SIGPIPE, SIG_IGN);

  zcx::perf::ClientConfig cfg;
  zcx::Status s = zcx::perf::validate(&cfg);
  if (!s.ok()) {
    std::fprintf(stderr, "zcx_perf: %s\n", s.message().c_str());
    return zcx::perf::kExitUsage;
  }
  if (FLAGS_mpi) {
    if (argc > 1 || FLAGS_loopback) {
      std::fprintf(stderr, "zcx_perf: --mpi takes no SERVER and no --loopback\n");
      return zcx::perf::kExitUsage;
    }
#if ZCX_PERF_HAVE_MPI
    return zcx::perf::runMpi(argc, argv, cfg);
#else
    std::fprintf(stderr, "zcx_perf: built without MPI (install libopenmpi-dev and rebuild)\n");
    return zcx::perf::kExitFail;
#endif
  }
  if (argc > 2) {
    std::fprintf(stderr, "zcx_perf: one SERVER at most, got '%s' and '%s'\n", argv[1], argv[2]);
    return zcx::perf::kExitUsage;
  }
  if (FLAGS_loopback) {
    if (argc > 1) {
      std::fprintf(stderr, "zcx_perf: --loopback takes no SERVER\n");
      return zcx::perf::kExitUsage;
    }
    return zcx::perf::runLoopback(cfg);
  }
  if (argc == 2) return zcx::perf::runClient(cfg, argv[1]);
  return zcx::perf::runServer();
}

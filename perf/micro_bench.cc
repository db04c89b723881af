// Micro-benchmarks of zcx's per-operation costs, through the public API only:
//  - RegionDescriptor encode / decode;
//  - registering a range that is already registered (is it a cache hit?), against a first
//    registration of a fresh range;
//  - the submit cost of Connection::write() (the call alone), a whole write (post +
//  completion), 64 writes in one writeBatch, and unsignaled writes (writeUnsignaled + flush),
//    on two engines connected in this process over UCX (shm by default; ZCX_BENCH_TLS to change).
#include <benchmark/benchmark.h>
#include <glog/logging.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "zcx/zcx.h"

namespace {

using namespace std::chrono_literals;

zcx::EngineOptions options(bool listen) {
  zcx::EngineOptions o;
  o.transport = "ucx";
  const char* tls = std::getenv("ZCX_BENCH_TLS");
  o.transport_params["ucx.tls"] = tls ? tls : "posix,cma,self";
  if (tls && std::strstr(tls, "tcp")) o.transport_params["ucx.net_devices"] = "lo";
  o.listen_address = listen ? "127.0.0.1:0" : "";
  o.progress = zcx::ProgressMode::kManual;
  return o;
}

std::unique_ptr<zcx::Engine> makeEngine(bool listen) {
  auto e = zcx::Engine::create(options(listen));
  CHECK(e.ok()) << e.status().toString();
  return std::move(e.value());
}

void BM_DescriptorEncode(benchmark::State& state) {
  auto eng = makeEngine(false);
  auto region = eng->allocate(1 << 20, zcx::kRemoteReadWrite);
  CHECK(region.ok()) << region.status().toString();
  zcx::RegionDescriptor d = region->descriptor();
  for (auto _ : state) {
    auto bytes = d.encode();
    benchmark::DoNotOptimize(bytes.data());
  }
  state.counters["bytes"] = static_cast<double>(d.encode().size());
}
BENCHMARK(BM_DescriptorEncode);

void BM_DescriptorDecode(benchmark::State& state) {
  auto eng = makeEngine(false);
  auto region = eng->allocate(1 << 20, zcx::kRemoteReadWrite);
  CHECK(region.ok()) << region.status().toString();
  auto bytes = region->descriptor().encode();
  for (auto _ : state) {
    auto d = zcx::RegionDescriptor::decode(bytes);
    benchmark::DoNotOptimize(d.ok());
  }
}
BENCHMARK(BM_DescriptorDecode);

/// Registers [p, p+len) again while a registration of the same range is alive.
void BM_RegisterSameRange(benchmark::State& state) {
  auto eng = makeEngine(false);
  size_t len = static_cast<size_t>(state.range(0));
  void* p = std::aligned_alloc(4096, len);
  std::memset(p, 1, len);
  auto keep = eng->registerMemory(p, len, zcx::kRemoteReadWrite);
  CHECK(keep.ok()) << keep.status().toString();
  for (auto _ : state) {
    auto r = eng->registerMemory(p, len, zcx::kRemoteReadWrite);
    benchmark::DoNotOptimize(r.ok());
  }  // each iteration also deregisters (the MemoryRegion dies)
  keep = zcx::MemoryRegion();
  std::free(p);
}
BENCHMARK(BM_RegisterSameRange)->Arg(4096)->Arg(1 << 20)->Arg(64 << 20);

/// Reference: register + deregister of the same range with no other registration alive.
void BM_RegisterDeregister(benchmark::State& state) {
  auto eng = makeEngine(false);
  size_t len = static_cast<size_t>(state.range(0));
  void* p = std::aligned_alloc(4096, len);
  std::memset(p, 1, len);
  for (auto _ : state) {
    auto r = eng->registerMemory(p, len, zcx::kRemoteReadWrite);
    benchmark::DoNotOptimize(r.ok());
  }
  std::free(p);
}
BENCHMARK(BM_RegisterDeregister)->Arg(4096)->Arg(1 << 20)->Arg(64 << 20);

struct Pair {
  std::unique_ptr<zcx::Engine> target, origin;
  zcx::MemoryRegion target_mem, origin_mem;
  zcx::Connection conn;
  zcx::RemoteRegion remote;
  Pair(size_t len) {
    target = makeEngine(true);
    origin = makeEngine(false);
    target_mem = std::move(target->allocate(len, zcx::kRemoteReadWrite).value());
    origin_mem = std::move(origin->allocate(len, zcx::kLocalOnly).value());
    CHECK(target->expose("bench", target_mem).ok());
    auto c = origin->connect(target->listenAddress());
    CHECK(c.ok()) << c.status().toString();
    conn = std::move(c.value());
    auto accepted = target->accept(5s);
    CHECK(accepted.ok()) << accepted.status().toString();
    peer = std::move(accepted.value());
    auto r = conn.remoteRegion("bench");
    CHECK(r.ok()) << r.status().toString();
    remote = std::move(r.value());
  }
  void progress() {
    origin->progress();
    target->progress();
  }
  zcx::Connection peer;
};

/// The cost of the write() call alone (validation, request allocation, locking, transport post),
/// with 64 writes in flight; completions are reaped outside the timed region.
void BM_WriteSubmit(benchmark::State& state) {
  size_t size = static_cast<size_t>(state.range(0));
  Pair p(size);
  constexpr int kDepth = 64;
  std::vector<zcx::Request> ring(kDepth);
  int i = 0;
  for (auto _ : state) {
    if (ring[i].valid()) {
      while (!ring[i].done()) p.progress();
    }
    auto t0 = std::chrono::steady_clock::now();
    ring[i] = p.conn.write(p.origin_mem, 0, p.remote, 0, size);
    auto t1 = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(t1 - t0).count());
    i = (i + 1) % kDepth;
  }
  for (auto& r : ring) {
    if (r.valid()) CHECK(r.wait().ok());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WriteSubmit)->Arg(8)->Arg(65536)->UseManualTime();

/// A whole write with 64 in flight: post + progress + completion (operations per second).
void BM_WritePipelined(benchmark::State& state) {
  size_t size = static_cast<size_t>(state.range(0));
  Pair p(size);
  constexpr int kDepth = 64;
  std::vector<zcx::Request> ring(kDepth);
  int i = 0;
  for (auto _ : state) {
    if (ring[i].valid()) {
      while (!ring[i].done()) p.progress();
    }
    ring[i] = p.conn.write(p.origin_mem, 0, p.remote, 0, size);
    i = (i + 1) % kDepth;
  }
  for (auto& r : ring) {
    if (r.valid()) CHECK(r.wait().ok());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(size));
}
BENCHMARK(BM_WritePipelined)->Arg(8)->Arg(65536);

/// 64 writes in one writeBatch request (one completion): the batched alternative to
/// BM_WritePipelined.
void BM_WriteBatch64(benchmark::State& state) {
  size_t size = static_cast<size_t>(state.range(0));
  Pair p(size * 64);
  std::vector<zcx::RmaOp> ops(64);
  for (int k = 0; k < 64; ++k) ops[k] = {&p.origin_mem, k * size, &p.remote, k * size, size};
  for (auto _ : state) {
    zcx::Request r = p.conn.writeBatch(ops);
    while (!r.done()) p.progress();
  }
  state.SetItemsProcessed(state.iterations() * 64);
  state.SetBytesProcessed(state.iterations() * 64 * static_cast<int64_t>(size));
}
BENCHMARK(BM_WriteBatch64)->Arg(8)->Arg(65536);

/// Unsignaled writes (no Request each), a flush every 4096 with at most two outstanding: the
/// per-write cost with the engine's batching (64 writes per transport completion).
void BM_WriteUnsignaled(benchmark::State& state) {
  size_t size = static_cast<size_t>(state.range(0));
  Pair p(size);
  zcx::Request older, newer;
  int64_t n = 0;
  for (auto _ : state) {
    zcx::Status st = p.conn.writeUnsignaled(p.origin_mem, 0, p.remote, 0, size);
    if (st.code() == zcx::StatusCode::kResourceExhausted) {
      // The engine's cap on batches in flight (large writes fill a batch in a few): wait for
      // them, as a user would, and go on.
      zcx::Request fence = p.conn.flush();
      while (!fence.done()) p.progress();
      CHECK(fence.test()->ok());
      st = p.conn.writeUnsignaled(p.origin_mem, 0, p.remote, 0, size);
    }
    CHECK(st.ok()) << st.toString();
    if (++n % 4096 == 0) {
      if (older.valid()) {
        while (!older.done()) p.progress();
        CHECK(older.test()->ok());
      }
      older = std::move(newer);
      newer = p.conn.flush();
    }
  }
  for (zcx::Request* r : {&older, &newer}) {
    if (!r->valid()) continue;
    while (!r->done()) p.progress();
    CHECK(r->test()->ok());
  }
  zcx::Request last = p.conn.flush();
  while (!last.done()) p.progress();
  CHECK(last.test()->ok());
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(size));
}
BENCHMARK(BM_WriteUnsignaled)->Arg(8)->Arg(65536);

}  // namespace

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 1;
  google::InitGoogleLogging(argv[0]);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// The transport-parameterised suite: written once, run for every transport available here
// (UCX over tcp and shared memory on any machine; verbs where an RDMA device exists).
// Every test moves real bytes between two processes and checks them.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>

#include "control_protocol.h"
#include "peer_process.h"
#include "zcx/zcx.h"

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

namespace zcx::test {
namespace {

/// The peer touches memory that the other process writes by RDMA: the happens-before edge is
/// in the other process (it tells us over the pipe), which TSan cannot see. Such accesses are
/// hidden from TSan instead of reported and suppressed (tests/tsan.supp): matching every report
/// of a 1 MiB copy against the suppressions took a 1 MiB write 12-17 s under TSan instead of
/// 0.2 s, past the test's operation timeout on a loaded host.
class RdmaTargetAccess {
 public:
  RdmaTargetAccess() { hide(true); }
  ~RdmaTargetAccess() { hide(false); }
  RdmaTargetAccess(const RdmaTargetAccess&) = delete;
  RdmaTargetAccess& operator=(const RdmaTargetAccess&) = delete;

 private:
  static void hide([[maybe_unused]] bool begin) {
#if defined(__SANITIZE_THREAD__)
    if (begin) {
      __tsan_ignore_thread_begin();
    } else {
      __tsan_ignore_thread_end();
    }
#endif
  }
};

// Completion callbacks run on a progress thread, possibly just after wait() returned: waits
// (bounded) until `calls` reaches `n`, then a little longer so that an extra call would be seen.
void waitForCalls(const std::atomic<int>& calls, int n) {
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (calls.load() < n && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

using namespace std::chrono_literals;

struct TransportParam {
  std::string name;       ///< in every test name: tcp, shm, verbs
  std::string transport;  ///< ucx, verbs
  std::map<std::string, std::string> params;
  std::string host;     ///< the address peers listen on
  std::string devices;  ///< EngineOptions::devices (verbs_rails: RXE_DEVS, e.g. "rxe0,rxe1")
};

/// The parameters of transport `name` ("tcp", "shm", "verbs"), without probing anything.
TransportParam paramNamed(const std::string& name) {
  if (name == "tcp")
    return {"tcp", "ucx", {{"ucx.tls", "tcp,self"}, {"ucx.net_devices", "lo"}}, "127.0.0.1", ""};
  if (name == "shm") return {"shm", "ucx", {{"ucx.tls", "posix,cma,self"}}, "127.0.0.1", ""};
  const char* ip = std::getenv("RXE_IP");  // rdma_cm needs the RDMA netdev's address
  if (name == "verbs_rails") {
    // Every rail of RXE_DEVS; rail 0 (RXE_IP's) carries the messages.
    const char* devs = std::getenv("RXE_DEVS");
    return {"verbs_rails", "verbs", {}, ip ? ip : "127.0.0.1", devs ? devs : ""};
  }
  return {"verbs", "verbs", {}, ip ? ip : "127.0.0.1", ""};
}

/// Two or more rails to test striping on (scripts/test-rxe.sh makes rxe1 and sets RXE_DEVS).
bool railsHere() {
  const char* devs = std::getenv("RXE_DEVS");
  return devs != nullptr && std::string(devs).find(',') != std::string::npos;
}

ZCX_TEST_PEER(probeVerbs) { return Engine::probeTransport("verbs").ok() ? 0 : 1; }

std::vector<TransportParam> transportsHere() {
  std::vector<TransportParam> t = {paramNamed("tcp"), paramNamed("shm")};
  // Probe verbs in another process: this one must not open RDMA devices before the tests start
  // their peers (see PeerProcess).
  PeerProcess probe("probeVerbs", {});
  if (probe.join(30s) == 0) {
    t.push_back(paramNamed("verbs"));
    if (railsHere()) t.push_back(paramNamed("verbs_rails"));
  }
  return t;
}

EngineOptions optionsFor(const TransportParam& p, bool listen) {
  EngineOptions o;
  o.transport = p.transport;
  o.transport_params = p.params;
  o.devices = p.devices;
  o.listen_address = listen ? p.host + ":0" : "";
  o.connect_timeout = 10s;
  o.operation_timeout = 20s;
  o.max_message_size = 64 * 1024;
  return o;
}

void PrintTo(const TransportParam& p, std::ostream* os) { *os << p.name; }

size_t msgLen(size_t i, size_t cap) { return 1 + (i * 7919) % cap; }

/// A registered buffer owned by the test.
struct Buffer {
  std::unique_ptr<uint8_t[]> bytes;
  MemoryRegion region;
};

Buffer makeBuffer(Engine& e, size_t n, uint32_t access, uint8_t fill = kPoison) {
  Buffer b;
  b.bytes.reset(new uint8_t[n]);
  std::memset(b.bytes.get(), fill, n);
  auto r = e.registerMemory(b.bytes.get(), n, access);
  if (!r.ok())
    ADD_FAILURE() << r.status().toString();
  else
    b.region = std::move(*r);
  return b;
}

// ---------------------------------------------------------------- the peer's command server

ZCX_TEST_PEER(serveCommands) {
  const TransportParam tp = paramNamed(args.at(0));
  auto engine = Engine::create(optionsFor(tp, true));
  if (!engine.ok()) {
    pipe.send("error " + engine.status().toString());
    return 1;
  }
  pipe.send("addr " + (*engine)->listenAddress());
  std::map<std::string, Buffer> regions;
  Connection conn;
  for (;;) {
    auto line = pipe.recv(120s);
    if (!line) return 2;
    auto w = words(*line);
    if (w.empty()) continue;
    const std::string& c = w[0];
    auto num = [&](size_t i) { return std::strtoull(w.at(i).c_str(), nullptr, 10); };
    if (c == "exit") {
      // The engine goes before the memory it exposed. Freeing memory exposed for remote writes
      // while the engine still progresses is NOT yet safe over UCX tcp/shm: puts a stalled
      // (SIGSTOPped) test queued in our shared-memory FIFO land when we resume, and UCX's put
      // handler writes to the address without checking a registration (seen as a SIGSEGV in
      // ucp_put_handler, ~1 run in 10 of the stalled-peer tests). Target-side checking of every
      // remote access is the trust-boundary issue's work (RMA over checked active messages).
      conn = Connection();
      engine->reset();
      return 0;
    }
    if (c == "accept") {
      auto a = (*engine)->accept(20s);
      if (!a.ok()) {
        pipe.send("error " + a.status().toString());
        continue;
      }
      conn = std::move(*a);
      pipe.send("ok");
    } else if (c == "alloc") {  // alloc NAME SIZE ACCESS
      regions[w[1]] = makeBuffer(**engine, num(2), static_cast<uint32_t>(num(3)));
      Status s = (*engine)->expose(w[1], regions[w[1]].region);
      pipe.send(s.ok() ? "ok" : "error " + s.toString());
    } else if (c == "free") {  // free NAME: deregisters (revokes the key)
      regions.erase(w[1]);
      pipe.send("ok");
    } else if (c == "poison") {
      auto& b = regions.at(w[1]);
      RdmaTargetAccess hidden;
      std::memset(b.bytes.get(), kPoison, b.region.size());
      pipe.send("ok");
    } else if (c == "fill") {  // fill NAME OFF LEN SEED
      RdmaTargetAccess hidden;
      fillPattern(regions.at(w[1]).bytes.get() + num(2), num(3), num(4));
      pipe.send("ok");
    } else if (c == "check") {  // check NAME OFF LEN SEED: pattern inside, poison outside
      auto& b = regions.at(w[1]);
      size_t off = num(2), len = num(3);
      RdmaTargetAccess hidden;
      std::string bad = checkPattern(b.bytes.get() + off, len, num(4));
      if (bad.empty()) bad = checkPoison(b.bytes.get(), off);
      if (bad.empty())
        bad = checkPoison(b.bytes.get() + off + len, b.region.size() - off - len, off + len);
      pipe.send(bad.empty() ? "ok" : "bad " + bad);
    } else if (c ==
               "waitnotify") {  // waitnotify NAME OFF LEN SEED: the data must be there on arrival
      auto v = conn.waitNotification(20s);
      if (!v.ok()) {
        pipe.send("error " + v.status().toString());
        continue;
      }
      RdmaTargetAccess hidden;
      std::string bad = checkPattern(regions.at(w[1]).bytes.get() + num(2), num(3), num(4));
      pipe.send(bad.empty() ? "notify " + std::to_string(*v) : "bad " + bad);
    } else if (c == "recvmsgs") {  // recvmsgs N CAP
      size_t n = num(1), cap = num(2);
      Buffer rx = makeBuffer(**engine, n * cap, kLocalOnly);
      std::vector<Request> reqs;
      for (size_t i = 0; i < n; ++i) reqs.push_back(conn.recv(rx.region, i * cap, cap));
      std::string bad;
      for (size_t i = 0; i < n && bad.empty(); ++i) {
        Status s = reqs[i].wait(30s);
        if (!s.ok())
          bad = "recv " + std::to_string(i) + ": " + s.toString();
        else if (reqs[i].bytes() != msgLen(i, cap))
          bad =
              "message " + std::to_string(i) + " has " + std::to_string(reqs[i].bytes()) + " bytes";
        else
          bad = checkPattern(rx.bytes.get() + i * cap, reqs[i].bytes(), 1000 + i);
        if (!bad.empty() && bad.rfind("recv", 0) != 0 && bad.rfind("message", 0) != 0)
          bad = "message " + std::to_string(i) + " out of order: " + bad;
      }
      pipe.send(bad.empty() ? "ok" : "bad " + bad);
    } else if (c == "sendmsgs" || c == "sendclose") {
      // sendmsgs N CAP: sends N messages; sendclose N CAP: also closes once they are sent
      size_t n = num(1), cap = num(2);
      Buffer tx = makeBuffer(**engine, n * cap, kLocalOnly);
      std::vector<Request> reqs;
      for (size_t i = 0; i < n; ++i) {
        fillPattern(tx.bytes.get() + i * cap, msgLen(i, cap), 1000 + i);
        reqs.push_back(conn.send(tx.region, i * cap, msgLen(i, cap)));
      }
      Status s = waitAll(reqs, 30s);
      if (c == "sendclose") {
        conn.close();  // at once: nothing tells the receiver that the last message arrived
        conn = Connection();
      }
      pipe.send(s.ok() ? "ok" : "error " + s.toString());
    } else if (c == "close") {
      conn.close();
      pipe.send("ok");
    } else {
      pipe.send("error unknown command " + c);
    }
  }
}

// ---------------------------------------------------------------- fixture

class TransferTest : public ::testing::TestWithParam<TransportParam> {
 protected:
  void SetUp() override {
    // Fork before this process creates any engine: the child starts clean.
    peer_ =
        std::make_unique<PeerProcess>("serveCommands", std::vector<std::string>{GetParam().name});
    auto hello = peer_->pipe().recv(30s);
    ASSERT_TRUE(hello && hello->rfind("addr ", 0) == 0) << (hello ? *hello : "peer did not start");
    peer_addr_ = hello->substr(5);
    auto e = Engine::create(optionsFor(GetParam(), false));
    ASSERT_TRUE(e.ok()) << e.status().toString();
    engine_ = std::move(*e);
  }

  void TearDown() override {
    conn_ = Connection();
    if (peer_) {
      peer_->pipe().send("exit");
      EXPECT_EQ(peer_->join(20s), 0) << "peer process failed";
    }
    engine_.reset();
  }

  /// Sends a command to the peer and returns its answer.
  std::string cmd(const std::string& line) {
    peer_->pipe().send(line);
    auto r = peer_->pipe().recv(60s);
    return r ? *r : "no answer from peer";
  }

  void connect() {
    peer_->pipe().send("accept");
    auto c = engine_->connect(peer_addr_);
    ASSERT_TRUE(c.ok()) << c.status().toString();
    conn_ = std::move(*c);
    auto r = peer_->pipe().recv(30s);
    ASSERT_EQ(r.value_or("none"), "ok");
  }

  /// Like connect(), from a fresh local engine made with `o`.
  void connectWith(const EngineOptions& o) {
    peer_->pipe().send("accept");
    engine_.reset();
    auto e = Engine::create(o);
    ASSERT_TRUE(e.ok()) << e.status().toString();
    engine_ = std::move(*e);
    auto c = engine_->connect(peer_addr_);
    ASSERT_TRUE(c.ok()) << c.status().toString();
    conn_ = std::move(*c);
    ASSERT_EQ(peer_->pipe().recv(10s).value_or(""), "ok");
  }

  RemoteRegion peerRegion(const std::string& name, size_t size, uint32_t access) {
    EXPECT_EQ(cmd("alloc " + name + " " + std::to_string(size) + " " + std::to_string(access)),
              "ok");
    auto r = conn_.remoteRegion(name);
    EXPECT_TRUE(r.ok()) << r.status().toString();
    return r.ok() ? *r : RemoteRegion();
  }

  std::unique_ptr<PeerProcess> peer_;
  std::string peer_addr_;
  std::unique_ptr<Engine> engine_;
  Connection conn_;
};

const std::vector<size_t> kSizes = {1, 7, 4096, (1u << 20) + 13};

// ---------------------------------------------------------------- one-sided

TEST_P(TransferTest, WriteOddSizesAndOffsetsLandExactly) {
  connect();
  const size_t cap = (2u << 20);
  RemoteRegion dst = peerRegion("dst", cap, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, cap, kLocalOnly);
  std::mt19937 rng(7);
  for (size_t size : kSizes) {
    size_t loff = rng() % (cap - size), roff = rng() % (cap - size);
    uint64_t seed = rng();
    fillPattern(src.bytes.get() + loff, size, seed);
    ASSERT_EQ(cmd("poison dst"), "ok");
    Status s = conn_.write(src.region, loff, dst, roff, size).wait(30s);
    ASSERT_TRUE(s.ok()) << "size " << size << ": " << s.toString();
    EXPECT_EQ(cmd("check dst " + std::to_string(roff) + " " + std::to_string(size) + " " +
                  std::to_string(seed)),
              "ok")
        << "size " << size;
  }
}

TEST_P(TransferTest, UnsignaledWritesAreAllVisibleOnceFlushed) {
  // Hundreds of writes of 1..700 bytes with no Request each, covering the peer's region end to
  // end; one flush midway (not waited for) and one at the end: once both complete, every byte is
  // there and nothing outside the range was touched. (Sized for TSan over UCX tcp, where each
  // checked write is an active message answered by the target: about 130 writes/s there.)
  connect();
  const size_t cap = 256 * 1024;
  RemoteRegion dst = peerRegion("dst", cap, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, cap, kLocalOnly);
  fillPattern(src.bytes.get(), cap, 77);
  ASSERT_EQ(cmd("poison dst"), "ok");
  std::mt19937 rng(5);
  size_t off = 0, writes = 0;
  Request midway;
  while (off < cap - 700) {
    size_t len = 1 + rng() % 700;
    Status st = conn_.writeUnsignaled(src.region, off, dst, off, len);
    ASSERT_TRUE(st.ok()) << "write " << writes << ": " << st.toString();
    off += len;
    if (++writes == 300) midway = conn_.flush();
  }
  Request last = conn_.flush();
  Status m = midway.wait(30s), l = last.wait(30s);
  ASSERT_TRUE(m.ok()) << m.toString();
  ASSERT_TRUE(l.ok()) << l.toString();
  EXPECT_EQ(cmd("check dst 0 " + std::to_string(off) + " 77"), "ok") << writes << " writes";
  // Counted as writes in batches (one completion each), all the bytes.
  const EngineStats stats = engine_->stats();
  const OpStats& t = stats.connections.at(0).traffic.op(OpKind::kWrite);
  EXPECT_EQ(t.bytes, off);
  EXPECT_GE(t.operations, writes / 64);
  EXPECT_LT(t.operations, writes / 8) << "unsignaled writes were not batched";
}

TEST_P(TransferTest, UnsignaledWriteArgumentsAreCheckedBeforeAnythingIsPosted) {
  connect();
  RemoteRegion dst = peerRegion("dst", 4096, kRemoteWrite);
  RemoteRegion ro = peerRegion("ro", 4096, kRemoteRead);
  Buffer src = makeBuffer(*engine_, 4096, kLocalOnly);
  ASSERT_EQ(cmd("poison dst"), "ok");
  EXPECT_EQ(conn_.writeUnsignaled(src.region, 0, dst, 4000, 200).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(conn_.writeUnsignaled(src.region, 4000, dst, 0, 200).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(conn_.writeUnsignaled(src.region, 0, ro, 0, 8).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(conn_.writeUnsignaled(MemoryRegion(), 0, dst, 0, 8).code(),
            StatusCode::kInvalidArgument);
  Status f = conn_.flush().wait(10s);  // nothing gathered: completes at once
  EXPECT_TRUE(f.ok()) << f.toString();
  EXPECT_EQ(cmd("check dst 0 0 1"), "ok");  // all poison: nothing was written
  EXPECT_TRUE(conn_.status().ok()) << conn_.status().toString();
}

TEST_P(TransferTest, FlushReportsUnsignaledWritesDroppedWithTheirRegion) {
  // Writes gathered but not posted yet when their source region is destroyed are dropped (the
  // memory may be freed right after): the next flush says so, a flush made before (still in
  // flight then) does not, and the connection goes on.
  connect();
  RemoteRegion dst = peerRegion("dst", 4096, kRemoteWrite);
  ASSERT_EQ(cmd("poison dst"), "ok");
  Buffer src = makeBuffer(*engine_, 4096, kLocalOnly);
  fillPattern(src.bytes.get(), 4096, 9);
  for (size_t i = 0; i < 8; ++i)
    ASSERT_TRUE(conn_.writeUnsignaled(src.region, i * 8, dst, i * 8, 8).ok());
  Request before = conn_.flush();  // covers the 8 writes from `src`
  {
    Buffer tmp = makeBuffer(*engine_, 4096, kLocalOnly);
    for (size_t i = 0; i < 10; ++i)
      ASSERT_TRUE(conn_.writeUnsignaled(tmp.region, i * 8, dst, 1024 + i * 8, 8).ok());
  }
  Status b = before.wait(10s);
  EXPECT_TRUE(b.ok()) << "the flush before the drop: " << b.toString();
  Status f = conn_.flush().wait(10s);
  EXPECT_EQ(f.code(), StatusCode::kCancelled) << f.toString();
  // The first 64 bytes arrived; nothing of the dropped writes did (the rest is poison).
  EXPECT_EQ(cmd("check dst 0 64 9"), "ok");
  ASSERT_TRUE(conn_.writeUnsignaled(src.region, 0, dst, 0, 64).ok());
  Status again = conn_.flush().wait(10s);
  EXPECT_TRUE(again.ok()) << again.toString();
  EXPECT_TRUE(conn_.status().ok()) << conn_.status().toString();
}

TEST_P(TransferTest, ReadOddSizesAndOffsetsLandExactly) {
  connect();
  const size_t cap = (2u << 20);
  RemoteRegion src = peerRegion("src", cap, kRemoteRead);
  Buffer dst = makeBuffer(*engine_, cap, kLocalOnly);
  std::mt19937 rng(11);
  for (size_t size : kSizes) {
    size_t loff = rng() % (cap - size), roff = rng() % (cap - size);
    uint64_t seed = rng();
    ASSERT_EQ(cmd("fill src " + std::to_string(roff) + " " + std::to_string(size) + " " +
                  std::to_string(seed)),
              "ok");
    std::memset(dst.bytes.get(), kPoison, cap);
    Status s = conn_.read(dst.region, loff, src, roff, size).wait(30s);
    ASSERT_TRUE(s.ok()) << "size " << size << ": " << s.toString();
    EXPECT_EQ(checkPattern(dst.bytes.get() + loff, size, seed), "") << "size " << size;
    EXPECT_EQ(checkPoison(dst.bytes.get(), loff), "");
    EXPECT_EQ(checkPoison(dst.bytes.get() + loff + size, cap - loff - size), "");
  }
}

TEST_P(TransferTest, HugeWriteAndReadBack64MiB) {
  connect();
  const size_t n = 64u << 20;
  RemoteRegion remote = peerRegion("big", n, kRemoteReadWrite);
  auto src = engine_->allocate(n, kLocalOnly);
  ASSERT_TRUE(src.ok()) << src.status().toString();
  fillPattern(src->data(), n, 64);
  ASSERT_TRUE(conn_.write(*src, 0, remote, 0, n).wait(120s).ok());
  EXPECT_EQ(cmd("check big 0 " + std::to_string(n) + " 64"), "ok");
  Buffer back = makeBuffer(*engine_, n, kLocalOnly);
  ASSERT_TRUE(conn_.read(back.region, 0, remote, 0, n).wait(120s).ok());
  EXPECT_EQ(checkPattern(back.bytes.get(), n, 64), "");
}

TEST_P(TransferTest, PageSizedOpsAtRegionEdges) {
  connect();
  const size_t page = 4096, cap = 16 * page;
  RemoteRegion dst = peerRegion("dst", cap, kRemoteReadWrite);
  Buffer src = makeBuffer(*engine_, cap, kLocalOnly);
  fillPattern(src.bytes.get(), cap, 5);
  ASSERT_EQ(cmd("poison dst"), "ok");
  // The very first and very last page of the remote region.
  RmaOp ops[2] = {{&src.region, 0, &dst, 0, page},
                  {&src.region, cap - page, &dst, cap - page, page}};
  ASSERT_TRUE(conn_.writeBatch(ops).wait(30s).ok());
  Buffer back = makeBuffer(*engine_, cap, kLocalOnly);
  RmaOp rops[2] = {{&back.region, 0, &dst, 0, page},
                   {&back.region, cap - page, &dst, cap - page, page}};
  ASSERT_TRUE(conn_.readBatch(rops).wait(30s).ok());
  EXPECT_EQ(std::memcmp(back.bytes.get(), src.bytes.get(), page), 0);
  EXPECT_EQ(std::memcmp(back.bytes.get() + cap - page, src.bytes.get() + cap - page, page), 0);
  EXPECT_EQ(checkPoison(back.bytes.get() + page, cap - 2 * page), "")
      << "read touched bytes it should not";
}

TEST_P(TransferTest, ZeroLengthOperationsComplete) {
  connect();
  RemoteRegion dst = peerRegion("dst", 4096, kRemoteReadWrite);
  Buffer src = makeBuffer(*engine_, 4096, kLocalOnly);
  EXPECT_TRUE(conn_.write(src.region, 0, dst, 4096, 0).wait(10s).ok());
  EXPECT_TRUE(conn_.read(src.region, 4096, dst, 0, 0).wait(10s).ok());
  EXPECT_EQ(cmd("check dst 0 0 0"), "ok") << "a zero-length write changed the target";
}

TEST_P(TransferTest, BatchOf1000WritesCompletesOnce) {
  connect();
  const size_t each = 1021, n = 1000;
  RemoteRegion dst = peerRegion("dst", each * n + 64, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, each * n, kLocalOnly);
  fillPattern(src.bytes.get(), each * n, 1000);
  std::vector<RmaOp> ops;
  for (size_t i = 0; i < n; ++i) ops.push_back({&src.region, i * each, &dst, 32 + i * each, each});
  std::atomic<int> calls{0};
  Request r = conn_.writeBatch(ops);
  r.onComplete([&](const Status&) { calls++; });
  ASSERT_TRUE(r.wait(60s).ok());
  EXPECT_EQ(r.bytes(), each * n);
  EXPECT_EQ(cmd("check dst 32 " + std::to_string(each * n) + " 1000"), "ok");
  waitForCalls(calls, 1);
  EXPECT_EQ(calls.load(), 1);
}

TEST_P(TransferTest, BatchOf1000ReadsCompletesOnce) {
  connect();
  const size_t each = 509, n = 1000;
  RemoteRegion src = peerRegion("src", each * n, kRemoteRead);
  ASSERT_EQ(cmd("fill src 0 " + std::to_string(each * n) + " 77"), "ok");
  Buffer dst = makeBuffer(*engine_, each * n, kLocalOnly);
  std::vector<RmaOp> ops;
  for (size_t i = 0; i < n; ++i)
    ops.push_back({&dst.region, (n - 1 - i) * each, &src, (n - 1 - i) * each, each});
  ASSERT_TRUE(conn_.readBatch(ops).wait(60s).ok());
  EXPECT_EQ(checkPattern(dst.bytes.get(), each * n, 77), "");
}

TEST_P(TransferTest, NotificationArrivesAfterItsData) {
  connect();
  const size_t n = (256u << 10) + 3;
  RemoteRegion dst = peerRegion("dst", n, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, n, kLocalOnly);
  for (uint32_t round = 0; round < 5; ++round) {
    fillPattern(src.bytes.get(), n, 500 + round);
    peer_->pipe().send("waitnotify dst 0 " + std::to_string(n) + " " + std::to_string(500 + round));
    std::vector<RmaOp> ops = {{&src.region, 0, &dst, 0, n / 2},
                              {&src.region, n / 2, &dst, n / 2, n - n / 2}};
    ASSERT_TRUE(conn_.writeWithNotify(ops, 0xC0DE0000u + round).wait(30s).ok());
    auto reply = peer_->pipe().recv(30s);
    EXPECT_EQ(reply.value_or("none"), "notify " + std::to_string(0xC0DE0000u + round));
  }
}

TEST_P(TransferTest, ReadOfWrittenDataRoundTrips) {
  connect();
  const size_t n = 100003;
  RemoteRegion remote = peerRegion("rw", n, kRemoteReadWrite);
  Buffer a = makeBuffer(*engine_, n, kLocalOnly), b = makeBuffer(*engine_, n, kLocalOnly);
  fillPattern(a.bytes.get(), n, 3);
  ASSERT_TRUE(conn_.write(a.region, 0, remote, 0, n).wait(30s).ok());
  {
    Status rs = conn_.read(b.region, 0, remote, 0, n).wait(30s);
    ASSERT_TRUE(rs.ok()) << rs.toString();
  }
  EXPECT_EQ(std::memcmp(a.bytes.get(), b.bytes.get(), n), 0);
}

// ---------------------------------------------------------------- two-sided

TEST_P(TransferTest, SendsArriveInOrder) {
  connect();
  const size_t n = 200, cap = 4096 + 17;
  peer_->pipe().send("recvmsgs " + std::to_string(n) + " " + std::to_string(cap));
  Buffer tx = makeBuffer(*engine_, n * cap, kLocalOnly);
  std::vector<Request> reqs;
  for (size_t i = 0; i < n; ++i) {
    fillPattern(tx.bytes.get() + i * cap, msgLen(i, cap), 1000 + i);
    reqs.push_back(conn_.send(tx.region, i * cap, msgLen(i, cap)));
  }
  EXPECT_TRUE(waitAll(reqs, 60s).ok());
  EXPECT_EQ(peer_->pipe().recv(60s).value_or("none"), "ok");
}

TEST_P(TransferTest, SenderPastTheReceiversGrantWaitsForReceives) {
  // Flow control: with no receive posted on the peer, only the initial grant (16 messages) may
  // leave; the rest wait for CREDIT, then all arrive in order once the peer receives.
  connect();
  const size_t n = 100, cap = 1024;
  Buffer tx = makeBuffer(*engine_, n * cap, kLocalOnly);
  std::vector<Request> reqs;
  for (size_t i = 0; i < n; ++i) {
    fillPattern(tx.bytes.get() + i * cap, msgLen(i, cap), 1000 + i);
    reqs.push_back(conn_.send(tx.region, i * cap, msgLen(i, cap)));
  }
  std::this_thread::sleep_for(300ms);
  size_t done = 0;
  for (auto& r : reqs) done += r.done() ? 1 : 0;
  EXPECT_LE(done, 16u) << "sends went past the receiver's grant";
  for (size_t i = 16; i < n; ++i) EXPECT_FALSE(reqs[i].done()) << i;
  EXPECT_TRUE(conn_.status().ok()) << conn_.status().toString();
  EXPECT_EQ(cmd("recvmsgs " + std::to_string(n) + " " + std::to_string(cap)), "ok");
  EXPECT_TRUE(waitAll(reqs, 30s).ok());
}

TEST_P(TransferTest, ReceivesMatchPostedBuffersInOrder) {
  connect();
  const size_t n = 64, cap = conn_.maxMessageSize();
  Buffer rx = makeBuffer(*engine_, n * cap, kLocalOnly);
  std::vector<Request> reqs;
  // Half posted before the peer sends, half after (queued as unexpected meanwhile).
  for (size_t i = 0; i < n / 2; ++i) reqs.push_back(conn_.recv(rx.region, i * cap, cap));
  EXPECT_EQ(cmd("sendmsgs " + std::to_string(n) + " " + std::to_string(cap)), "ok");
  for (size_t i = n / 2; i < n; ++i) reqs.push_back(conn_.recv(rx.region, i * cap, cap));
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(reqs[i].wait(30s).ok()) << i;
    ASSERT_EQ(reqs[i].bytes(), msgLen(i, cap)) << "message " << i << " out of order";
    EXPECT_EQ(checkPattern(rx.bytes.get() + i * cap, msgLen(i, cap), 1000 + i), "") << i;
  }
}

TEST_P(TransferTest, MessagesSentBeforeThePeerClosesStayReadableAfterTheClose) {
  // The peer sends and closes at once. Like data before a TCP FIN, every message it sent must be
  // received, in order, whether the receive was posted before its BYE came or only after the
  // close was seen; the receive after the last message fails with the close. (Before the fix a
  // message that no receive had taken yet was dropped at the BYE: zcx_perf's server lost the
  // client's last control message in ~10% of runs under load.) Small (eager) and large
  // (rendezvous over UCX: held by the transport until fetched) messages.
  const size_t n = 8;
  for (size_t cap : {size_t{2048}, size_t{256} << 10}) {
    for (int round = 0; round < 5; ++round) {
      SCOPED_TRACE("cap " + std::to_string(cap) + " round " + std::to_string(round));
      connect();
      Buffer rx = makeBuffer(*engine_, (n + 1) * cap, kLocalOnly);
      std::vector<Request> reqs;
      for (size_t i = 0; i < n / 2; ++i) reqs.push_back(conn_.recv(rx.region, i * cap, cap));
      ASSERT_EQ(cmd("sendclose " + std::to_string(n) + " " + std::to_string(cap)), "ok");
      const auto until = std::chrono::steady_clock::now() + 20s;
      while (conn_.status().ok() && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(1ms);
      ASSERT_EQ(conn_.status().code(), StatusCode::kCancelled) << conn_.status().toString();
      for (size_t i = n / 2; i <= n; ++i) reqs.push_back(conn_.recv(rx.region, i * cap, cap));
      for (size_t i = 0; i < n; ++i) {
        Status s = reqs[i].wait(30s);
        ASSERT_TRUE(s.ok()) << "message " << i << ": " << s.toString();
        ASSERT_EQ(reqs[i].bytes(), msgLen(i, cap)) << "message " << i;
        EXPECT_EQ(checkPattern(rx.bytes.get() + i * cap, msgLen(i, cap), 1000 + i), "") << i;
      }
      EXPECT_EQ(reqs[n].wait(30s).code(), StatusCode::kCancelled) << "a receive past the end";
      conn_ = Connection();
    }
  }
}

uint64_t zeroCopyReceives(const Engine& engine) {
  uint64_t n = 0;
  for (const auto& c : engine.stats().connections) n += c.traffic.recv_zero_copy;
  return n;
}

TEST_P(TransferTest, LargeMessagesLandInPostedBuffersAndReceivesCompleteInOrder) {
  // Message lengths 1..64 KiB: over UCX the large ones travel by rendezvous and are fetched
  // straight into their posted buffer, the small ones are copied once; receives still complete
  // in the order the messages were sent, whichever finished landing first.
  connect();
  const size_t n = 96, cap = conn_.maxMessageSize();
  Buffer rx = makeBuffer(*engine_, n * cap, kLocalOnly);
  std::mutex mu;
  std::vector<size_t> order;
  std::vector<Request> reqs;
  for (size_t i = 0; i < n; ++i) {
    reqs.push_back(conn_.recv(rx.region, i * cap, cap));
    reqs.back().onComplete([&mu, &order, i](const Status&) {
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(i);
    });
  }
  EXPECT_EQ(cmd("sendmsgs " + std::to_string(n) + " " + std::to_string(cap)), "ok");
  for (size_t i = 0; i < n; ++i) {
    Status st = reqs[i].wait(30s);
    ASSERT_TRUE(st.ok()) << i << ": " << st.toString();
    ASSERT_EQ(reqs[i].bytes(), msgLen(i, cap)) << "message " << i << " out of order";
    EXPECT_EQ(checkPattern(rx.bytes.get() + i * cap, msgLen(i, cap), 1000 + i), "") << i;
  }
  // Callbacks run on the progress thread after completion: wait until all have run.
  for (int spin = 0; spin < 2000; ++spin) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (order.size() == n) break;
    }
    std::this_thread::sleep_for(1ms);
  }
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(order.size(), n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(order[i], i) << "receive completions out of order";
  if (GetParam().transport == "ucx") {
    // Every receive was posted before the peer sent: the rendezvous ones landed in place.
    EXPECT_GT(zeroCopyReceives(*engine_), 0u) << "no message was received without a copy";
  }
}

TEST_P(TransferTest, LargeMessagesSentBeforeAnyReceiveCompleteWithinTheGrant) {
  // No receive is posted while the peer sends: the sends still complete (they are within the
  // credit grant), the messages wait here, and later receives get them in order, bytes intact.
  // A buffer too small for a waiting message fails with kOutOfRange and loses nothing.
  connect();
  const size_t n = 12, cap = conn_.maxMessageSize();
  EXPECT_EQ(cmd("sendmsgs " + std::to_string(n) + " " + std::to_string(cap)), "ok");
  Buffer rx = makeBuffer(*engine_, n * cap, kLocalOnly);
  for (size_t i = 0; i < n; ++i) {
    if (msgLen(i, cap) > 1) {
      Status small = conn_.recv(rx.region, i * cap, msgLen(i, cap) - 1).wait(30s);
      EXPECT_EQ(small.code(), StatusCode::kOutOfRange) << i << ": " << small.toString();
    }
    Request r = conn_.recv(rx.region, i * cap, cap);
    Status st = r.wait(30s);
    ASSERT_TRUE(st.ok()) << i << ": " << st.toString();
    ASSERT_EQ(r.bytes(), msgLen(i, cap)) << "message " << i << " out of order";
    EXPECT_EQ(checkPattern(rx.bytes.get() + i * cap, msgLen(i, cap), 1000 + i), "") << i;
  }
  EXPECT_TRUE(conn_.status().ok()) << conn_.status().toString();
}

TEST_P(TransferTest, OversizeMessagesAreClearErrorsAndLoseNothing) {
  connect();
  size_t max = conn_.maxMessageSize();
  Buffer tx = makeBuffer(*engine_, max + 1, kLocalOnly);
  Status s = conn_.send(tx.region, 0, max + 1).wait(5s);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.toString();
  EXPECT_NE(s.message().find("limit"), std::string::npos) << s.message();
  // A receive buffer smaller than the message fails; the message waits for the next buffer.
  Buffer rx = makeBuffer(*engine_, 2 * max, kLocalOnly);
  Request small = conn_.recv(rx.region, 0, 10);
  Request big = conn_.recv(rx.region, max, max);
  EXPECT_EQ(cmd("sendmsgs 1 100"), "ok");  // message 0 has msgLen(0, .) = 1 byte: fits `small`
  ASSERT_TRUE(small.wait(10s).ok());
  EXPECT_EQ(small.bytes(), 1u);
  // Posted now: [big, small2]. Messages: 1 byte (-> big), 7920 bytes (too big for small2).
  Request small2 = conn_.recv(rx.region, 0, 10);
  EXPECT_EQ(cmd("sendmsgs 2 20000"), "ok");
  ASSERT_TRUE(big.wait(10s).ok());
  EXPECT_EQ(big.bytes(), 1u);
  Status st = small2.wait(10s);
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange) << st.toString();
  Request third = conn_.recv(rx.region, max, max);
  ASSERT_TRUE(third.wait(10s).ok());
  EXPECT_EQ(third.bytes(), msgLen(1, 20000));
  EXPECT_EQ(checkPattern(rx.bytes.get() + max, third.bytes(), 1001), "");
}

// ---------------------------------------------------------------- bad input

TEST_P(TransferTest, RemoteRangeOutOfBoundsPostsNothing) {
  connect();
  RemoteRegion dst = peerRegion("dst", 8192, kRemoteReadWrite);
  Buffer src = makeBuffer(*engine_, 16384, kLocalOnly, 0x11);
  for (auto [off, len] : std::vector<std::pair<size_t, size_t>>{
           {8192, 1}, {4096, 4097}, {0, 8193}, {SIZE_MAX - 1, 2}}) {
    Status s = conn_.write(src.region, 0, dst, off, len).wait(5s);
    EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << off << "+" << len << ": " << s.toString();
    EXPECT_NE(s.message().find("nothing was posted"), std::string::npos);
  }
  Status r = conn_.read(src.region, 16000, dst, 0, 1000).wait(5s);
  EXPECT_EQ(r.code(), StatusCode::kOutOfRange) << "local range past the end";
  EXPECT_EQ(cmd("check dst 0 0 0"), "ok") << "the peer region was touched";
  EXPECT_TRUE(conn_.status().ok()) << "a rejected op must not break the connection";
}

TEST_P(TransferTest, AccessRightsAreEnforcedBeforePosting) {
  connect();
  RemoteRegion ro = peerRegion("ro", 4096, kRemoteRead);
  RemoteRegion wo = peerRegion("wo", 4096, kRemoteWrite);
  Buffer b = makeBuffer(*engine_, 4096, kLocalOnly);
  EXPECT_EQ(conn_.write(b.region, 0, ro, 0, 16).wait(5s).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(conn_.read(b.region, 0, wo, 0, 16).wait(5s).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(cmd("check ro 0 0 0"), "ok");
}

TEST_P(TransferTest, UnknownRegionNameIsNotFound) {
  connect();
  auto r = conn_.remoteRegion("no-such-region", 5s);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status().toString();
  EXPECT_NE(r.status().message().find("expose"), std::string::npos);
}

TEST_P(TransferTest, RegionExposedAfterConnectIsFoundByLookup) {
  connect();
  RemoteRegion late = peerRegion("late", 12345, kRemoteWrite);  // exposed after the handshake
  EXPECT_EQ(late.size(), 12345u);
  Buffer src = makeBuffer(*engine_, 12345, kLocalOnly);
  fillPattern(src.bytes.get(), 12345, 9);
  ASSERT_TRUE(conn_.write(src.region, 0, late, 0, 12345).wait(30s).ok());
  EXPECT_EQ(cmd("check late 0 12345 9"), "ok");
}

TEST_P(TransferTest, CorruptedDescriptorBytesAreRejected) {
  connect();
  ASSERT_EQ(cmd("alloc d 4096 3"), "ok");
  auto good = conn_.remoteRegion("d");
  ASSERT_TRUE(good.ok());
  std::vector<uint8_t> bytes = good->descriptor().encode();
  ASSERT_TRUE(RegionDescriptor::decode(bytes).ok());
  for (size_t i = 0; i < bytes.size(); ++i) {
    auto bad = bytes;
    bad[i] ^= 0x40;
    auto d = RegionDescriptor::decode(bad);
    EXPECT_FALSE(d.ok()) << "flipping byte " << i << " went unnoticed";
  }
  for (size_t n : {size_t{0}, size_t{3}, bytes.size() - 1}) {
    EXPECT_EQ(RegionDescriptor::decode(std::span(bytes).first(n)).status().code(),
              StatusCode::kProtocolError);
  }
  RegionDescriptor other = good->descriptor();
  other.transport = "bogus";
  EXPECT_EQ(conn_.importRegion(other).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(TransferTest, MalformedHandshakeBytesDoNotHurtTheListener) {
  // Garbage, then a HELLO of a future protocol version, then a real connection.
  auto colon = peer_addr_.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::stoi(peer_addr_.substr(colon + 1))));
  ::inet_pton(AF_INET, peer_addr_.substr(0, colon).c_str(), &sa.sin_addr);
  {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    const char junk[] = "\x05\x00\x00\x00\x01GET / HTTP/1.0\r\n\r\n";
    ASSERT_GT(::write(fd, junk, sizeof(junk)), 0);
    ::close(fd);
  }
  {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    detail::Hello h;
    h.version = detail::kProtocolVersion + 1;
    h.transport = GetParam().transport;
    ASSERT_TRUE(detail::writeFrame(fd, detail::FrameType::kHello, detail::encode(h),
                                   detail::Clock::now() + 2s)
                    .ok());
    auto f = detail::readFrame(fd, detail::Clock::now() + 5s);
    ASSERT_TRUE(f.ok()) << f.status().toString();
    ASSERT_EQ(f->type, detail::FrameType::kReject);
    auto rej = detail::decodeReject(f->body);
    ASSERT_TRUE(rej.ok());
    EXPECT_EQ(static_cast<StatusCode>(rej->code), StatusCode::kVersionMismatch) << rej->reason;
    ::close(fd);
  }
  connect();  // the listener still serves real peers
  RemoteRegion dst = peerRegion("dst", 64, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, 64, kLocalOnly);
  fillPattern(src.bytes.get(), 64, 1);
  EXPECT_TRUE(conn_.write(src.region, 0, dst, 0, 64).wait(10s).ok());
  EXPECT_EQ(cmd("check dst 0 64 1"), "ok");
}

TEST_P(TransferTest, ConnectToClosedPortFailsFast) {
  // A port that was just free: bind, read the port, close.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
  socklen_t len = sizeof(sa);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  ::close(fd);
  auto start = detail::Clock::now();
  auto c = engine_->connect("127.0.0.1:" + std::to_string(ntohs(sa.sin_port)));
  auto took = detail::Clock::now() - start;
  EXPECT_EQ(c.status().code(), StatusCode::kConnectionRefused) << c.status().toString();
  EXPECT_LT(took, 1s);
  auto u = engine_->connect("no-such-host.invalid:1234");
  EXPECT_EQ(u.status().code(), StatusCode::kNotFound) << u.status().toString();
  EXPECT_EQ(engine_->connect("127.0.0.1").status().code(), StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- failures and the completion
// contract

TEST_P(TransferTest, PeerKilledMidTransferFailsEveryOutstandingOperation) {
  connect();
  const size_t n = 1u << 20;
  RemoteRegion dst = peerRegion("dst", n, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, n, kLocalOnly, 0x22);
  std::vector<Request> reqs;
  for (int i = 0; i < 64; ++i) reqs.push_back(conn_.write(src.region, 0, dst, 0, n));
  peer_->kill(SIGKILL);
  ASSERT_EQ(peer_->join(10s), 128 + SIGKILL);
  auto start = detail::Clock::now();
  for (auto& r : reqs) {
    Status s = r.wait(15s);
    EXPECT_NE(s.code(), StatusCode::kStillInFlight)
        << "an operation hung after the peer died: " << s.toString();
    EXPECT_NE(s.code(), StatusCode::kTimedOut)
        << "an operation waited for its deadline after the peer died: " << s.toString();
    if (!s.ok()) {
      EXPECT_TRUE(s.code() == StatusCode::kConnectionBroken || s.code() == StatusCode::kCancelled)
          << s.toString();
    }
  }
  EXPECT_LT(detail::Clock::now() - start, 15s);
  // The connection knows, and new operations fail at once.
  auto until = detail::Clock::now() + 10s;
  while (conn_.status().ok() && detail::Clock::now() < until) std::this_thread::sleep_for(5ms);
  EXPECT_FALSE(conn_.status().ok());
  Status after = conn_.write(src.region, 0, dst, 0, 8).wait(5s);
  EXPECT_FALSE(after.ok());
  EXPECT_NE(after.code(), StatusCode::kStillInFlight);
  EXPECT_NE(after.code(), StatusCode::kTimedOut);
  peer_.reset();
}

TEST_P(TransferTest, CloseCancelsOutstandingOperationsExactlyOnce) {
  connect();
  const size_t n = 1u << 20;
  RemoteRegion dst = peerRegion("dst", n, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, n, kLocalOnly);
  std::vector<Request> reqs;
  std::atomic<int> calls{0};
  for (int i = 0; i < 32; ++i) {
    reqs.push_back(conn_.write(src.region, 0, dst, 0, n));
    reqs.back().onComplete([&](const Status&) { calls++; });
  }
  Buffer rx = makeBuffer(*engine_, 64, kLocalOnly);
  Request pending_recv = conn_.recv(rx.region, 0, 64);
  conn_.close();
  for (auto& r : reqs) {
    Status s = r.wait(5s);
    EXPECT_TRUE(s.ok() || s.code() == StatusCode::kCancelled) << s.toString();
  }
  EXPECT_EQ(pending_recv.wait(5s).code(), StatusCode::kCancelled);
  // Callbacks run on the progress thread after close() returned (never inside it), so they may
  // trail the waits: each must come, once.
  waitForCalls(calls, 32);
  EXPECT_EQ(calls.load(), 32);
  EXPECT_EQ(conn_.write(src.region, 0, dst, 0, 8).wait(5s).code(), StatusCode::kCancelled);
}

TEST_P(TransferTest, CompletionContractHoldsForSuccessAndError) {
  connect();
  RemoteRegion dst = peerRegion("dst", 4096, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, 4096, kLocalOnly);
  // Success: test() without blocking, wait(), one callback; a late onComplete runs at once.
  Request ok = conn_.write(src.region, 0, dst, 0, 4096);
  std::atomic<int> calls{0};
  ok.onComplete([&](const Status& s) {
    EXPECT_TRUE(s.ok());
    calls++;
  });
  ASSERT_TRUE(ok.wait(10s).ok());
  ASSERT_TRUE(ok.test().has_value());
  waitForCalls(calls, 1);
  EXPECT_EQ(calls.load(), 1);
  // A callback attached after completion runs too, once, and also on a progress thread.
  std::atomic<int> late_calls{0};
  std::atomic<bool> late_inline{false};
  const auto me = std::this_thread::get_id();
  ok.onComplete([&](const Status& s) {
    EXPECT_TRUE(s.ok());
    late_inline = std::this_thread::get_id() == me;
    late_calls++;
  });
  auto until = detail::Clock::now() + 5s;
  while (late_calls.load() == 0 && detail::Clock::now() < until) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(late_calls.load(), 1);
  EXPECT_FALSE(late_inline.load()) << "a late onComplete ran on the caller's thread";
  // Error found before posting: same path, same contract.
  Request bad = conn_.write(src.region, 0, dst, 1, 4096);
  std::atomic<int> bad_calls{0};
  bad.onComplete([&](const Status& s) {
    EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
    bad_calls++;
  });
  EXPECT_EQ(bad.wait(1s).code(), StatusCode::kOutOfRange);
  until = detail::Clock::now() + 5s;
  while (bad_calls.load() == 0 && detail::Clock::now() < until) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(10ms);
  EXPECT_EQ(bad_calls.load(), 1);
  // Waiting on an empty request is an error, not a crash or a hang.
  EXPECT_EQ(Request().wait(10ms).code(), StatusCode::kInvalidArgument);
}

TEST_P(TransferTest, StalledPeerHitsTheDeadlineNotAHang) {
  EngineOptions o = optionsFor(GetParam(), false);
  o.operation_timeout = 700ms;
  ASSERT_NO_FATAL_FAILURE(connectWith(o));
  const size_t n = 8u << 20;
  RemoteRegion dst = peerRegion("dst", n, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, n, kLocalOnly);
  peer_->kill(SIGSTOP);  // the peer stops progressing (and answering) but stays connected
  std::vector<Request> reqs;
  for (int i = 0; i < 8; ++i) reqs.push_back(conn_.write(src.region, 0, dst, 0, n));
  auto start = detail::Clock::now();
  bool timed_out = false;
  for (auto& r : reqs) {
    Status s = r.wait(5s);
    ASSERT_TRUE(r.done()) << "operation outlived its 700 ms deadline by seconds";
    timed_out |= s.code() == StatusCode::kTimedOut;
  }
  EXPECT_LT(detail::Clock::now() - start, 3s);
  if (timed_out) {
    EXPECT_FALSE(conn_.status().ok()) << "a timed-out connection must be closed";
  }
  peer_->kill(SIGCONT);
}

TEST_P(TransferTest, ManualProgressModeMovesData) {
  EngineOptions o = optionsFor(GetParam(), false);
  o.progress = ProgressMode::kManual;
  ASSERT_NO_FATAL_FAILURE(connectWith(o));
  const size_t n = 300001;
  RemoteRegion dst = peerRegion("dst", n, kRemoteReadWrite);
  Buffer src = makeBuffer(*engine_, n, kLocalOnly), back = makeBuffer(*engine_, n, kLocalOnly);
  fillPattern(src.bytes.get(), n, 31);
  Request w = conn_.write(src.region, 0, dst, 0, n);
  while (!w.test().has_value()) {
  }
  ASSERT_TRUE(w.wait(1s).ok());
  ASSERT_TRUE(conn_.read(back.region, 0, dst, 0, n).wait(30s).ok());
  EXPECT_EQ(std::memcmp(src.bytes.get(), back.bytes.get(), n), 0);
  EXPECT_EQ(cmd("check dst 0 " + std::to_string(n) + " 31"), "ok");
}

// CPU time of the calling thread (manual progress runs on it, nothing else of ours does).
std::chrono::nanoseconds threadCpuTime() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

TEST_P(TransferTest, ManualProgressWaitSleepsAndWakesWhenTheMessageArrives) {
  EngineOptions o = optionsFor(GetParam(), false);
  o.progress = ProgressMode::kManual;
  ASSERT_NO_FATAL_FAILURE(connectWith(o));
  const size_t cap = 4096;
  Buffer rx = makeBuffer(*engine_, cap, kLocalOnly);
  Request r = conn_.recv(rx.region, 0, cap);
  // Nothing arrives for 400 ms: the waiter drives progress itself but must sleep on the
  // transport's fd after a short spin, not burn its core (a spinning waiter uses ~100%).
  auto cpu0 = threadCpuTime();
  auto wall0 = std::chrono::steady_clock::now();
  EXPECT_EQ(r.wait(400ms).code(), StatusCode::kStillInFlight);
  auto wall = std::chrono::steady_clock::now() - wall0;
  auto cpu = threadCpuTime() - cpu0;
  EXPECT_GE(wall, 400ms);
  EXPECT_LT(cpu * 5, wall) << "the waiting thread used "
                           << std::chrono::duration_cast<std::chrono::milliseconds>(cpu).count()
                           << " ms of CPU in "
                           << std::chrono::duration_cast<std::chrono::milliseconds>(wall).count()
                           << " ms of waiting";
  // The peer sends while we sleep: the fd (or the 1 ms bound) wakes the waiter.
  peer_->pipe().send("sendmsgs 1 " + std::to_string(cap));
  ASSERT_TRUE(r.wait(20s).ok());
  EXPECT_EQ(r.bytes(), msgLen(0, cap));
  EXPECT_EQ(checkPattern(rx.bytes.get(), r.bytes(), 1000), "");
  EXPECT_EQ(peer_->pipe().recv(30s).value_or("no answer"), "ok");
}

// A client of ManyClientsOnOneListener: writes stripe k of the listener's region.
ZCX_TEST_PEER(stripeWriter) {
  const TransportParam param = paramNamed(args.at(0));
  size_t k = std::stoul(args.at(1)), stripe = std::stoul(args.at(2));
  auto addr = pipe.recv(30s);
  if (!addr) return 10;
  auto e = Engine::create(optionsFor(param, false));
  if (!e.ok()) return 11;
  auto c = (*e)->connect(*addr);
  if (!c.ok()) return 12;
  auto r = c->remoteRegion("stripes");
  if (!r.ok()) return 13;
  Buffer b = makeBuffer(**e, stripe, kLocalOnly);
  fillPattern(b.bytes.get(), stripe, 40 + k);
  if (!c->write(b.region, 0, *r, k * stripe, stripe).wait(30s).ok()) return 14;
  pipe.send("done");
  return pipe.recv(30s) ? 0 : 15;
}

TEST_P(TransferTest, ManyClientsOnOneListener) {
  // This process listens; three forked clients write their own stripes into one region.
  EngineOptions o = optionsFor(GetParam(), true);
  engine_.reset();
  const size_t stripe = 100000, clients = 3;
  std::vector<std::unique_ptr<PeerProcess>> kids;
  Pipe* pipes[clients];
  for (size_t k = 0; k < clients; ++k) {
    kids.push_back(std::make_unique<PeerProcess>(
        "stripeWriter",
        std::vector<std::string>{GetParam().name, std::to_string(k), std::to_string(stripe)}));
    pipes[k] = &kids.back()->pipe();
  }
  auto e = Engine::create(o);
  ASSERT_TRUE(e.ok()) << e.status().toString();
  engine_ = std::move(*e);
  Buffer target = makeBuffer(*engine_, stripe * clients, kRemoteWrite);
  ASSERT_TRUE(engine_->expose("stripes", target.region).ok());
  std::vector<Connection> accepted;
  for (size_t k = 0; k < clients; ++k) pipes[k]->send(engine_->listenAddress());
  for (size_t k = 0; k < clients; ++k) {
    auto c = engine_->accept(30s);
    ASSERT_TRUE(c.ok()) << "accept " << k << ": " << c.status().toString();
    accepted.push_back(std::move(*c));
  }
  for (size_t k = 0; k < clients; ++k)
    ASSERT_EQ(pipes[k]->recv(60s).value_or("none"), "done") << "client " << k;
  for (size_t k = 0; k < clients; ++k) {
    EXPECT_EQ(checkPattern(target.bytes.get() + k * stripe, stripe, 40 + k), "") << "stripe " << k;
    pipes[k]->send("bye");
    EXPECT_EQ(kids[k]->join(30s), 0) << "client " << k;
  }
}

TEST_P(TransferTest, RevokedRegionIsNotFoundAnymore) {
  connect();
  ASSERT_EQ(cmd("alloc gone 4096 3"), "ok");
  ASSERT_EQ(cmd("free gone"), "ok");  // deregistered: its name goes with it
  auto r = conn_.remoteRegion("gone", 5s);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status().toString();
}

std::string paramName(const ::testing::TestParamInfo<TransportParam>& info) {
  return info.param.name;
}

// ---------------------------------------------------------------- lifetimes and threading

thread_local bool tls_inside_close = false;

TEST_P(TransferTest, CallbacksNeverRunInsideThePostingCall) {
  // A user who holds their own mutex around write() and close() while the callbacks take the
  // same mutex must not deadlock: callbacks run on the progress thread, never inside the call.
  connect();
  const size_t n = 1u << 20;
  RemoteRegion dst = peerRegion("dst", n, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, n, kLocalOnly);
  std::mutex user_mu;
  std::atomic<int> calls{0}, inline_calls{0}, same_thread{0};
  const auto poster = std::this_thread::get_id();
  std::vector<Request> reqs;
  {
    std::lock_guard<std::mutex> hold(user_mu);
    for (int i = 0; i < 16; ++i) {
      reqs.push_back(conn_.write(src.region, 0, dst, 0, n));
      reqs.back().onComplete([&](const Status&) {
        if (tls_inside_close) inline_calls++;
        if (std::this_thread::get_id() == poster) same_thread++;
        { std::lock_guard<std::mutex> lock(user_mu); }  // the mutex the poster holds
        calls++;  // the last touch of the test's state: it may return right after
      });
    }
    tls_inside_close = true;
    conn_.close();  // completes every outstanding write
    tls_inside_close = false;
    EXPECT_EQ(calls.load(), 0) << "a callback ran while the poster held its mutex";
  }
  for (auto& r : reqs) EXPECT_NE(r.wait(10s).code(), StatusCode::kStillInFlight);
  auto until = detail::Clock::now() + 10s;
  while (calls.load() < 16 && detail::Clock::now() < until) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(calls.load(), 16);
  EXPECT_EQ(inline_calls.load(), 0) << "callbacks ran inside close()";
  EXPECT_EQ(same_thread.load(), 0) << "callbacks ran on the posting thread";
}

TEST_P(TransferTest, WaitThatRunsOutIsNotTheOperationTimingOut) {
  EngineOptions o = optionsFor(GetParam(), false);
  o.operation_timeout = 800ms;
  ASSERT_NO_FATAL_FAILURE(connectWith(o));
  const size_t n = 8u << 20;
  RemoteRegion dst = peerRegion("dst", n, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, n, kLocalOnly);
  peer_->kill(SIGSTOP);  // over UCX nothing completes until the operation's own deadline
  // Over verbs the NIC completes writes without the target's process (below), so only their
  // amount keeps the last one in flight past the 20 ms wait: 512 MiB there. 32 MiB was not
  // enough: two soft-RoCE rails in one guest move data in bursts of about 1 GB/s (zcx_perf
  // write_bw 8 MiB, peak over 10 ms windows, --verify ok), and the last of four 8 MiB writes then
  // completed within 19 ms in 9 of 30 runs.
  const int writes = GetParam().transport == "ucx" ? 4 : 64;
  std::vector<Request> reqs;
  for (int i = 0; i < writes; ++i) reqs.push_back(conn_.write(src.region, 0, dst, 0, n));
  Status early = reqs.back().wait(20ms);
  EXPECT_EQ(early.code(), StatusCode::kStillInFlight) << early.toString();
  EXPECT_FALSE(reqs.back().done()) << "still in flight means not complete";
  bool timed_out = false;
  for (auto& r : reqs) {
    Status s = r.wait(10s);
    EXPECT_NE(s.code(), StatusCode::kStillInFlight) << "outlived its 800 ms deadline by seconds";
    timed_out |= s.code() == StatusCode::kTimedOut;
  }
  // Over UCX the target's process does the RMA (tcp: zcx's checked RMA; shm: UCX's put handler
  // behind its shared-memory FIFO), so a stopped peer stalls the writes: over tcp its kernel may
  // still take some data, but at least the last write cannot have been acknowledged. Over verbs
  // the NIC (soft-RoCE: the guest's kernel) completes writes without the target's process:
  // which of the 512 MiB finish before the 800 ms deadline is only a matter of link speed, so
  // there only the rest of the contract above is checked.
  if (GetParam().transport == "ucx") {
    EXPECT_TRUE(timed_out);
  }
  peer_->kill(SIGCONT);
}

TEST_P(TransferTest, RemoteRegionOfAnEarlierConnectionIsRejectedClearly) {
  connect();
  RemoteRegion old_region = peerRegion("dst", 4096, kRemoteWrite);
  Buffer src = makeBuffer(*engine_, 4096, kLocalOnly);
  ASSERT_TRUE(conn_.write(src.region, 0, old_region, 0, 4096).wait(10s).ok());
  conn_.close();
  Status on_closed = conn_.write(src.region, 0, old_region, 0, 8).wait(5s);
  EXPECT_FALSE(on_closed.ok());
  EXPECT_NE(on_closed.code(), StatusCode::kStillInFlight);
  conn_ = Connection();
  connect();  // a new connection, possibly at the same address as the old one
  Status stale = conn_.write(src.region, 0, old_region, 0, 8).wait(5s);
  EXPECT_EQ(stale.code(), StatusCode::kInvalidArgument) << stale.toString();
  EXPECT_NE(stale.message().find("earlier connection"), std::string::npos) << stale.toString();
  auto fresh = conn_.remoteRegion("dst");
  ASSERT_TRUE(fresh.ok()) << fresh.status().toString();
  fillPattern(src.bytes.get(), 4096, 77);
  ASSERT_TRUE(conn_.write(src.region, 0, *fresh, 0, 4096).wait(10s).ok());
  EXPECT_EQ(cmd("check dst 0 4096 77"), "ok");
}

TEST_P(TransferTest, DestroyingARegionWithOperationsInFlightCancelsThemFirst) {
  connect();
  const size_t n = 4u << 20;
  RemoteRegion dst = peerRegion("dst", n, kRemoteWrite);
  // A posted receive into a region that goes away completes kCancelled; the connection stays.
  {
    Buffer rx = makeBuffer(*engine_, 64, kLocalOnly);
    Request r = conn_.recv(rx.region, 0, 64);
    rx.region = MemoryRegion();  // the last handle: returns once nothing uses the buffer
    rx.bytes.reset();            // so freeing the memory right after is safe
    EXPECT_EQ(r.wait(5s).code(), StatusCode::kCancelled);
    EXPECT_TRUE(conn_.status().ok()) << conn_.status().toString();
  }
  // Writes in flight from a region that goes away: each completes exactly once, the region's
  // memory is not touched after the destructor returns (ASan would see it).
  Buffer src = makeBuffer(*engine_, n, kLocalOnly, 0x5a);
  std::vector<Request> reqs;
  std::atomic<int> calls{0};
  for (int i = 0; i < 16; ++i) {
    reqs.push_back(conn_.write(src.region, 0, dst, 0, n));
    reqs.back().onComplete([&](const Status&) { calls++; });
  }
  src.region = MemoryRegion();
  src.bytes.reset();
  for (auto& r : reqs) {
    Status s = r.wait(10s);
    EXPECT_TRUE(s.ok() || s.code() == StatusCode::kCancelled) << s.toString();
  }
  auto until = detail::Clock::now() + 5s;
  while (calls.load() < 16 && detail::Clock::now() < until) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(calls.load(), 16);
  // If any write was still in flight its connection was closed (it cannot be recalled); a new
  // connection works either way.
  if (!conn_.status().ok()) {
    EXPECT_EQ(conn_.status().code(), StatusCode::kCancelled) << conn_.status().toString();
    conn_ = Connection();
    connect();
    dst = *conn_.remoteRegion("dst");
  }
  Buffer again = makeBuffer(*engine_, 4096, kLocalOnly);
  fillPattern(again.bytes.get(), 4096, 78);
  ASSERT_TRUE(conn_.write(again.region, 0, dst, 0, 4096).wait(10s).ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, TransferTest, ::testing::ValuesIn(transportsHere()),
                         paramName);

}  // namespace
}  // namespace zcx::test

int main(int argc, char** argv) {
  int server = zcx::test::runPeerServerIfAsked(argc, argv);  // peers for another machine's tests
  if (server >= 0) return server;
  int peer = zcx::test::runPeerIfAsked(argc, argv);
  if (peer >= 0) return peer;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

// The fault suite (ctest label "faults"): peers killed mid-transfer, listeners restarted, links cut
// and packets dropped between network namespaces, and a soak with random kills. Every case moves
// real bytes, counts every operation it posts and every completion, and checks that each one
// completes (never still in flight past its deadline) with an error that says why.
//
// With ZCX_RELIABILITY_OUT=path each case appends one tab-separated row per run to that file:
//   fault  transport  tried  posted  ok  error  lost  hangs  crashes  slowest_ms
// scripts/reliability-report.sh turns those rows into the table in docs/RELIABILITY.md.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "peer_process.h"
#include "zcx/zcx.h"

namespace zcx::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- transports

struct TransportParam {
  std::string name;  ///< tcp, shm, or veth (tcp over a veth pair between namespaces)
  std::map<std::string, std::string> params;
  std::string host;  ///< the address a listener binds
};

/// The transport of a peer from its arguments: NAME [HOST DEVICE].
TransportParam paramNamed(const std::string& name, const std::string& host = "",
                          const std::string& device = "") {
  if (name == "shm") return {"shm", {{"ucx.tls", "posix,cma,self"}}, "127.0.0.1"};
  if (name == "veth") return {"veth", {{"ucx.tls", "tcp"}, {"ucx.net_devices", device}}, host};
  return {"tcp", {{"ucx.tls", "tcp,self"}, {"ucx.net_devices", "lo"}}, "127.0.0.1"};
}

EngineOptions optionsFor(const TransportParam& p, const std::string& listen,
                         std::chrono::milliseconds op_timeout) {
  EngineOptions o;
  o.transport = "ucx";
  o.transport_params = p.params;
  o.listen_address = listen;
  o.connect_timeout = 10s;
  o.operation_timeout = op_timeout;
  // The control socket's keepalive notices a silent peer within the same bound, also when no
  // operation is in flight to time out (only receives posted).
  o.peer_timeout = op_timeout;
  o.max_message_size = 64 * 1024;
  return o;
}

struct Buffer {
  std::unique_ptr<uint8_t[]> bytes;
  MemoryRegion region;  // declared after bytes: deregistered before they are freed
};

Buffer makeBuffer(Engine& e, size_t n, uint32_t access, uint8_t fill = kPoison) {
  Buffer b;
  b.bytes.reset(new uint8_t[n]);
  std::memset(b.bytes.get(), fill, n);
  auto r = e.registerMemory(b.bytes.get(), n, access);
  if (r.ok()) b.region = std::move(*r);
  return b;
}

bool isConnectionError(const Status& s) {
  return s.code() == StatusCode::kConnectionBroken || s.code() == StatusCode::kCancelled ||
         s.code() == StatusCode::kTimedOut;
}

// ---------------------------------------------------------------- counting completions

/// Every request posted goes through track(): its completion is counted by its callback, once.
/// `ops` weighs a request by the operations it carries (a batch of 32 writes: 32).
struct Tally {
  struct Shared {
    std::atomic<uint64_t> completed{0}, ok{0}, error{0};
    std::atomic<uint64_t> ops_completed{0}, ops_ok{0}, ops_error{0};
    std::atomic<int64_t> last_completion_ns{0};
    std::mutex mu;
    std::condition_variable cv;
    std::map<std::string, uint64_t> codes;  ///< error code -> count
    std::string first_error;
  };
  std::shared_ptr<Shared> s = std::make_shared<Shared>();
  uint64_t posted = 0, ops_posted = 0;

  void track(Request& r, uint64_t ops = 1) {
    ++posted;
    ops_posted += ops;
    auto sh = s;
    r.onComplete([sh, ops](const Status& st) {
      {
        std::lock_guard<std::mutex> lock(sh->mu);
        if (!st.ok()) {
          sh->codes[std::string(statusCodeName(st.code()))]++;
          if (sh->first_error.empty()) sh->first_error = st.toString();
        }
        (st.ok() ? sh->ok : sh->error)++;
        (st.ok() ? sh->ops_ok : sh->ops_error) += ops;
        sh->ops_completed += ops;
        sh->last_completion_ns = Clock::now().time_since_epoch().count();
        sh->completed++;
      }
      sh->cv.notify_all();
    });
  }
  std::string codes() const {
    std::lock_guard<std::mutex> lock(s->mu);
    std::string out;
    for (auto& [c, n] : s->codes) out += (out.empty() ? "" : ",") + c + "=" + std::to_string(n);
    return out.empty() ? "none" : out;
  }
  /// Milliseconds from `t` to the last completion seen (-1: none).
  long long lastCompletionAfter(Clock::time_point t) const {
    if (s->last_completion_ns.load() == 0) return -1;  // nothing completed
    Clock::time_point last{Clock::duration(s->last_completion_ns.load())};
    return std::chrono::duration_cast<std::chrono::milliseconds>(last - t).count();
  }
};

/// Waits for every request until `deadline`; returns how many were still in flight then (hangs).
uint64_t waitUntil(std::vector<Request>& reqs, Clock::time_point deadline) {
  uint64_t hangs = 0;
  for (auto& r : reqs) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    Status s = r.wait(std::max(left, std::chrono::milliseconds(1)));
    if (s.code() == StatusCode::kStillInFlight) ++hangs;
  }
  return hangs;
}

/// The callbacks run on the progress thread just after wait() returns: give them a moment.
void settle(const Tally& t) {
  auto until = Clock::now() + 5s;
  while (t.s->completed.load() < t.posted && Clock::now() < until) std::this_thread::sleep_for(1ms);
}

// ---------------------------------------------------------------- the reliability table

const std::string kFaultTargetKilled = "peer SIGKILLed: target of our write/read/send/recv";
const std::string kFaultInitiatorKilled = "peer SIGKILLed: initiator writing/sending to us";
const std::string kFaultListenerRestart = "listener restarted on the same port, client reconnects";
const std::string kFaultSoak = "soak: 64 connections, listeners SIGKILLed and restarted";
const std::string kFaultLinkDown = "link down under load (veth between namespaces)";
const std::string kFaultLoss = "100% packet loss under load (nftables drop on veth)";

struct Row {
  std::string fault, transport;
  uint64_t tried = 1, posted = 0, ok = 0, error = 0, lost = 0, hangs = 0, crashes = 0;
  long long slowest_ms = 0;  ///< fault to last completion (or -1 if not applicable)
};

void record(const Row& r) {
  const char* path = std::getenv("ZCX_RELIABILITY_OUT");
  if (!path || !*path) return;
  std::ofstream out(path, std::ios::app);
  out << r.fault << '\t' << r.transport << '\t' << r.tried << '\t' << r.posted << '\t' << r.ok
      << '\t' << r.error << '\t' << r.lost << '\t' << r.hangs << '\t' << r.crashes << '\t'
      << r.slowest_ms << '\n';
}

/// Marks the start of a run: a start without its row is a run that died or failed an assertion
/// before it could count (the report lists those with ctest's verdict).
void started(const std::string& fault, const std::string& transport) {
  const char* path = std::getenv("ZCX_RELIABILITY_OUT");
  if (!path || !*path) return;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::ofstream out(path, std::ios::app);
  out << "#start\t" << info->test_suite_name() << "." << info->name() << '\t' << fault << '\t'
      << transport << '\n';
}

Row rowOf(const std::string& fault, const std::string& transport, const Tally& t, uint64_t hangs) {
  Row r;
  r.fault = fault;
  r.transport = transport;
  r.posted = t.posted;
  r.ok = t.s->ok.load();
  r.error = t.s->error.load();
  r.lost = t.posted - t.s->completed.load();
  r.hangs = hangs;
  return r;
}

// ---------------------------------------------------------------- the echo server (a peer)

constexpr size_t kDstSize = 1u << 20;  ///< "dst": read/write target
constexpr size_t kRoSize = 64u << 10;  ///< "ro": read-only, pattern kRoSeed
constexpr uint64_t kRoSeed = 4242;
constexpr size_t kEchoSlots = 8;        ///< receives posted per connection
constexpr size_t kEchoCap = 16u << 10;  ///< their capacity

/// One accepted connection: receives posted in every slot, each message sent back as it came.
struct EchoConn {
  Connection conn;
  Buffer buf;
  std::vector<Request> rx, tx;
  std::deque<size_t> order;  ///< slots with a receive posted, in posting order
};

/// Listens (args: transport [host device] listen_address), exposes "dst" and "ro", accepts every
/// connection, echoes every message; commands on the pipe: "check OFF LEN SEED" (pattern in dst),
/// "exit". Says "addr host:port" once listening.
ZCX_TEST_PEER(echoServer) {
  const TransportParam tp = paramNamed(args.at(0), args.at(1), args.at(2));
  auto engine = Engine::create(optionsFor(tp, args.at(3), 10s));
  if (!engine.ok()) {
    pipe.send("error " + engine.status().toString());
    return 1;
  }
  Engine& e = **engine;
  Buffer dst = makeBuffer(e, kDstSize, kRemoteReadWrite);
  Buffer ro = makeBuffer(e, kRoSize, kRemoteRead);
  fillPattern(ro.bytes.get(), kRoSize, kRoSeed);
  if (!e.expose("dst", dst.region).ok() || !e.expose("ro", ro.region).ok()) return 3;

  // Shared with the callbacks: requests cancelled while the engine shuts down complete on its
  // progress thread after this function's locals are gone.
  struct Wake {
    std::mutex mu;
    std::condition_variable cv;
    bool wake = false;
  };
  auto shared = std::make_shared<Wake>();
  std::mutex& mu = shared->mu;
  std::condition_variable& cv = shared->cv;
  bool& wake = shared->wake;
  auto notify = [shared](const Status&) {
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->wake = true;
    }
    shared->cv.notify_one();
  };
  std::atomic<bool> stop{false};
  std::vector<Connection> fresh;
  std::thread acceptor([&] {
    while (!stop) {
      auto c = e.accept(200ms);
      if (!c.ok()) continue;
      std::lock_guard<std::mutex> lock(mu);
      fresh.push_back(std::move(*c));
      wake = true;
      cv.notify_one();
    }
  });
  pipe.send("addr " + e.listenAddress());

  std::deque<EchoConn> conns;
  int rc = 0;
  for (;;) {
    pollfd p{pipe.fd(), POLLIN, 0};
    if (::poll(&p, 1, 0) > 0) {
      auto line = pipe.recv(1s);
      if (!line) {  // the test went away
        rc = 2;
        break;
      }
      auto w = words(*line);
      if (!w.empty() && w[0] == "exit") break;
      if (w.size() == 4 && w[0] == "check") {
        auto num = [&](size_t i) { return std::strtoull(w[i].c_str(), nullptr, 10); };
        std::string bad = checkPattern(dst.bytes.get() + num(1), num(2), num(3));
        pipe.send(bad.empty() ? "ok" : "bad " + bad);
      }
    }
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, 10ms, [&] { return wake; });
      wake = false;
      for (auto& c : fresh) {
        EchoConn ec;
        ec.conn = std::move(c);
        conns.push_back(std::move(ec));
      }
      fresh.clear();
    }
    for (auto it = conns.begin(); it != conns.end();) {
      EchoConn& ec = *it;
      auto postRecv = [&](size_t k) {
        ec.rx[k] = ec.conn.recv(ec.buf.region, k * kEchoCap, kEchoCap);
        ec.rx[k].onComplete(notify);
        ec.order.push_back(k);
      };
      if (!ec.buf.region.valid()) {
        ec.buf = makeBuffer(e, kEchoSlots * kEchoCap, kLocalOnly);
        ec.rx.resize(kEchoSlots);
        ec.tx.resize(kEchoSlots);
        for (size_t k = 0; k < kEchoSlots; ++k) postRecv(k);
      }
      bool dead = false;
      for (size_t k = 0; k < kEchoSlots; ++k) {  // an echo went out: its slot receives again
        if (ec.tx[k].valid() && ec.tx[k].done()) {
          dead |= !ec.tx[k].wait(0ms).ok();
          ec.tx[k] = Request();
          postRecv(k);
        }
      }
      // Messages fill receives in the order they were posted: echo them in that order.
      while (!dead && !ec.order.empty() && ec.rx[ec.order.front()].done()) {
        size_t k = ec.order.front();
        ec.order.pop_front();
        Status s = ec.rx[k].wait(0ms);
        if (!s.ok()) {
          dead = true;
          break;
        }
        ec.tx[k] = ec.conn.send(ec.buf.region, k * kEchoCap, ec.rx[k].bytes());
        ec.rx[k] = Request();
        ec.tx[k].onComplete(notify);
      }
      if (dead || !ec.conn.status().ok()) {
        ec.conn.close();
        it = conns.erase(it);  // the region's destructor waits until the transport lets go
      } else {
        ++it;
      }
    }
  }
  stop = true;
  acceptor.join();
  conns.clear();
  return rc;
}

/// Starts an echo server; its listen address is in `addr`.
std::unique_ptr<PeerProcess> startEchoServer(const TransportParam& tp, const std::string& listen,
                                             std::string* addr,
                                             const std::vector<std::string>& prefix = {},
                                             const std::string& device = "-") {
  auto p = std::make_unique<PeerProcess>(
      "echoServer", std::vector<std::string>{tp.name, tp.host, device, listen}, prefix);
  auto hello = p->pipe().recv(30s);
  if (!hello || hello->rfind("addr ", 0) != 0) {
    ADD_FAILURE() << "echo server did not start: " << hello.value_or("no answer");
    return nullptr;
  }
  *addr = hello->substr(5);
  return p;
}

/// Connects, retrying while nobody listens yet (a restarted listener).
Result<Connection> connectRetry(Engine& e, const std::string& addr,
                                std::chrono::milliseconds for_how_long) {
  auto until = Clock::now() + for_how_long;
  for (;;) {
    auto c = e.connect(addr);
    if (c.ok() || c.status().code() != StatusCode::kConnectionRefused || Clock::now() > until)
      return c;
    std::this_thread::sleep_for(20ms);
  }
}

/// Writes a pattern to the server's "dst", reads it back, has the server check it, and reads the
/// server's "ro" pattern: "" if all bytes are right.
/// Without `server` the caller checks "dst" [4096, 4096 + 256 KiB) for `seed` itself.
std::string verifiedTransfer(Engine& e, Connection& c, Pipe* server, uint64_t seed) {
  auto dst = c.remoteRegion("dst");
  auto ro = c.remoteRegion("ro");
  if (!dst.ok() || !ro.ok()) return "lookup: " + dst.status().toString() + ro.status().toString();
  const size_t n = 256u << 10;
  Buffer src = makeBuffer(e, n, kLocalOnly), back = makeBuffer(e, n, kLocalOnly);
  fillPattern(src.bytes.get(), n, seed);
  Status s = c.write(src.region, 0, *dst, 4096, n).wait(30s);
  if (!s.ok()) return "write: " + s.toString();
  s = c.read(back.region, 0, *dst, 4096, n).wait(30s);
  if (!s.ok()) return "read back: " + s.toString();
  std::string bad = checkPattern(back.bytes.get(), n, seed);
  if (!bad.empty()) return "read back: " + bad;
  if (server) {
    server->send("check 4096 " + std::to_string(n) + " " + std::to_string(seed));
    std::string answer = server->recv(30s).value_or("no answer");
    if (answer != "ok") return "server check: " + answer;
  }
  s = c.read(back.region, 0, *ro, 0, kRoSize).wait(30s);
  if (!s.ok()) return "read ro: " + s.toString();
  bad = checkPattern(back.bytes.get(), kRoSize, kRoSeed);
  if (!bad.empty()) return "read ro: " + bad;
  // And an echoed message.
  Request rx = c.recv(back.region, 0, kEchoCap);
  fillPattern(src.bytes.get(), 1000, seed + 1);
  s = c.send(src.region, 0, 1000).wait(30s);
  if (!s.ok()) return "send: " + s.toString();
  s = rx.wait(30s);
  if (!s.ok()) return "recv echo: " + s.toString();
  if (rx.bytes() != 1000) return "echo has " + std::to_string(rx.bytes()) + " bytes";
  bad = checkPattern(back.bytes.get(), 1000, seed + 1);
  return bad.empty() ? "" : "echo: " + bad;
}

// ---------------------------------------------------------------- process faults

class ProcessFaultTest : public ::testing::TestWithParam<std::string> {
 protected:
  TransportParam tp() const { return paramNamed(GetParam()); }
  static constexpr auto kOpTimeout = 5s;
  static constexpr auto kSlack = 5s;
};

// The target of our one-sided operations is SIGKILLed while we write, read, send and receive.
TEST_P(ProcessFaultTest, TargetKilledWhileWeWriteReadSendRecv) {
  started(kFaultTargetKilled, GetParam());
  std::string addr;
  auto server = startEchoServer(tp(), tp().host + ":0", &addr);
  ASSERT_TRUE(server);
  auto e = Engine::create(optionsFor(tp(), "", kOpTimeout));
  ASSERT_TRUE(e.ok()) << e.status().toString();
  Engine& engine = **e;
  auto c = engine.connect(addr);
  ASSERT_TRUE(c.ok()) << c.status().toString();
  Connection conn = std::move(*c);
  auto dst = conn.remoteRegion("dst");
  ASSERT_TRUE(dst.ok()) << dst.status().toString();
  Buffer src = makeBuffer(engine, kDstSize, kLocalOnly, 0x11);
  Buffer sink = makeBuffer(engine, kDstSize, kLocalOnly);
  Buffer rxbuf = makeBuffer(engine, 64 * kEchoCap, kLocalOnly);

  Tally t;
  std::vector<Request> reqs, extra_recvs;
  // More receives than sends: at least those cannot succeed once the peer is gone.
  for (int i = 0; i < 48; ++i) {
    reqs.push_back(conn.recv(rxbuf.region, i * kEchoCap, kEchoCap));
    t.track(reqs.back());
    if (i >= 32) extra_recvs.push_back(reqs.back());
  }
  for (int i = 0; i < 32; ++i) {
    reqs.push_back(conn.write(src.region, 0, *dst, 0, kDstSize));
    t.track(reqs.back());
    reqs.push_back(conn.read(sink.region, 0, *dst, 0, kDstSize));
    t.track(reqs.back());
    reqs.push_back(conn.send(src.region, 0, kEchoCap));
    t.track(reqs.back());
  }
  auto fault = Clock::now();
  server->kill(SIGKILL);
  EXPECT_EQ(server->join(10s), 128 + SIGKILL);
  uint64_t hangs = waitUntil(reqs, fault + kOpTimeout + kSlack);
  settle(t);
  for (auto& r : reqs) {
    Status s = r.wait(0ms);
    EXPECT_TRUE(s.ok() || isConnectionError(s)) << s.toString();
  }
  for (auto& r : extra_recvs) {
    Status s = r.wait(0ms);
    EXPECT_TRUE(s.code() == StatusCode::kConnectionBroken || s.code() == StatusCode::kCancelled)
        << "a receive nobody could fill: " << s.toString();
  }
  EXPECT_EQ(hangs, 0u) << "operations still in flight past operation_timeout + 5 s";
  EXPECT_EQ(t.s->completed.load(), t.posted) << "completions lost";
  EXPECT_EQ(t.s->ok.load() + t.s->error.load(), t.posted);
  EXPECT_GE(t.s->error.load(), extra_recvs.size());
  Status why = conn.status();
  EXPECT_EQ(why.code(), StatusCode::kConnectionBroken) << why.toString();
  EXPECT_FALSE(why.message().empty());
  std::cout << "[ fault    ] posted " << t.posted << ", ok " << t.s->ok << ", errors " << t.s->error
            << " (" << t.codes() << "), last completion " << t.lastCompletionAfter(fault)
            << " ms after the kill; status: " << why.toString() << "\n";
  Row row = rowOf(kFaultTargetKilled, GetParam(), t, hangs);
  row.slowest_ms = t.lastCompletionAfter(fault);

  // A restarted peer: a new connection moves verified bytes.
  server = startEchoServer(tp(), tp().host + ":0", &addr);
  ASSERT_TRUE(server);
  auto again = engine.connect(addr);
  ASSERT_TRUE(again.ok()) << again.status().toString();
  EXPECT_EQ(verifiedTransfer(engine, *again, &server->pipe(), 99), "");
  server->pipe().send("exit");
  int rc = server->join(20s);
  EXPECT_EQ(rc, 0);
  row.crashes = rc == 0 ? 0 : 1;
  record(row);
}

/// Connects to the test's listener, writes into its "sink" and sends to it without end (window of
/// 16), after 200 completions says "running"; exits only when killed.
ZCX_TEST_PEER(busyInitiator) {
  const TransportParam tp = paramNamed(args.at(0));
  auto e = Engine::create(optionsFor(tp, "", 10s));
  if (!e.ok()) return 10;
  auto c = (*e)->connect(args.at(1));
  if (!c.ok()) return 11;
  auto sink = c->remoteRegion("sink");
  if (!sink.ok()) return 12;
  if (args.at(2) == "verify") {  // one verified write, then wait to be told to go
    Buffer b = makeBuffer(**e, 100000, kLocalOnly);
    fillPattern(b.bytes.get(), 100000, 7);
    Status s = c->write(b.region, 0, *sink, 12345, 100000).wait(30s);
    pipe.send(s.ok() ? "done" : "error " + s.toString());
    return pipe.recv(30s) ? 0 : 13;
  }
  // Exactly 32 messages first (the test posts 64 receives), then writes until killed.
  Buffer b = makeBuffer(**e, 64u << 10, kLocalOnly, 0x33);
  std::deque<Request> window;
  uint64_t done = 0, sent = 0;
  for (;;) {
    while (window.size() < 16) {
      window.push_back(sent++ < 32 ? c->send(b.region, 0, 4096)
                                   : c->write(b.region, 0, *sink, 0, 64u << 10));
    }
    Status s = window.front().wait(30s);
    window.pop_front();
    if (!s.ok()) return 14;
    if (++done == 200) pipe.send("running");
  }
}

// The initiator is SIGKILLed while it writes into our memory and sends to us; we have receives,
// writes and sends of our own outstanding on that connection.
TEST_P(ProcessFaultTest, InitiatorKilledWhileItWritesAndSendsToUs) {
  started(kFaultInitiatorKilled, GetParam());
  auto e = Engine::create(optionsFor(tp(), tp().host + ":0", kOpTimeout));
  ASSERT_TRUE(e.ok()) << e.status().toString();
  Engine& engine = **e;
  Buffer sink = makeBuffer(engine, 256u << 10, kRemoteReadWrite);
  ASSERT_TRUE(engine.expose("sink", sink.region).ok());
  auto peer = std::make_unique<PeerProcess>(
      "busyInitiator", std::vector<std::string>{GetParam(), engine.listenAddress(), "load"});
  auto a = engine.accept(30s);
  ASSERT_TRUE(a.ok()) << a.status().toString();
  Connection conn = std::move(*a);
  Buffer rxbuf = makeBuffer(engine, 64 * 4096, kLocalOnly);
  Tally t;
  std::vector<Request> reqs;
  // Receives that the initiator's sends fill, and more than it will ever send before it dies.
  for (int i = 0; i < 64; ++i) {
    reqs.push_back(conn.recv(rxbuf.region, i * 4096, 4096));
    t.track(reqs.back());
  }
  ASSERT_EQ(peer->pipe().recv(30s).value_or("none"), "running");
  auto fault = Clock::now();
  peer->kill(SIGKILL);
  EXPECT_EQ(peer->join(10s), 128 + SIGKILL);
  uint64_t hangs = waitUntil(reqs, fault + kOpTimeout + kSlack);
  settle(t);
  EXPECT_EQ(hangs, 0u);
  EXPECT_EQ(t.s->completed.load(), t.posted);
  EXPECT_LE(t.s->ok.load(), 32u) << "more receives filled than messages sent";
  EXPECT_GE(t.s->error.load(), 32u) << "32 of 64 receives cannot have been filled";
  for (auto& r : reqs) {
    Status s = r.wait(0ms);
    EXPECT_TRUE(s.ok() || s.code() == StatusCode::kConnectionBroken ||
                s.code() == StatusCode::kCancelled)
        << s.toString();
  }
  Status why = conn.status();
  EXPECT_EQ(why.code(), StatusCode::kConnectionBroken) << why.toString();
  EXPECT_FALSE(why.message().empty());
  // New operations on the dead connection fail at once, and are counted too.
  std::vector<Request> after;
  after.push_back(conn.send(rxbuf.region, 0, 16));
  t.track(after.back());
  after.push_back(conn.recv(rxbuf.region, 0, 16));
  t.track(after.back());
  hangs += waitUntil(after, Clock::now() + 2s);
  settle(t);
  for (auto& r : after) EXPECT_TRUE(isConnectionError(r.wait(0ms))) << r.wait(0ms).toString();
  EXPECT_EQ(t.s->completed.load(), t.posted);
  std::cout << "[ fault    ] posted " << t.posted << ", ok " << t.s->ok << ", errors " << t.s->error
            << " (" << t.codes() << "), last completion " << t.lastCompletionAfter(fault)
            << " ms after the kill; status: " << why.toString() << "\n";
  Row row = rowOf(kFaultInitiatorKilled, GetParam(), t, hangs);
  row.slowest_ms = t.lastCompletionAfter(fault);

  // A restarted initiator connects again and its bytes land.
  std::memset(sink.bytes.get(), kPoison, sink.region.size());
  peer = std::make_unique<PeerProcess>(
      "busyInitiator", std::vector<std::string>{GetParam(), engine.listenAddress(), "verify"});
  auto b = engine.accept(30s);
  ASSERT_TRUE(b.ok()) << b.status().toString();
  EXPECT_EQ(peer->pipe().recv(30s).value_or("none"), "done");
  EXPECT_EQ(checkPattern(sink.bytes.get() + 12345, 100000, 7), "");
  EXPECT_EQ(checkPoison(sink.bytes.get(), 12345), "");
  peer->pipe().send("bye");
  int rc = peer->join(20s);
  EXPECT_EQ(rc, 0);
  row.crashes = rc == 0 ? 0 : 1;
  record(row);
}

// The listener's process goes away (exits, then is SIGKILLed) and a new one listens on the same
// port; the client's old connection says why, and a reconnect moves verified bytes.
TEST_P(ProcessFaultTest, ListenerRestartsOnTheSamePortClientReconnects) {
  started(kFaultListenerRestart, GetParam());
  std::string addr;
  auto server = startEchoServer(tp(), tp().host + ":0", &addr);
  ASSERT_TRUE(server);
  auto e = Engine::create(optionsFor(tp(), "", kOpTimeout));
  ASSERT_TRUE(e.ok()) << e.status().toString();
  Engine& engine = **e;
  auto c = engine.connect(addr);
  ASSERT_TRUE(c.ok()) << c.status().toString();
  Connection conn = std::move(*c);
  ASSERT_EQ(verifiedTransfer(engine, conn, &server->pipe(), 1), "");
  Row row;
  row.fault = kFaultListenerRestart;
  row.transport = GetParam();
  row.tried = 0;
  Tally t;
  Buffer rxbuf = makeBuffer(engine, 4096, kLocalOnly);
  for (int round = 0; round < 4; ++round) {
    bool graceful = round % 2 == 0;
    SCOPED_TRACE(graceful ? "listener exits" : "listener SIGKILLed");
    std::vector<Request> reqs = {conn.recv(rxbuf.region, 0, 4096)};  // never filled
    t.track(reqs.back());
    auto fault = Clock::now();
    if (graceful) {
      server->pipe().send("exit");
      int rc = server->join(20s);
      EXPECT_EQ(rc, 0);
      row.crashes += rc == 0 ? 0 : 1;
    } else {
      server->kill(SIGKILL);
      EXPECT_EQ(server->join(10s), 128 + SIGKILL);
    }
    row.hangs += waitUntil(reqs, fault + kOpTimeout + kSlack);
    settle(t);
    EXPECT_EQ(t.s->completed.load(), t.posted);
    Status why = conn.status();
    // A peer that closed says so (Cancelled, "closed the connection"); one that died: Broken.
    EXPECT_EQ(why.code(), graceful ? StatusCode::kCancelled : StatusCode::kConnectionBroken)
        << why.toString();
    EXPECT_EQ(reqs[0].wait(0ms).code(), why.code()) << reqs[0].wait(0ms).toString();
    row.slowest_ms = std::max(row.slowest_ms, t.lastCompletionAfter(fault));
    std::cout << "[ fault    ] round " << round << ": old connection: " << why.toString() << "\n";
    std::string same_addr = addr;
    server = startEchoServer(tp(), addr, &same_addr);
    ASSERT_TRUE(server);
    ASSERT_EQ(same_addr, addr);
    auto again = connectRetry(engine, addr, 10s);
    ASSERT_TRUE(again.ok()) << again.status().toString();
    conn = std::move(*again);
    EXPECT_EQ(verifiedTransfer(engine, conn, &server->pipe(), 100 + round), "");
    row.tried++;
  }
  server->pipe().send("exit");
  EXPECT_EQ(server->join(20s), 0);
  Row counted = rowOf(row.fault, row.transport, t, row.hangs);
  counted.tried = row.tried;
  counted.crashes = row.crashes;
  counted.slowest_ms = row.slowest_ms;
  record(counted);
}

INSTANTIATE_TEST_SUITE_P(Ucx, ProcessFaultTest, ::testing::Values("tcp", "shm"),
                         [](const auto& info) { return info.param; });

// ---------------------------------------------------------------- network faults

std::string shell(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!f) return "popen failed";
  char buf[512];
  while (size_t n = std::fread(buf, 1, sizeof(buf), f)) out.append(buf, n);
  int st = ::pclose(f);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

bool run(const std::string& cmd, std::string* why) {
  int rc = 0;
  std::string out = shell(cmd, &rc);
  if (rc != 0 && why) *why = "`" + cmd + "` failed (" + std::to_string(rc) + "): " + out;
  return rc == 0;
}

/// Two network namespaces joined by a veth pair: A (10.213.0.1 on veth_a) and B (10.213.0.2 on
/// veth_b). Removed (with the pair) on destruction.
class NetnsPair {
 public:
  const std::string a = "zcxfa" + std::to_string(::getpid());
  const std::string b = "zcxfb" + std::to_string(::getpid());
  const std::string veth_a = "zfa" + std::to_string(::getpid());
  const std::string veth_b = "zfb" + std::to_string(::getpid());
  const std::string ip_a = "10.213.0.1", ip_b = "10.213.0.2";

  /// "" once set up, else why this process cannot (the test skips with that).
  std::string setUp() {
    if (::geteuid() != 0) return "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)";
    std::string why;
    if (!run("ip netns add " + a, &why)) return "no network namespaces here: " + why;
    created_ = true;
    if (!run("ip netns add " + b, &why)) return "no network namespaces here: " + why;
    if (!run("ip link add " + veth_a + " type veth peer name " + veth_b, &why))
      return "no veth pairs here: " + why;
    bool ok = run("ip link set " + veth_a + " netns " + a, &why) &&
              run("ip link set " + veth_b + " netns " + b, &why) &&
              run("ip -n " + a + " addr add " + ip_a + "/24 dev " + veth_a, &why) &&
              run("ip -n " + b + " addr add " + ip_b + "/24 dev " + veth_b, &why) &&
              run("ip -n " + a + " link set lo up", &why) &&
              run("ip -n " + b + " link set lo up", &why) &&
              run("ip -n " + a + " link set " + veth_a + " up", &why) &&
              run("ip -n " + b + " link set " + veth_b + " up", &why);
    return ok ? "" : why;
  }
  ~NetnsPair() {
    if (!created_) return;
    (void)run("ip netns del " + a, nullptr);  // takes the veth pair with it
    (void)run("ip netns del " + b, nullptr);
  }
  std::vector<std::string> in(const std::string& ns) const { return {"ip", "netns", "exec", ns}; }

 private:
  bool created_ = false;
};

/// Runs in namespace A: connects to the echo server in B and keeps a window of 16 operations in
/// flight (64 KiB writes and reads, 4 KiB sends with a receive for their echo), counting each.
/// Commands: "connect ADDR", "load" (answers "running" once 500 completed), "fault" (the test
/// broke the network now), "drain SLACK_MS" (stops posting at the first error; answers "result
/// POSTED OK ERROR LOST HANGS LAST_MS CODES | STATUS"), "reconnect ADDR SEED", "exit".
ZCX_TEST_PEER(netClient) {
  const TransportParam tp = paramNamed("veth", args.at(0), args.at(1));
  const auto op_timeout = std::chrono::milliseconds(std::stoll(args.at(2)));
  auto e = Engine::create(optionsFor(tp, "", op_timeout));
  if (!e.ok()) {
    pipe.send("error " + e.status().toString());
    return 1;
  }
  Engine& engine = **e;
  constexpr size_t kWindow = 16, kChunk = 64u << 10;
  Buffer local = makeBuffer(engine, kWindow * kChunk, kLocalOnly, 0x44);
  Buffer rx = makeBuffer(engine, kWindow * kEchoCap, kLocalOnly);
  Connection conn;
  Result<RemoteRegion> dst = Status(StatusCode::kNotFound, "not connected");
  Tally t;
  std::atomic<bool> stop{false};
  std::vector<std::vector<Request>> slots(kWindow);
  std::vector<Request> recvs(kWindow);  ///< echo receives (no deadline of their own)
  std::mutex slots_mu;
  std::thread loader;
  Clock::time_point fault{};
  for (;;) {
    auto line = pipe.recv(120s);
    if (!line) return 2;
    auto w = words(*line);
    if (w.empty()) continue;
    if (w[0] == "exit") break;
    if (w[0] == "connect") {
      auto c = engine.connect(w.at(1));
      if (c.ok()) conn = std::move(*c);
      if (c.ok()) dst = conn.remoteRegion("dst");
      pipe.send(!c.ok()    ? "error " + c.status().toString()
                : dst.ok() ? "ok"
                           : "error " + dst.status().toString());
    } else if (w[0] == "load") {
      loader = std::thread([&] {
        // The loader waits only for operations with a deadline (writes, reads, sends): a receive
        // whose echo never comes must not stop the traffic that detects a dead link. Receives
        // use their own ring; a pair is posted only when its receive slot is free.
        for (uint64_t seq = 0; !stop && t.s->error.load() == 0; ++seq) {
          size_t k = seq % kWindow;
          {
            std::lock_guard<std::mutex> lock(slots_mu);
            for (auto& r : slots[k]) (void)r.wait(60s);  // the slot's buffers are free again
            slots[k].clear();
            if (stop || t.s->error.load() != 0) break;
            size_t m = (seq / 3) % kWindow;
            if (seq % 3 == 2 && (!recvs[m].valid() || recvs[m].done())) {
              recvs[m] = conn.recv(rx.region, m * kEchoCap, kEchoCap);
              t.track(recvs[m]);
              slots[k].push_back(conn.send(local.region, k * kChunk, 4096));
            } else if (seq % 3 == 1) {
              slots[k].push_back(conn.read(local.region, k * kChunk, *dst, k * kChunk, kChunk));
            } else {
              slots[k].push_back(conn.write(local.region, k * kChunk, *dst, k * kChunk, kChunk));
            }
            t.track(slots[k].back());
          }
        }
      });
      auto until = Clock::now() + 30s;
      while (t.s->ok.load() < 500 && t.s->error.load() == 0 && Clock::now() < until)
        std::this_thread::sleep_for(1ms);
      pipe.send(t.s->ok.load() >= 500 ? "running" : "error " + t.s->first_error);
    } else if (w[0] == "recvonly") {  // receives only, nothing with a deadline in flight
      for (auto& r : recvs) {
        r = conn.recv(rx.region, (&r - recvs.data()) * kEchoCap, kEchoCap);
        t.track(r);
      }
      pipe.send("ok");
    } else if (w[0] == "fault") {
      fault = Clock::now();
      pipe.send("ok");
    } else if (w[0] == "drain") {
      auto deadline = fault + op_timeout + std::chrono::milliseconds(std::stoll(w.at(1)));
      while (t.s->error.load() == 0 && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
      stop = true;
      // The loader may sit in wait() on a slot; it returns by the operation's own deadline.
      if (loader.joinable()) loader.join();
      uint64_t hangs = 0;
      for (auto& s : slots) hangs += waitUntil(s, deadline);
      hangs += waitUntil(recvs, deadline);
      settle(t);
      Status st = conn.status();
      pipe.send("result " + std::to_string(t.posted) + " " + std::to_string(t.s->ok.load()) + " " +
                std::to_string(t.s->error.load()) + " " +
                std::to_string(t.posted - t.s->completed.load()) + " " + std::to_string(hangs) +
                " " + std::to_string(t.lastCompletionAfter(fault)) + " " + t.codes() + " | " +
                st.toString());
    } else if (w[0] == "reconnect") {
      auto c = engine.connect(w.at(1));
      if (!c.ok()) {
        pipe.send("error " + c.status().toString());
        continue;
      }
      std::string bad = verifiedTransfer(engine, *c, nullptr, std::stoull(w.at(2)));
      pipe.send(bad.empty() ? "ok" : "bad " + bad);
    }
  }
  return 0;
}

enum class NetFault { kLinkDown, kTotalLoss };
enum class Load { kMixed, kReceivesOnly };

void runNetFault(NetFault kind, Load load = Load::kMixed) {
  NetnsPair ns;
  std::string why = ns.setUp();
  if (!why.empty()) GTEST_SKIP() << "cannot emulate network faults here: " << why;
  if (kind == NetFault::kTotalLoss && !run("ip netns exec " + ns.a + " nft list ruleset", &why))
    GTEST_SKIP() << "nftables unusable here (scripts/install-deps.sh installs nftables): " << why;
  const std::string fault_name = load == Load::kReceivesOnly
                                     ? "link down, only receives pending (veth between namespaces)"
                                 : kind == NetFault::kLinkDown ? kFaultLinkDown
                                                               : kFaultLoss;
  started(fault_name, "tcp");
  const auto op_timeout = 3s;
  const auto slack = 3s;
  std::string addr;
  auto server = startEchoServer(paramNamed("veth", ns.ip_b, ns.veth_b), ns.ip_b + ":0", &addr,
                                ns.in(ns.b), ns.veth_b);
  ASSERT_TRUE(server);
  PeerProcess client(
      "netClient",
      {ns.ip_a, ns.veth_a, std::to_string(std::chrono::milliseconds(op_timeout).count())},
      ns.in(ns.a));
  auto cmd = [&](const std::string& line, std::chrono::milliseconds timeout = 60s) {
    client.pipe().send(line);
    return client.pipe().recv(timeout).value_or("no answer from the client");
  };
  ASSERT_EQ(cmd("connect " + addr), "ok");
  if (load == Load::kMixed)
    ASSERT_EQ(cmd("load"), "running");
  else
    ASSERT_EQ(cmd("recvonly"), "ok");

  const std::string nft = "ip netns exec " + ns.a + " nft ";
  if (kind == NetFault::kLinkDown) {
    ASSERT_TRUE(run("ip -n " + ns.a + " link set dev " + ns.veth_a + " down", &why)) << why;
  } else {  // every packet in and out of A's veth is dropped, silently, at the device
    ASSERT_TRUE(run(nft + "add table netdev zcxloss", &why)) << why;
    for (const char* hook : {"ingress", "egress"}) {
      ASSERT_TRUE(run(nft + "add chain netdev zcxloss " + hook + " '{ type filter hook " + hook +
                          " device " + ns.veth_a + " priority 0; policy drop; }'",
                      &why))
          << why;
    }
  }
  ASSERT_EQ(cmd("fault"), "ok");
  std::string result =
      cmd("drain " + std::to_string(std::chrono::milliseconds(slack).count()), 120s);
  std::cout << "[ fault    ] " << result << "\n";
  auto w = words(result);
  ASSERT_GE(w.size(), 9u) << result;
  ASSERT_EQ(w[0], "result") << result;
  uint64_t posted = std::stoull(w[1]), ok = std::stoull(w[2]), err = std::stoull(w[3]),
           lost = std::stoull(w[4]), hangs = std::stoull(w[5]);
  long long last_ms = std::stoll(w[6]);
  std::string status = result.substr(result.find(" | ") + 3);
  EXPECT_EQ(lost, 0u) << "completions lost";
  EXPECT_EQ(hangs, 0u) << "operations in flight past operation_timeout + slack";
  EXPECT_EQ(ok + err, posted);
  EXPECT_GT(err, 0u) << "nothing failed although the network was cut";
  EXPECT_LE(last_ms, std::chrono::milliseconds(op_timeout + slack).count())
      << "an operation completed later than its deadline allows";
  // The connection says why: its operations timed out (the link never reports the cut over tcp).
  EXPECT_TRUE(status.rfind("TimedOut: ", 0) == 0 || status.rfind("ConnectionBroken: ", 0) == 0)
      << status;
  EXPECT_GT(status.size(), std::string("ConnectionBroken: ").size() + 10) << status;

  if (kind == NetFault::kLinkDown)
    ASSERT_TRUE(run("ip -n " + ns.a + " link set dev " + ns.veth_a + " up", &why)) << why;
  else
    ASSERT_TRUE(run(nft + "delete table netdev zcxloss", &why)) << why;
  // A new connection over the restored link moves verified bytes (retrying while the link's
  // carrier and routes come back).
  std::string again = "none";
  auto until = Clock::now() + 20s;
  do {
    again = cmd("reconnect " + addr + " 4711");
  } while (again.rfind("error ", 0) == 0 && Clock::now() < until);
  EXPECT_EQ(again, "ok");
  server->pipe().send("check 4096 262144 4711");
  EXPECT_EQ(server->pipe().recv(30s).value_or("no answer"), "ok");

  client.pipe().send("exit");
  int client_rc = client.join(30s);
  server->pipe().send("exit");
  int server_rc = server->join(30s);
  EXPECT_EQ(client_rc, 0);
  EXPECT_EQ(server_rc, 0);
  Row row;
  row.fault = fault_name;
  row.transport = "tcp";
  row.posted = posted;
  row.ok = ok;
  row.error = err;
  row.lost = lost;
  row.hangs = hangs;
  row.crashes = (client_rc != 0) + (server_rc != 0);
  row.slowest_ms = last_ms;
  record(row);
}

TEST(NetworkFaultTest, LinkDownUnderLoadThenUp) { runNetFault(NetFault::kLinkDown); }
// A link that dies while a connection has only receives posted: receives have no deadline and
// nothing else is in flight to time out, so only the control socket's keepalive
// (EngineOptions::peer_timeout, TCP keepalive + TCP_USER_TIMEOUT) can notice.
TEST(NetworkFaultTest, LinkDownWhileOnlyReceivesArePending) {
  runNetFault(NetFault::kLinkDown, Load::kReceivesOnly);
}
TEST(NetworkFaultTest, TotalPacketLossUnderLoadThenRestored) { runNetFault(NetFault::kTotalLoss); }

// ---------------------------------------------------------------- soak

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 10) : fallback;
}

// 64 connections to 4 listener processes, rounds of small batched writes, batched reads, sends
// and receives (echoed) on each; listeners SIGKILLed and restarted on their port during the run.
TEST(SoakTest, SixtyFourConnectionsMixedOpsWithPeerKills) {
  started(kFaultSoak, "tcp");
  const uint64_t target_ops = envOr("ZCX_SOAK_OPS", 1000000);
  constexpr size_t kServers = 4, kPerServer = 16, kBatch = 32, kSmall = 64;
  const size_t kills_planned = 6;
  const auto op_timeout = 10s;
  const TransportParam tp = paramNamed("tcp");
  std::vector<std::unique_ptr<PeerProcess>> servers(kServers);
  std::vector<std::string> addrs(kServers);
  for (size_t s = 0; s < kServers; ++s) {
    servers[s] = startEchoServer(tp, tp.host + ":0", &addrs[s]);
    ASSERT_TRUE(servers[s]);
  }
  auto e = Engine::create(optionsFor(tp, "", op_timeout));
  ASSERT_TRUE(e.ok()) << e.status().toString();
  Engine& engine = **e;
  std::vector<uint8_t> ro_expected(kRoSize);
  fillPattern(ro_expected.data(), kRoSize, kRoSeed);

  // Local layout of one connection: write sources, read targets, 2 send sources, 2 receives.
  constexpr size_t kW = 0, kR = kBatch * kSmall, kS = 2 * kBatch * kSmall, kRx = kS + 2 * kSmall;
  constexpr size_t kLocal = kRx + 2 * kSmall;
  struct Conn {
    size_t server = 0, index = 0;
    Connection conn;
    RemoteRegion dst, ro;
    Buffer buf;
    std::vector<Request> round;
    uint64_t round_no = 0;
  };
  std::vector<Conn> conns(kServers * kPerServer);
  Tally t;
  uint64_t connects = 0, connect_failures = 0, rounds_verified = 0, verify_failures = 0;
  std::string first_verify_failure;
  auto attach = [&](Conn& c) {
    auto cc = engine.connect(addrs[c.server]);
    if (!cc.ok()) {
      ++connect_failures;
      return false;
    }
    auto dst = cc->remoteRegion("dst", 5s);
    auto ro = cc->remoteRegion("ro", 5s);
    if (!dst.ok() || !ro.ok()) {
      ++connect_failures;
      return false;
    }
    c.conn = std::move(*cc);
    c.dst = *dst;
    c.ro = *ro;
    ++connects;
    return true;
  };
  for (size_t i = 0; i < conns.size(); ++i) {
    conns[i].server = i % kServers;
    conns[i].index = i / kServers;
    conns[i].buf = makeBuffer(engine, kLocal, kLocalOnly);
    ASSERT_TRUE(attach(conns[i])) << "connection " << i;
  }
  auto harvest = [&](Conn& c) {  // the last round is complete: check its bytes
    if (c.round.empty()) return;
    uint8_t* b = c.buf.bytes.get();
    bool all_ok = true;
    for (auto& r : c.round) all_ok &= r.wait(0ms).ok();
    if (c.round[1].wait(0ms).ok()) {  // the read batch: ro at offsets (round*64 + i*97) % ...
      for (size_t i = 0; i < kBatch; ++i) {
        size_t off = (c.round_no * 64 + i * 97) % (kRoSize - kSmall);
        if (std::memcmp(b + kR + i * kSmall, ro_expected.data() + off, kSmall) != 0) {
          ++verify_failures;
          if (first_verify_failure.empty()) first_verify_failure = "read batch bytes differ";
          break;
        }
      }
    }
    for (size_t m = 0; m < 2; ++m) {  // the echoes, each in its own receive
      Request& r = c.round[2 + m];
      if (!r.wait(0ms).ok()) continue;
      if (r.bytes() != kSmall || std::memcmp(b + kRx + m * kSmall, b + kS + m * kSmall, kSmall)) {
        ++verify_failures;
        if (first_verify_failure.empty()) first_verify_failure = "echo differs";
      }
    }
    rounds_verified += all_ok;
    c.round.clear();
  };
  auto postRound = [&](Conn& c) {
    uint8_t* b = c.buf.bytes.get();
    ++c.round_no;
    fillPattern(b + kW, kBatch * kSmall, c.round_no * 1000 + c.index);
    fillPattern(b + kS, 2 * kSmall, c.round_no * 7777 + c.index);
    std::memset(b + kR, kPoison, kBatch * kSmall);
    std::memset(b + kRx, kPoison, 2 * kSmall);
    std::vector<RmaOp> w(kBatch), r(kBatch);
    for (size_t i = 0; i < kBatch; ++i) {
      w[i] = {&c.buf.region, kW + i * kSmall, &c.dst, c.index * 4096 + i * kSmall, kSmall};
      size_t off = (c.round_no * 64 + i * 97) % (kRoSize - kSmall);
      r[i] = {&c.buf.region, kR + i * kSmall, &c.ro, off, kSmall};
    }
    c.round.push_back(c.conn.writeBatch(w));
    t.track(c.round.back(), kBatch);
    c.round.push_back(c.conn.readBatch(r));
    t.track(c.round.back(), kBatch);
    for (size_t m = 0; m < 2; ++m) {
      c.round.push_back(c.conn.recv(c.buf.region, kRx + m * kSmall, kSmall));
      t.track(c.round.back());
    }
    for (size_t m = 0; m < 2; ++m) {
      c.round.push_back(c.conn.send(c.buf.region, kS + m * kSmall, kSmall));
      t.track(c.round.back());
    }
  };

  std::mt19937 rng(20261125);
  size_t kills = 0;
  uint64_t server_crashes = 0;
  const auto start = Clock::now();
  while (t.ops_posted < target_ops) {
    ASSERT_LT(Clock::now() - start, 240s) << "the soak is far too slow: " << t.ops_posted << " ops";
    for (Conn& c : conns) {
      bool idle = true;
      for (auto& r : c.round) idle &= r.done();
      if (!idle) continue;
      harvest(c);
      if (!c.conn.valid() || !c.conn.status().ok()) {
        c.conn = Connection();
        if (!attach(c)) continue;  // its listener is restarting: later
      }
      postRound(c);
    }
    if (kills < kills_planned && t.ops_posted >= target_ops * (kills + 1) / (kills_planned + 1)) {
      size_t s = rng() % kServers;
      servers[s]->kill(SIGKILL);
      int rc = servers[s]->join(10s);
      EXPECT_EQ(rc, 128 + SIGKILL);
      std::string again;
      servers[s] = startEchoServer(tp, addrs[s], &again);
      ASSERT_TRUE(servers[s]);
      ASSERT_EQ(again, addrs[s]);
      ++kills;
    }
    std::unique_lock<std::mutex> lock(t.s->mu);
    t.s->cv.wait_for(lock, 2ms);
  }
  // Drain: everything posted completes by its deadline.
  std::vector<Request> outstanding;
  for (Conn& c : conns) outstanding.insert(outstanding.end(), c.round.begin(), c.round.end());
  uint64_t hangs = waitUntil(outstanding, Clock::now() + op_timeout + 5s);
  settle(t);
  for (Conn& c : conns) harvest(c);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  for (auto& s : servers) {
    s->pipe().send("exit");
    int rc = s->join(30s);
    EXPECT_EQ(rc, 0);
    server_crashes += rc != 0;
  }
  std::cout << "[ soak     ] " << conns.size() << " connections, " << t.ops_posted
            << " operations in " << t.posted << " requests over " << took.count() << " ms; ok "
            << t.s->ops_ok << ", error " << t.s->ops_error << " (requests: " << t.codes() << "); "
            << kills << " kills, " << connects << " connects (" << connect_failures
            << " refused while restarting); " << rounds_verified << " rounds verified\n";
  EXPECT_EQ(hangs, 0u) << "requests in flight past their deadline";
  EXPECT_EQ(t.s->completed.load(), t.posted) << "completions lost";
  EXPECT_EQ(t.s->ops_completed.load(), t.ops_posted);
  EXPECT_EQ(t.s->ops_ok.load() + t.s->ops_error.load(), t.ops_posted);
  EXPECT_EQ(kills, kills_planned);
  EXPECT_GE(t.ops_posted, target_ops);
  EXPECT_EQ(verify_failures, 0u) << first_verify_failure;
  EXPECT_GT(t.s->ops_error.load(), 0u) << "kills that fail nothing did not hit the load";
  Row row;
  row.fault = kFaultSoak;
  row.transport = "tcp";
  row.tried = kills;
  row.posted = t.ops_posted;
  row.ok = t.s->ops_ok.load();
  row.error = t.s->ops_error.load();
  row.lost = t.ops_posted - t.s->ops_completed.load();
  row.hangs = hangs;
  row.crashes = server_crashes;
  row.slowest_ms = -1;
  record(row);
}

}  // namespace
}  // namespace zcx::test

int main(int argc, char** argv) {
  int peer = zcx::test::runPeerIfAsked(argc, argv);
  if (peer >= 0) return peer;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

// The UCX transport against itself: two Transport instances (two UCX workers) in one process,
// connected with each other's worker address, driven by progress() loops with deadlines.
//
// The transport contract (tests/transport_contract_test.h) runs here over tcp and shm
// (Ucx/TransportContractTest.*/tcp, .../shm); this file adds what is UCX's own: its parameters,
// malformed worker addresses, hostile active messages, UCX's buffering of early messages, peer
// death over tcp and across processes.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <deque>

#include "transport_contract_test.h"
#include "ucx/factory.h"
#include "ucx/ucx_endpoint.h"
#include "ucx/ucx_params.h"
#include "ucx/ucx_wire.h"
#include "zcx/transport/transport.h"

namespace zcx::transport {
namespace {

using namespace std::chrono_literals;
using contract::kMiB;
using contract::kPoison;
using contract::posting;
using contract::randomBytes;
using contract::TestCompletion;
using contract::TestEvents;
using contract::TransportContractTest;
using contract::TransportUnderTest;

std::map<std::string, std::string> paramsFor(const std::string& name) {
  if (name == "tcp") return {{"ucx.tls", "tcp"}, {"ucx.net_devices", "lo"}};
  // tcp with native RMA (no checks by the target): writes take the flush-sharing path, where
  // every flush is a round trip to the peer (over shm a flush completes at once).
  if (name == "tcp_native")
    return {{"ucx.tls", "tcp"}, {"ucx.net_devices", "lo"}, {"ucx.rma", "native"}};
  // Shared memory: posix for AM + cma for zero-copy put/get (MM_ERROR_HANDLING=y is set by the
  // transport itself); self covers loopback within one worker.
  return {{"ucx.tls", "posix,cma,self"}};
}

/// The UCX transport over "tcp" or "shm", and what it promises the contract suite.
TransportUnderTest ucxInstance(const std::string& name) {
  TransportUnderTest t;
  t.name = name;
  t.create = &ucx::create;
  t.config.params = paramsFor(name);
  t.transport_name = "ucx";
  t.description_has = {"ucx 1.", "tls="};
  t.allocate = true;
  t.capability_max_message_size = size_t{1} << 30;  // ucx_transport.cc kMaxMessageSize
  t.max_message_size = 4 * kMiB;
  t.passive_first = false;  // the other order: MessagesSentBeforeThePeerEndpointExistsAreKept
  // UCX may still hold requests when close() returns (a flush-mode close needs the peer's
  // progress); they complete from a later progress(). A force-closed endpoint does not tell the
  // peer (the core's BYE does).
  t.close_completes_at_once = false;
  t.peer_sees_close = false;
  t.closed_endpoint_refuses_keys = true;  // UCX unpacks keys on the endpoint
  t.malformed_keys = [](const std::vector<uint8_t>& good) {
    std::vector<uint8_t> flipped(good.begin(), good.end());
    for (size_t i = good.size() - 8; i < good.size(); ++i) flipped[i] ^= 0x5a;
    return std::vector<std::vector<uint8_t>>{flipped};
  };
  return t;
}

INSTANTIATE_TEST_SUITE_P(Ucx, TransportContractTest,
                         ::testing::Values(ucxInstance("tcp"), ucxInstance("shm")),
                         contract::instanceName);

uint64_t addr0(const std::vector<uint8_t>& buf) { return reinterpret_cast<uint64_t>(buf.data()); }

/// Whether every completion in `done` has been called.
bool allCompleted(const std::vector<TestCompletion>& done) {
  return std::all_of(done.begin(), done.end(), [](const auto& c) { return c.calls > 0; });
}

/// The contract suite's pair of connected UCX transports, for the tests only UCX has.
class UcxTransportTest : public contract::TransportPairTest {};

TEST_P(UcxTransportTest, KeyOutlivingItsEndpointIsHarmless) {
  std::vector<uint8_t> remote(4096);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  auto key = ea_->importKey(mremote->packedKey());
  ASSERT_TRUE(key.ok());
  ea_.reset();
  key->reset();  // no crash, no double destroy
  settle();
}

TEST_P(UcxTransportTest, ArgumentErrors) {
  std::vector<uint8_t> buf(16);
  EXPECT_EQ(a_->registerMemory(buf.data(), 0, kAccessLocal).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(a_->allocateMemory(0, kAccessLocal).status().code(), StatusCode::kInvalidArgument);

  TransportConfig bad;
  bad.params = {{"ucx.tls", "tcp"}, {"tls", "tcp"}};
  auto t = ucx::create(bad);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("'tls'"), std::string::npos) << t.status().toString();

  TransportConfig lower;
  lower.params = {{"ucx.rndv_thresh", "8k"}};
  EXPECT_EQ(ucx::create(lower).status().code(), StatusCode::kInvalidArgument);

  TransportConfig passthrough;
  passthrough.params = GetParam().config.params;
  passthrough.params["ucx.RNDV_THRESH"] = "8k";
  auto ok = ucx::create(passthrough);
  EXPECT_TRUE(ok.ok()) << ok.status().toString();

  // Note: an unknown ucx.<UPPERCASE> name is passed through; UCX 1.13 only warns about it.

  // The same token and role twice on one transport.
  EndpointSetup dup;
  dup.role = Role::kActive;
  dup.peer_address = b_->localAddress();
  dup.token = 0x1234567890abcdefull;
  dup.events = &eva_;
  EXPECT_EQ(a_->createEndpoint(dup).status().code(), StatusCode::kInvalidArgument);

  // Malformed peer worker addresses (from a broken or hostile handshake) never reach UCX.
  EndpointSetup bad_setup;
  bad_setup.role = Role::kActive;
  bad_setup.token = 0x5151;
  bad_setup.events = &eva_;
  std::vector<uint8_t> good = b_->localAddress();
  std::vector<std::vector<uint8_t>> garbage = {{}, {1, 2, 3}, std::vector<uint8_t>(64, 0xab)};
  auto flipped = good;
  flipped[flipped.size() / 2] ^= 0x10;
  garbage.push_back(flipped);
  garbage.push_back(std::vector<uint8_t>(good.begin(), good.end() - 1));
  for (size_t i = 0; i < garbage.size(); ++i) {
    bad_setup.peer_address = garbage[i];
    bad_setup.token = 0x5151 + i;
    auto ep = a_->createEndpoint(bad_setup);
    EXPECT_EQ(ep.status().code(), StatusCode::kProtocolError)
        << i << ": " << ep.status().toString();
  }
}

// A hostile or broken peer: what it sends never makes us hold memory without bound, and the
// connection fails with a protocol error instead.
class HostilePeerTest : public UcxTransportTest {
 protected:
  /// A fresh pair where B accepts messages of at most `b_max` bytes while A believes 4 MiB.
  void connectAsymmetric(uint64_t token, size_t b_max) {
    EndpointSetup sa;
    sa.role = Role::kActive;
    sa.peer_address = b_->localAddress();
    sa.token = token;
    sa.max_message_size = 4 * kMiB;
    sa.events = &eva2_;
    auto ea = a_->createEndpoint(sa);
    ASSERT_TRUE(ea.ok()) << ea.status().toString();
    EndpointSetup sb = sa;
    sb.role = Role::kPassive;
    sb.peer_address = a_->localAddress();
    sb.max_message_size = b_max;
    sb.events = &evb2_;
    auto eb = b_->createEndpoint(sb);
    ASSERT_TRUE(eb.ok()) << eb.status().toString();
    ea2_ = std::move(ea).value();
    eb2_ = std::move(eb).value();
    ASSERT_TRUE(pump([&] {
      return ea2_->state() == EndpointState::kReady && eb2_->state() == EndpointState::kReady;
    }));
  }
  void TearDown() override {
    ea2_.reset();
    eb2_.reset();
    UcxTransportTest::TearDown();
  }
  TestEvents eva2_, evb2_;
  std::unique_ptr<Endpoint> ea2_, eb2_;
};

TEST_P(HostilePeerTest, MessageLargerThanTheReceiversLimitBreaksTheConnection) {
  // Eager (small) and rendezvous (large) messages both: nothing is allocated for them.
  for (size_t size : {size_t{4096}, size_t{2} * kMiB}) {
    SCOPED_TRACE("size " + std::to_string(size));
    connectAsymmetric(0x4000 + size, 1024);
    std::vector<uint8_t> big = randomBytes(size, 5);
    MemoryHandle* h = reg(*a_, big, kAccessLocal);
    TestCompletion c;
    ASSERT_TRUE(ea2_->postSend(h, addr(big, 0), big.size(), &c).ok());
    ASSERT_TRUE(pump([&] { return eb2_->state() == EndpointState::kBroken; }))
        << "the receiver kept an oversized message";
    EXPECT_EQ(eb2_->error().code(), StatusCode::kProtocolError) << eb2_->error().toString();
    EXPECT_TRUE(evb2_.messages.empty());
    ASSERT_TRUE(pump([&] { return !evb2_.errors.empty(); }));
    EXPECT_EQ(evb2_.errors.front().code(), StatusCode::kProtocolError);
    pump([&] { return c.calls > 0; }, 5s);
    ea2_.reset();
    eb2_.reset();
    evb2_ = TestEvents();
    eva2_ = TestEvents();
  }
}

TEST_P(HostilePeerTest, BogusSequenceNumbersAreNotHeldForever) {
  connectAsymmetric(0x5151, 64 * 1024);
  // Raw active messages with sequence numbers far ahead of what the receiver expects.
  auto* ep = static_cast<ucx::UcxEndpoint*>(ea2_.get());
  std::vector<uint8_t> payload(100, 7);
  for (uint64_t seq : {uint64_t{5}, uint64_t{1} << 40}) {
    ucx::AmHeader h;
    h.token = 0x5151;
    h.value = seq;
    h.role = 0;  // sent by the active side
    ucp_request_param_t p{};
    ucs_status_ptr_t r = ucp_am_send_nbx(ep->ucpEp(), ucx::kAmMessage, &h, sizeof(h),
                                         payload.data(), payload.size(), &p);
    if (UCS_PTR_IS_PTR(r)) {
      ASSERT_TRUE(pump([&] { return ucp_request_check_status(r) != UCS_INPROGRESS; }));
      ucp_request_free(r);
    }
    if (seq == 5) {
      settle();
      EXPECT_NE(eb2_->state(), EndpointState::kBroken) << "a small gap is a legal reorder";
    }
  }
  ASSERT_TRUE(pump([&] { return eb2_->state() == EndpointState::kBroken; }))
      << "a sequence number 2^40 ahead was held";
  EXPECT_EQ(eb2_->error().code(), StatusCode::kProtocolError) << eb2_->error().toString();
  EXPECT_TRUE(evb2_.messages.empty());
}

/// Runs `f` when the scope ends.
class ScopeExit {
 public:
  explicit ScopeExit(std::function<void()> f) : f_(std::move(f)) {}
  ~ScopeExit() { f_(); }
  ScopeExit(const ScopeExit&) = delete;
  ScopeExit& operator=(const ScopeExit&) = delete;

 private:
  std::function<void()> f_;
};

// Writes posted back to back share endpoint flushes (one per flush group, issue 10): each one
// still completes exactly once, only when its own data is at the target, and its notify arrives
// after its data and in posting order. Over shm this is UCX's put path; over tcp checked RMA.
TEST_P(UcxTransportTest, WritesSharingFlushesCompleteOnceWithTheirDataVisible) {
  constexpr size_t kBurst = 200, kPipelined = 300, kWrites = kBurst + kPipelined, kDepth = 64;
  constexpr size_t kLen = 1000, kStride = 1024;  // a gap of poison between neighbours
  std::vector<uint8_t> src = randomBytes(kWrites * kStride, 21);
  std::vector<uint8_t> remote(kWrites * kStride, kPoison);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  auto visible = [&](size_t i) {
    return std::memcmp(remote.data() + i * kStride, src.data() + i * kStride, kLen) == 0;
  };
  auto hasNotify = [](size_t i) { return i % 3 != 1; };
  std::vector<TestCompletion> done(kWrites);
  std::vector<int> visible_at_completion(kWrites, -1);
  std::vector<uint32_t> expected_notifies;
  for (size_t i = 0; i < kWrites; ++i) {
    done[i].on_complete = [&, i] { visible_at_completion[i] = visible(i) ? 1 : 0; };
    if (hasNotify(i)) expected_notifies.push_back(static_cast<uint32_t>(i));
  }
  // A failed ASSERT returns with writes outstanding: close before `done` goes.
  ScopeExit close_first([&] {
    for (auto& c : done) c.on_complete = nullptr;
    evb_.on_notify = nullptr;
    keys_.clear();
    ea_.reset();
  });
  std::vector<uint32_t> notified_before_data;
  evb_.on_notify = [&](uint32_t v) {
    if (v >= kWrites || !visible(v)) notified_before_data.push_back(v);
  };
  size_t next = 0;
  auto post = [&] {
    size_t i = next++;
    // Every 7th write has two ops, every 10th a zero-length op, so groups mix batch shapes.
    std::vector<RmaOp> ops;
    size_t half = i % 7 == 0 ? kLen / 2 : kLen;
    ops.push_back({msrc, addr(src, i * kStride), key, addr(remote, i * kStride), half});
    if (half != kLen) {
      ops.push_back({msrc, addr(src, i * kStride + half), key, addr(remote, i * kStride + half),
                     kLen - half});
    }
    if (i % 10 == 0) ops.push_back({msrc, addr(src, i * kStride), key, addr(remote, 0), 0});
    std::optional<uint32_t> notify;
    if (hasNotify(i)) notify = static_cast<uint32_t>(i);
    return posting([&] { return ea_->postWrite(ops, notify, &done[i]); });
  };
  // A burst with no progress in between: several full groups and one left open.
  for (size_t i = 0; i < kBurst; ++i) ASSERT_TRUE(post().ok()) << i;
  for (size_t i = 0; i < kBurst; ++i) EXPECT_EQ(done[i].calls, 0) << i;
  ASSERT_TRUE(pump([&] { return done[kBurst - 1].calls > 0; }));
  // A pipeline: each completion posts the next write (from inside progress()).
  size_t posted_from_completions = 0;
  for (size_t i = kBurst; i < kWrites; ++i) {
    auto check = std::move(done[i].on_complete);
    done[i].on_complete = [&, i, check] {
      check();
      if (next < kWrites && post().ok()) ++posted_from_completions;
    };
  }
  for (size_t i = 0; i < kDepth; ++i) ASSERT_TRUE(post().ok());
  ASSERT_TRUE(pump([&] {
    return allCompleted(done) && evb_.notifies.size() >= expected_notifies.size();
  })) << next
      << " posted, " << evb_.notifies.size() << " notifies";
  EXPECT_EQ(posted_from_completions, kPipelined - kDepth);
  settle();
  for (size_t i = 0; i < kWrites; ++i) {
    EXPECT_EQ(done[i].calls, 1) << i;
    EXPECT_EQ(done[i].inline_calls, 0) << i;
    EXPECT_TRUE(done[i].last.ok()) << i << ": " << done[i].last.toString();
    EXPECT_EQ(visible_at_completion[i], 1) << "write " << i << " completed before its data landed";
    ASSERT_EQ(remote[i * kStride + kLen], kPoison) << i;
  }
  EXPECT_TRUE(notified_before_data.empty()) << notified_before_data.size() << " early notifies";
  EXPECT_EQ(evb_.notifies, expected_notifies);
}

// close() and destruction with a flush group open (its flush not posted yet) and with one in
// flight: every write completes exactly once, never inside a post call, and the peer sees a
// prefix of the notifies in order.
TEST_P(UcxTransportTest, ClosingWithFlushGroupsPendingCompletesEveryWriteOnce) {
  constexpr size_t kWrites = 100, kLen = 512;
  std::vector<uint8_t> src = randomBytes(kWrites * kLen, 22);
  std::vector<uint8_t> remote(kWrites * kLen, kPoison);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  ASSERT_TRUE(msrc && mremote);
  for (bool destroy : {false, true}) {
    SCOPED_TRACE(destroy ? "endpoint destroyed" : "endpoint closed");
    if (destroy) {
      keys_.clear();
      ea_.reset();
      eb_.reset();
      eva_ = TestEvents();
      evb_ = TestEvents();
      ASSERT_NO_FATAL_FAILURE(connect(kToken + 1));
    }
    RemoteKey* key = import(*ea_, mremote);
    ASSERT_NE(key, nullptr);
    std::vector<TestCompletion> done(kWrites);
    ScopeExit close_first([&] {  // a failed ASSERT returns with writes outstanding
      keys_.clear();
      ea_.reset();
    });
    for (size_t i = 0; i < kWrites; ++i) {
      // Completes the first write's own flush, which posts the open group's flush.
      if (destroy && i == kWrites / 2) a_->progress();
      RmaOp op{msrc, addr(src, i * kLen), key, addr(remote, i * kLen), kLen};
      ASSERT_TRUE(posting([&] {
                    return ea_->postWrite({&op, 1}, static_cast<uint32_t>(i), &done[i]);
                  }).ok())
          << i;
    }
    // 100 writes: the first one's own flush, a full group's flush posted inside a post call,
    // then 35 in a group whose flush is not posted yet (or: 49 in a group flushed by the
    // progress(), then 50 more, in a new group if that flush is still in flight).
    if (destroy) {
      keys_.clear();
      ea_.reset();
    } else {
      ea_->close(Status(StatusCode::kCancelled, "test closes"));
    }
    ASSERT_TRUE(pump([&] { return allCompleted(done); }));
    settle();
    size_t ok = 0;
    for (size_t i = 0; i < kWrites; ++i) {
      EXPECT_EQ(done[i].calls, 1) << i;
      EXPECT_EQ(done[i].inline_calls, 0) << i;
      if (done[i].last.ok()) {
        ++ok;
        EXPECT_EQ(0, std::memcmp(remote.data() + i * kLen, src.data() + i * kLen, kLen)) << i;
      } else {
        EXPECT_EQ(done[i].last.code(), StatusCode::kCancelled) << i << done[i].last.toString();
      }
    }
    if (!destroy) {
      EXPECT_EQ(ok, 0u) << "nothing was progressed before the close";
    }
    for (size_t i = 0; i < evb_.notifies.size(); ++i) EXPECT_EQ(evb_.notifies[i], i);
    if (!destroy) {
      ea_.reset();
      settle();
      for (size_t i = 0; i < kWrites; ++i) EXPECT_EQ(done[i].calls, 1) << i;
    }
  }
}

TEST_P(UcxTransportTest, MessagesSentBeforeThePeerEndpointExistsAreKept) {
  // A fresh connection where only the active side has its endpoint yet.
  TestEvents eva2, evb2;
  EndpointSetup sa;
  sa.role = Role::kActive;
  sa.peer_address = b_->localAddress();
  sa.token = 77;
  sa.max_message_size = kMiB;
  sa.events = &eva2;
  auto ea = a_->createEndpoint(sa);
  ASSERT_TRUE(ea.ok());
  std::vector<uint8_t> m1 = {9, 9}, m2 = randomBytes(512 * 1024, 3);
  MemoryHandle* h1 = reg(*a_, m1, kAccessLocal);
  MemoryHandle* h2 = reg(*a_, m2, kAccessLocal);
  TestCompletion c1, c2;
  ASSERT_TRUE((*ea)->postSend(h1, addr(m1, 0), m1.size(), &c1).ok());
  ASSERT_TRUE((*ea)->postSend(h2, addr(m2, 0), m2.size(), &c2).ok());
  ASSERT_TRUE(pump([&] { return c1.calls && c2.calls; }));
  settle();
  EndpointSetup sb = sa;
  sb.role = Role::kPassive;
  sb.peer_address = a_->localAddress();
  sb.events = &evb2;
  auto eb = b_->createEndpoint(sb);
  ASSERT_TRUE(eb.ok());
  ASSERT_TRUE(pump([&] { return evb2.messages.size() == 2; }));
  EXPECT_EQ(evb2.messages[0], m1);
  EXPECT_EQ(evb2.messages[1], m2);
  EXPECT_TRUE(evb_.messages.empty());  // not routed to the other connection
}

// Only over tcp: UCX detects a dead shm peer by its process id, and two workers of one process
// never die apart. Over shm it is covered across processes by UcxTwoProcessTest.
class UcxTcpTransportTest : public UcxTransportTest {};

TEST_P(UcxTcpTransportTest, PeerDeathBreaksTheEndpoint) {
  std::vector<uint8_t> src(64 * 1024, 1), remote(64 * 1024);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  // Wire up first.
  RmaOp w{msrc, addr(src, 0), key, addr(remote, 0), src.size()};
  TestCompletion first;
  ASSERT_TRUE(ea_->postWrite({&w, 1}, std::nullopt, &first).ok());
  ASSERT_TRUE(waitFor(first));
  ASSERT_TRUE(first.last.ok()) << first.last.toString();

  // B dies: its endpoint, memory and worker go away without telling A.
  eb_.reset();
  std::erase_if(mems_, [&](auto& m) { return m.get() == mremote; });
  b_.reset();

  std::vector<std::unique_ptr<TestCompletion>> ops;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (eva_.errors.empty() && std::chrono::steady_clock::now() < deadline) {
    if (ea_->state() != EndpointState::kBroken && ops.size() < 50) {
      ops.push_back(std::make_unique<TestCompletion>());
      Status s = ea_->postSend(msrc, addr(src, 0), 100, ops.back().get());
      if (!s.ok()) ops.pop_back();
    }
    for (int i = 0; i < 100; ++i) a_->progress();
  }
  ASSERT_FALSE(eva_.errors.empty()) << "peer death not detected";
  EXPECT_EQ(eva_.errors.size(), 1u);
  EXPECT_EQ(eva_.errors[0].code(), StatusCode::kConnectionBroken) << eva_.errors[0].toString();
  EXPECT_EQ(ea_->state(), EndpointState::kBroken);
  EXPECT_EQ(ea_->error().code(), StatusCode::kConnectionBroken);
  pump([&] {
    for (auto& c : ops)
      if (c->calls == 0) return false;
    return true;
  });
  settle();
  for (auto& c : ops) {
    EXPECT_EQ(c->calls, 1);
    EXPECT_EQ(c->inline_calls, 0);
  }
  TestCompletion after;
  EXPECT_EQ(ea_->postSend(msrc, addr(src, 0), 10, &after).code(), StatusCode::kConnectionBroken);
}

// The peer dies with writes waiting on flushes (native RMA; checked RMA waits for the target's
// answers instead): the first write's own flush in flight, a full group's flush posted, and a
// group still open (its flush not posted), all posted before A learns of it. Every write
// completes exactly once, never inside a post call, with the break or Ok with its data in B's
// memory (B took it on the way out); the break is reported once. Then a write posted on the
// broken endpoint fails at once and never completes.
TEST_P(UcxTcpTransportTest, PeerDeathWithWritesInFlushGroupsCompletesEachOnce) {
  constexpr size_t kWrites = 100, kLen = 512;
  std::vector<uint8_t> src = randomBytes(kWrites * kLen, 23);
  std::vector<uint8_t> remote(kWrites * kLen, kPoison);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  RmaOp w{msrc, addr(src, 0), key, addr(remote, 0), kLen};
  TestCompletion first;  // wires the endpoint up
  ASSERT_TRUE(posting([&] { return ea_->postWrite({&w, 1}, std::nullopt, &first); }).ok());
  ASSERT_TRUE(waitFor(first));
  ASSERT_TRUE(first.last.ok()) << first.last.toString();

  std::vector<TestCompletion> done(kWrites);
  std::deque<TestCompletion> probes;
  ScopeExit close_first([&] {  // a failed ASSERT returns with writes outstanding
    keys_.clear();
    ea_.reset();
  });
  for (size_t i = 0; i < kWrites; ++i) {
    RmaOp op{msrc, addr(src, i * kLen), key, addr(remote, i * kLen), kLen};
    ASSERT_TRUE(posting([&] {
                  return ea_->postWrite({&op, 1}, static_cast<uint32_t>(i), &done[i]);
                }).ok())
        << i;
  }
  eb_.reset();  // B dies without telling A
  std::erase_if(mems_, [&](auto& m) { return m.get() == mremote; });
  b_.reset();

  ASSERT_TRUE(pump([&] { return allCompleted(done); }, 60s))
      << "writes still waiting on flushes after the peer died";
  // Had every write got through before B went, A learns of the death from a later one.
  for (int k = 0; k < 100 && ea_->state() != EndpointState::kBroken; ++k) {
    TestCompletion& probe = probes.emplace_back();
    RmaOp op{msrc, addr(src, 0), key, addr(remote, 0), kLen};
    if (!posting([&] { return ea_->postWrite({&op, 1}, 0u, &probe); }).ok()) break;
    ASSERT_TRUE(waitFor(probe, 60s)) << "a write to a dead peer never completed";
  }
  settle();
  size_t ok = 0;
  for (size_t i = 0; i < kWrites; ++i) {
    EXPECT_EQ(done[i].calls, 1) << i;
    EXPECT_EQ(done[i].inline_calls, 0) << i;
    if (done[i].last.ok()) {  // then B took the data before it went (`remote` outlives B)
      ++ok;
      EXPECT_EQ(0, std::memcmp(remote.data() + i * kLen, src.data() + i * kLen, kLen)) << i;
    } else {
      EXPECT_EQ(done[i].last.code(), StatusCode::kConnectionBroken) << i << done[i].last.toString();
    }
  }
  RecordProperty("writes_ok_before_the_break", static_cast<int>(ok));
  ASSERT_EQ(eva_.errors.size(), 1u);
  EXPECT_EQ(eva_.errors[0].code(), StatusCode::kConnectionBroken) << eva_.errors[0].toString();
  EXPECT_EQ(ea_->state(), EndpointState::kBroken);
  TestCompletion after;
  RmaOp op{msrc, addr(src, 0), key, addr(remote, 0), kLen};
  EXPECT_EQ(posting([&] {
              return ea_->postWrite({&op, 1}, 1u, &after);
            }).code(),
            StatusCode::kConnectionBroken);
  settle();
  EXPECT_EQ(after.calls, 0) << "a write refused at post time completed too";
}

// MM_ERROR_HANDLING=y only where a memory-mapper transport (posix, sysv, xpmem) may be used:
// only their ifaces take it, and UCX warns "invalid configuration" about a variable none took.
TEST(UcxSettings, RmaIsCheckedUnlessEveryTransportIsSharedMemory) {
  auto parse = [](std::map<std::string, std::string> params) {
    TransportConfig config;
    config.params = std::move(params);
    return ucx::parseSettings(config);
  };
  auto checked = [&](std::map<std::string, std::string> params) {
    auto s = parse(std::move(params));
    EXPECT_TRUE(s.ok()) << s.status().toString();
    return s.ok() && s->checked_rma;
  };
  for (const char* tls : {"tcp", "tcp,self", "posix,tcp", "all", "^posix", "rc,ud"})
    EXPECT_TRUE(checked({{"ucx.tls", tls}})) << tls;
  for (const char* tls : {"posix,cma,self", "sysv,cma", "\\posix,cma", "self", "shm"})
    EXPECT_FALSE(checked({{"ucx.tls", tls}})) << tls;
  EXPECT_TRUE(checked({{"ucx.tls", "posix,cma,self"}, {"ucx.rma", "checked"}}));
  EXPECT_FALSE(checked({{"ucx.tls", "tcp"}, {"ucx.rma", "native"}}));
  auto bad = parse({{"ucx.rma", "sometimes"}});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  // Checked over tcp: the tcp transport must not offer put_zcopy to peers.
  auto tcp = parse({{"ucx.tls", "tcp"}});
  ASSERT_TRUE(tcp.ok());
  bool put_disabled = false;
  for (const auto& [name, value] : tcp->vars) put_disabled |= name == "PUT_ENABLE" && value == "n";
  EXPECT_TRUE(put_disabled);
}

TEST(UcxSettings, MmErrorHandlingOnlyWhereAMemoryMapperMayBeUsed) {
  auto setsMmErrorHandling = [](std::map<std::string, std::string> params) {
    TransportConfig config;
    config.params = std::move(params);
    auto settings = ucx::parseSettings(config);
    EXPECT_TRUE(settings.ok()) << settings.status().toString();
    if (!settings.ok()) return false;
    for (const auto& [name, value] : settings->vars) {
      if (name == "MM_ERROR_HANDLING") return value == "y";
    }
    return false;
  };
  for (const char* tls : {"posix,cma,self", "sysv,cma,self", "sysv,cma", "xpmem", "mm", "shm", "sm",
                          "all", "^tcp", "\\posix", "tcp,posix:aux"}) {
    EXPECT_TRUE(setsMmErrorHandling({{"ucx.tls", tls}})) << tls;
  }
  for (const char* tls : {"tcp", "tcp,self", "cma", "cma,tcp", "tcp,knem", "self", "\\tcp"}) {
    EXPECT_FALSE(setsMmErrorHandling({{"ucx.tls", tls}})) << tls;
  }
  EXPECT_FALSE(setsMmErrorHandling({{"ucx.TLS", "tcp"}}));
  // Without ucx.tls UCX reads $UCX_TLS; unset, it uses every transport.
  const char* saved = std::getenv("UCX_TLS");
  std::string saved_value = saved != nullptr ? saved : "";
  ::unsetenv("UCX_TLS");
  EXPECT_TRUE(setsMmErrorHandling({}));
  ::setenv("UCX_TLS", "tcp,self", 1);
  EXPECT_FALSE(setsMmErrorHandling({}));
  EXPECT_TRUE(setsMmErrorHandling({{"ucx.tls", "posix,cma,self"}}));  // ucx.tls wins
  ::setenv("UCX_TLS", "sysv,cma", 1);
  EXPECT_TRUE(setsMmErrorHandling({}));
  if (saved != nullptr) {
    ::setenv("UCX_TLS", saved_value.c_str(), 1);
  } else {
    ::unsetenv("UCX_TLS");
  }
  // An explicit ucx.MM_ERROR_HANDLING is the user's choice and stays.
  TransportConfig config;
  config.params = {{"ucx.tls", "tcp"}, {"ucx.MM_ERROR_HANDLING", "n"}};
  auto settings = ucx::parseSettings(config);
  ASSERT_TRUE(settings.ok());
  EXPECT_EQ(std::count(settings->vars.begin(), settings->vars.end(),
                       std::pair<std::string, std::string>("MM_ERROR_HANDLING", "n")),
            1);
}

INSTANTIATE_TEST_SUITE_P(Tls, UcxTransportTest,
                         ::testing::Values(ucxInstance("tcp"), ucxInstance("tcp_native"),
                                           ucxInstance("shm")),
                         contract::instanceName);
INSTANTIATE_TEST_SUITE_P(Tls, HostilePeerTest,
                         ::testing::Values(ucxInstance("tcp"), ucxInstance("shm")),
                         contract::instanceName);
INSTANTIATE_TEST_SUITE_P(Tls, UcxTcpTransportTest,
                         ::testing::Values(ucxInstance("tcp"), ucxInstance("tcp_native")),
                         contract::instanceName);

// ---------------------------------------------------------------------------------------------
// Two processes: this binary re-executes itself as the peer (the child runs the test
// UcxTwoProcessChild.Serve, registered only when ZCX_UCX_CHILD is set). The child registers a
// buffer, echoes every message back, answers a notify with the first bytes of its buffer, and is
// killed at the end to check peer-death detection.

std::map<std::string, std::string> twoProcessParams(const std::string& name) {
  std::map<std::string, std::string> p;
  if (name == "tcp") p = {{"ucx.tls", "tcp"}, {"ucx.net_devices", "lo"}};
  if (name == "posix_cma") p = {{"ucx.tls", "posix,cma,self"}};
  if (name == "sysv_cma") p = {{"ucx.tls", "sysv,cma,self"}};
  p["ucx.KEEPALIVE_INTERVAL"] = "1s";  // detect the killed peer quickly
  return p;
}

bool writeAll(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
bool readAll(int fd, void* data, size_t n) {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}
bool writeBlob(int fd, const std::vector<uint8_t>& v) {
  uint32_t n = static_cast<uint32_t>(v.size());
  return writeAll(fd, &n, 4) && writeAll(fd, v.data(), v.size());
}
bool readBlob(int fd, std::vector<uint8_t>* v) {
  uint32_t n = 0;
  if (!readAll(fd, &n, 4) || n > (1u << 20)) return false;
  v->resize(n);
  return readAll(fd, v->data(), n);
}

constexpr size_t kChildBuffer = 4 * kMiB;
constexpr size_t kNotifyEcho = 4096;

// Not a test of its own: registered only in the child that UcxTwoProcessTest starts (with
// ZCX_UCX_CHILD set), so it never shows up, skipped or disabled, in a normal run.
class UcxTwoProcessChild : public ::testing::Test {
 public:
  void TestBody() override;
};
const bool kChildRegistered =
    std::getenv("ZCX_UCX_CHILD") != nullptr &&
    (::testing::RegisterTest("UcxTwoProcessChild", "Serve", nullptr, nullptr, __FILE__, __LINE__,
                             []() -> UcxTwoProcessChild* { return new UcxTwoProcessChild(); }),
     true);

void UcxTwoProcessChild::TestBody() {
  const char* env = std::getenv("ZCX_UCX_CHILD");
  ASSERT_NE(env, nullptr) << "only runs as the peer of UcxTwoProcessTest";
  int in = 3, out = 4;  // the pipes to the parent (stdout is gtest's)
  TransportConfig config;
  config.params = twoProcessParams(env);
  auto t = ucx::create(config);
  ASSERT_TRUE(t.ok()) << t.status().toString();
  std::vector<uint8_t> buffer(kChildBuffer, 0);
  auto mem =
      (*t)->registerMemory(buffer.data(), buffer.size(), kAccessRemoteRead | kAccessRemoteWrite);
  ASSERT_TRUE(mem.ok()) << mem.status().toString();
  uint64_t base = reinterpret_cast<uint64_t>(buffer.data());
  ASSERT_TRUE(writeBlob(out, (*t)->localAddress()));
  ASSERT_TRUE(writeBlob(out, (*mem)->packedKey()));
  ASSERT_TRUE(writeAll(out, &base, 8));
  std::vector<uint8_t> peer;
  uint64_t token = 0;
  ASSERT_TRUE(readBlob(in, &peer));
  ASSERT_TRUE(readAll(in, &token, 8));

  struct Echo final : EndpointEvents {
    void onMessage(const uint8_t* data, size_t length) override {
      pending.emplace_back(data, data + length);
    }
    void onNotify(uint32_t value) override {
      std::vector<uint8_t> m(4 + kNotifyEcho);
      std::memcpy(m.data(), &value, 4);
      std::memcpy(m.data() + 4, buf->data(), kNotifyEcho);
      pending.push_back(std::move(m));
    }
    void onError(Status) override {}
    std::vector<uint8_t>* buf = nullptr;
    std::deque<std::vector<uint8_t>> pending;
  } events;
  events.buf = &buffer;
  EndpointSetup setup;
  setup.role = Role::kPassive;
  setup.peer_address = peer;
  setup.token = token;
  setup.max_message_size = 8 * kMiB;
  setup.events = &events;
  auto ep = (*t)->createEndpoint(setup);
  ASSERT_TRUE(ep.ok()) << ep.status().toString();
  // Like the core's handshake: the passive endpoint exists before the active side posts (an
  // access for a connection the target does not know is dropped).
  ASSERT_TRUE(writeAll(out, "r", 1));

  std::deque<std::pair<std::vector<uint8_t>, std::unique_ptr<MemoryHandle>>> inflight;
  std::deque<std::unique_ptr<TestCompletion>> completions;
  auto deadline = std::chrono::steady_clock::now() + 120s;
  while (std::chrono::steady_clock::now() < deadline) {  // until the parent kills us
    (*t)->progress();
    while (!events.pending.empty()) {
      inflight.emplace_back(std::move(events.pending.front()), nullptr);
      events.pending.pop_front();
      auto& [bytes, m] = inflight.back();
      if (!bytes.empty()) {
        auto r = (*t)->registerMemory(bytes.data(), bytes.size(), kAccessLocal);
        ASSERT_TRUE(r.ok());
        m = std::move(r).value();
      }
      completions.push_back(std::make_unique<TestCompletion>());
      Status s = (*ep)->postSend(m.get(), reinterpret_cast<uint64_t>(bytes.data()), bytes.size(),
                                 completions.back().get());
      ASSERT_TRUE(s.ok()) << s.toString();
    }
  }
}

class UcxTwoProcessTest : public ::testing::TestWithParam<std::string> {};

TEST_P(UcxTwoProcessTest, RmaMessagesAndPeerDeath) {
  int to_child[2], from_child[2];
  ASSERT_EQ(::pipe(to_child), 0);
  ASSERT_EQ(::pipe(from_child), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Pipes on fds 3 and 4; the child's gtest chatter goes to /dev/null.
    int in = ::dup(to_child[0]), out = ::dup(from_child[1]);
    ::dup2(in, 3);
    ::dup2(out, 4);
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::setenv("ZCX_UCX_CHILD", GetParam().c_str(), 1);
    ::execl("/proc/self/exe", "ucx_transport_test", "--gtest_filter=UcxTwoProcessChild.Serve",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  struct Reaper {
    pid_t pid;
    int fds[2];
    ~Reaper() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      ::close(fds[0]);
      ::close(fds[1]);
    }
  } reaper{pid, {to_child[1], from_child[0]}};

  std::vector<uint8_t> child_address, child_key;
  uint64_t child_base = 0;
  ASSERT_TRUE(readBlob(from_child[0], &child_address)) << "child did not start";
  ASSERT_TRUE(readBlob(from_child[0], &child_key));
  ASSERT_TRUE(readAll(from_child[0], &child_base, 8));

  TransportConfig config;
  config.params = twoProcessParams(GetParam());
  auto t = ucx::create(config);
  ASSERT_TRUE(t.ok()) << t.status().toString();
  Transport& tr = **t;
  uint64_t token = 0xfeedbeef;
  ASSERT_TRUE(writeBlob(to_child[1], tr.localAddress()));
  ASSERT_TRUE(writeAll(to_child[1], &token, 8));
  char child_ready = 0;
  ASSERT_TRUE(readAll(from_child[0], &child_ready, 1)) << "child did not create its endpoint";

  TestEvents events;
  EndpointSetup setup;
  setup.role = Role::kActive;
  setup.peer_address = child_address;
  setup.token = token;
  setup.max_message_size = 8 * kMiB;
  setup.events = &events;
  auto ep = tr.createEndpoint(setup);
  ASSERT_TRUE(ep.ok()) << ep.status().toString();
  auto key = (*ep)->importKey(child_key);
  ASSERT_TRUE(key.ok()) << key.status().toString();
  auto pump = [&](const std::function<bool()>& done, std::chrono::seconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done() && std::chrono::steady_clock::now() < deadline) tr.progress();
    return done();
  };

  // Write with notify: the child answers the notify with its buffer's first bytes.
  const size_t size = 2 * kMiB + 13;
  std::vector<uint8_t> src = randomBytes(size, 11);
  auto msrc = tr.registerMemory(src.data(), src.size(), kAccessLocal);
  ASSERT_TRUE(msrc.ok());
  RmaOp w{msrc->get(), addr0(src), key->get(), child_base + 1, size};
  TestCompletion wc;
  ASSERT_TRUE(posting([&] { return (*ep)->postWrite({&w, 1}, 99u, &wc); }).ok());
  ASSERT_TRUE(pump([&] { return wc.calls > 0 && !events.messages.empty(); }, 30s))
      << "write/notify did not finish: " << wc.calls << " " << wc.last.toString();
  EXPECT_TRUE(wc.last.ok()) << wc.last.toString();
  ASSERT_EQ(events.messages[0].size(), 4 + kNotifyEcho);
  uint32_t echoed = 0;
  std::memcpy(&echoed, events.messages[0].data(), 4);
  EXPECT_EQ(echoed, 99u);
  EXPECT_EQ(events.messages[0][4], 0);  // byte 0 untouched
  EXPECT_EQ(0, std::memcmp(events.messages[0].data() + 5, src.data(), kNotifyEcho - 1))
      << "data not visible when the notify arrived";

  // Read it back.
  std::vector<uint8_t> back(size, kPoison);
  auto mback = tr.registerMemory(back.data(), back.size(), kAccessLocal);
  ASSERT_TRUE(mback.ok());
  RmaOp r{mback->get(), addr0(back), key->get(), child_base + 1, size};
  TestCompletion rc;
  ASSERT_TRUE(posting([&] { return (*ep)->postRead({&r, 1}, &rc); }).ok());
  ASSERT_TRUE(pump([&] { return rc.calls > 0; }, 30s));
  EXPECT_TRUE(rc.last.ok()) << rc.last.toString();
  EXPECT_EQ(back, src);

  // Messages, one large (rendezvous), echoed back in order.
  std::vector<std::vector<uint8_t>> msgs = {randomBytes(10, 1), randomBytes(3 * kMiB, 2),
                                            randomBytes(1000, 3)};
  std::vector<std::unique_ptr<MemoryHandle>> mh;
  std::vector<TestCompletion> sc(msgs.size());
  for (size_t i = 0; i < msgs.size(); ++i) {
    auto m = tr.registerMemory(msgs[i].data(), msgs[i].size(), kAccessLocal);
    ASSERT_TRUE(m.ok());
    mh.push_back(std::move(m).value());
    ASSERT_TRUE((*ep)->postSend(mh.back().get(), addr0(msgs[i]), msgs[i].size(), &sc[i]).ok());
  }
  ASSERT_TRUE(pump([&] { return events.messages.size() == 1 + msgs.size(); }, 30s));
  for (size_t i = 0; i < msgs.size(); ++i) EXPECT_EQ(events.messages[1 + i], msgs[i]) << i;

  // Kill the peer: the endpoint breaks, ops complete exactly once with kConnectionBroken.
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  std::vector<std::unique_ptr<TestCompletion>> ops;
  auto deadline = std::chrono::steady_clock::now() + 60s;
  while (events.errors.empty() && std::chrono::steady_clock::now() < deadline) {
    if ((*ep)->state() != EndpointState::kBroken && ops.size() < 20) {
      ops.push_back(std::make_unique<TestCompletion>());
      RmaOp small{msrc->get(), addr0(src), key->get(), child_base, 64};
      if (!(*ep)->postWrite({&small, 1}, std::nullopt, ops.back().get()).ok()) ops.pop_back();
    }
    for (int i = 0; i < 100; ++i) tr.progress();
  }
  ASSERT_EQ(events.errors.size(), 1u) << "peer death not detected within 60 s";
  EXPECT_EQ(events.errors[0].code(), StatusCode::kConnectionBroken) << events.errors[0].toString();
  EXPECT_EQ((*ep)->state(), EndpointState::kBroken);
  pump(
      [&] {
        for (auto& c : ops)
          if (c->calls == 0) return false;
        return true;
      },
      10s);
  for (int i = 0; i < 200; ++i) tr.progress();
  for (auto& c : ops) {
    EXPECT_EQ(c->calls, 1);
    EXPECT_EQ(c->inline_calls, 0);
    EXPECT_FALSE(c->last.ok());
  }
  key->reset();
  ep->reset();
}

INSTANTIATE_TEST_SUITE_P(Tls, UcxTwoProcessTest, ::testing::Values("tcp", "posix_cma", "sysv_cma"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace zcx::transport

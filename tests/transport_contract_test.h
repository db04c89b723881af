// The transport contract (zcx/transport/transport.h) as one suite for every transport: two
// Transport instances in one process, connected with each other's localAddress(), driven by
// progress() loops with deadlines. A test binary includes this header once and instantiates the
// suite with the transports it tests:
//
//   INSTANTIATE_TEST_SUITE_P(Ucx, TransportContractTest, ::testing::Values(ucxTcp(), ucxShm()),
//                            contract::instanceName);
//
// Where transports legitimately differ (what they say about themselves, how large a message
// their endpoints take, whether close() can release everything at once), TransportUnderTest says
// so and the tests check each transport against what it promises. What only one transport has
// (its wire formats, its own failure modes) is tested in that transport's own test file, often
// with the fixture below (TransportPairTest).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "zcx/transport/transport.h"

namespace zcx::transport::contract {

using namespace std::chrono_literals;

inline constexpr uint8_t kPoison = 0xAB;
inline constexpr size_t kMiB = size_t{1} << 20;

/// One transport configuration the suite runs against, and what that transport promises.
struct TransportUnderTest {
  /// The instance's name in test names ("ucx_tcp", "ucx_shm", "verbs").
  std::string name;
  TransportFactory create = nullptr;
  TransportConfig config;
  /// Why the transport cannot run on this machine (the tests skip with that reason), or "" when
  /// it can. Only a missing device is a reason: a transport that should work and fails to come
  /// up fails the test.
  std::function<std::string()> unavailable;

  // ---- what it says about itself
  std::string transport_name;                ///< Transport::name()
  std::vector<std::string> description_has;  ///< substrings of Transport::description()
  bool allocate = false;                     ///< Capabilities::allocate
  size_t capability_max_message_size = 0;    ///< Capabilities::max_message_size
  bool requires_event_fd = false;            ///< eventFd() must be >= 0 (it may be -1 otherwise)

  // ---- how the pair is connected
  /// EndpointSetup::max_message_size of the fixture's endpoints.
  size_t max_message_size = 0;
  /// The passive endpoint is created before the active one (the other order has its own
  /// transport-specific test).
  bool passive_first = false;

  // ---- where the contract leaves room
  /// close() completes every outstanding operation inside the call. Otherwise some complete
  /// from a later progress() (UCX: requests UCX still holds), as transport.h allows.
  bool close_completes_at_once = false;
  /// The peer's endpoint breaks (and reports onError) when this side closes.
  bool peer_sees_close = false;
  /// importKey() on a closed endpoint fails (a transport whose keys need no connection state may
  /// accept it).
  bool closed_endpoint_refuses_keys = false;
  /// Corruptions of a good packed key this transport's format detects (each must be
  /// kProtocolError), beyond the format-independent ones the suite tries anyway.
  std::function<std::vector<std::vector<uint8_t>>(const std::vector<uint8_t>& good)> malformed_keys;
};

/// What gtest prints for a parameter (in failure messages).
inline void PrintTo(const TransportUnderTest& t, std::ostream* os) { *os << t.name; }

/// gtest's parameter name for an instance.
inline std::string instanceName(const ::testing::TestParamInfo<TransportUnderTest>& info) {
  return info.param.name;
}

/// True while a post*() call runs: a completion seen then was delivered inline (forbidden).
inline bool g_posting = false;

class TestCompletion final : public Completion {
 public:
  void complete(Status status) override {
    ++calls;
    if (g_posting) ++inline_calls;
    last = std::move(status);
    if (on_complete) on_complete();
  }
  int calls = 0;
  int inline_calls = 0;
  Status last{StatusCode::kInternal, "never completed"};
  std::function<void()> on_complete;
};

class TestEvents final : public EndpointEvents {
 public:
  void onMessage(const uint8_t* data, size_t length) override {
    messages.emplace_back(data, data + length);
  }
  void onNotify(uint32_t value) override {
    notifies.push_back(value);
    if (on_notify) on_notify(value);
  }
  void onError(Status why) override { errors.push_back(std::move(why)); }

  std::vector<std::vector<uint8_t>> messages;
  std::vector<uint32_t> notifies;
  std::vector<Status> errors;
  std::function<void(uint32_t)> on_notify;
};

/// Runs a post*() call with the inline-completion detector on.
template <class F>
Status posting(F&& f) {
  g_posting = true;
  Status s = f();
  g_posting = false;
  return s;
}

inline std::vector<uint8_t> randomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

/// Two transports a_ and b_ of GetParam()'s kind and a connected endpoint pair ea_ (active, on
/// a_) and eb_ (passive, on b_).
class TransportPairTest : public ::testing::TestWithParam<TransportUnderTest> {
 protected:
  static constexpr uint64_t kToken = 0x1234567890abcdefull;

  void SetUp() override {
    const TransportUnderTest& p = GetParam();
    if (p.unavailable) {
      if (std::string why = p.unavailable(); !why.empty()) GTEST_SKIP() << why;
    }
    auto a = p.create(p.config);
    ASSERT_TRUE(a.ok()) << a.status().toString();
    auto b = p.create(p.config);
    ASSERT_TRUE(b.ok()) << b.status().toString();
    a_ = std::move(a).value();
    b_ = std::move(b).value();
    connect(kToken);
  }

  void TearDown() override {
    // Keys before endpoints, endpoints before memory, memory before transports (core order).
    keys_.clear();
    ea_.reset();
    eb_.reset();
    mems_.clear();
    a_.reset();
    b_.reset();
  }

  void connect(uint64_t token) {
    EndpointSetup sa;
    sa.role = Role::kActive;
    sa.peer_address = b_->localAddress();
    sa.token = token;
    sa.max_message_size = GetParam().max_message_size;
    sa.events = &eva_;
    EndpointSetup sb = sa;
    sb.role = Role::kPassive;
    sb.peer_address = a_->localAddress();
    sb.events = &evb_;
    auto create = [](Transport& t, const EndpointSetup& s, std::unique_ptr<Endpoint>* out) {
      auto ep = t.createEndpoint(s);
      ASSERT_TRUE(ep.ok()) << ep.status().toString();
      *out = std::move(ep).value();
    };
    if (GetParam().passive_first) {
      ASSERT_NO_FATAL_FAILURE(create(*b_, sb, &eb_));
      ASSERT_NO_FATAL_FAILURE(create(*a_, sa, &ea_));
    } else {
      ASSERT_NO_FATAL_FAILURE(create(*a_, sa, &ea_));
      ASSERT_NO_FATAL_FAILURE(create(*b_, sb, &eb_));
    }
    // The endpoints are usable once the transport's own connection protocol finished (the core
    // waits for the same).
    ASSERT_TRUE(pump([&] {
      return ea_->state() != EndpointState::kConnecting &&
             eb_->state() != EndpointState::kConnecting;
    })) << "the connection was not set up";
    ASSERT_EQ(ea_->state(), EndpointState::kReady) << ea_->error().toString();
    ASSERT_EQ(eb_->state(), EndpointState::kReady) << eb_->error().toString();
  }

  /// Progresses both sides until `done` or the deadline; returns done().
  bool pump(const std::function<bool()>& done, std::chrono::milliseconds timeout = 20s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      if (a_) a_->progress();
      if (b_) b_->progress();
    }
    return true;
  }
  bool waitFor(const TestCompletion& c, std::chrono::milliseconds timeout = 20s) {
    return pump([&] { return c.calls > 0; }, timeout);
  }
  /// Extra progress (at least 200 rounds and at least `d`) to catch a second (forbidden)
  /// completion or a late event.
  void settle(std::chrono::milliseconds d = 50ms) {
    const auto until = std::chrono::steady_clock::now() + d;
    for (int i = 0; i < 200 || std::chrono::steady_clock::now() < until; ++i) {
      if (a_) a_->progress();
      if (b_) b_->progress();
    }
  }

  MemoryHandle* reg(Transport& t, std::vector<uint8_t>& buf, uint32_t access) {
    auto m = t.registerMemory(buf.data(), buf.size(), access);
    EXPECT_TRUE(m.ok()) << m.status().toString();
    if (!m.ok()) return nullptr;
    mems_.push_back(std::move(m).value());
    return mems_.back().get();
  }
  RemoteKey* import(Endpoint& ep, MemoryHandle* mem) {
    auto k = ep.importKey(mem->packedKey());
    EXPECT_TRUE(k.ok()) << k.status().toString();
    if (!k.ok()) return nullptr;
    keys_.push_back(std::move(k).value());
    return keys_.back().get();
  }
  static uint64_t addr(const std::vector<uint8_t>& buf, size_t offset) {
    return reinterpret_cast<uint64_t>(buf.data()) + offset;
  }

  std::unique_ptr<Transport> a_, b_;
  TestEvents eva_, evb_;
  std::unique_ptr<Endpoint> ea_, eb_;
  std::vector<std::unique_ptr<MemoryHandle>> mems_;
  std::vector<std::unique_ptr<RemoteKey>> keys_;
};

class TransportContractTest : public TransportPairTest {};

TEST_P(TransportContractTest, ConnectsAndDescribesItself) {
  const TransportUnderTest& p = GetParam();
  EXPECT_EQ(ea_->state(), EndpointState::kReady);
  EXPECT_EQ(eb_->state(), EndpointState::kReady);
  EXPECT_TRUE(ea_->error().ok());
  EXPECT_TRUE(eb_->error().ok());
  EXPECT_TRUE(eva_.errors.empty());
  EXPECT_TRUE(evb_.errors.empty());
  EXPECT_EQ(a_->name(), p.transport_name);
  std::string d = a_->description();
  for (const std::string& part : p.description_has) {
    EXPECT_NE(d.find(part), std::string::npos) << "'" << part << "' not in " << d;
  }
  Capabilities caps = a_->capabilities();
  EXPECT_TRUE(caps.rma);
  EXPECT_TRUE(caps.send_recv);
  EXPECT_TRUE(caps.notify);
  EXPECT_EQ(caps.allocate, p.allocate);
  EXPECT_EQ(caps.max_message_size, p.capability_max_message_size);
  EXPECT_GE(caps.max_message_size, p.max_message_size);
  if (p.requires_event_fd) {
    EXPECT_GE(a_->eventFd(), 0);
  }
  EXPECT_FALSE(a_->localAddress().empty());
  EXPECT_NE(a_->localAddress(), b_->localAddress());
}

TEST_P(TransportContractTest, WriteAndReadOddSizesAndOffsets) {
  for (size_t size : {size_t{1}, size_t{7}, size_t{4096}, kMiB + 13}) {
    SCOPED_TRACE("size " + std::to_string(size));
    const size_t src_off = 3, dst_off = 5, back_off = 11, slack = 16;
    std::vector<uint8_t> src(size + src_off + slack);
    auto data = randomBytes(size, static_cast<uint32_t>(size));
    std::memcpy(src.data() + src_off, data.data(), size);
    std::vector<uint8_t> remote(size + dst_off + slack, kPoison);
    std::vector<uint8_t> back(size + back_off + slack, kPoison);

    MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
    MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteRead | kAccessRemoteWrite);
    MemoryHandle* mback = reg(*a_, back, kAccessLocal);
    ASSERT_TRUE(msrc && mremote && mback);
    EXPECT_TRUE(msrc->packedKey().empty());
    EXPECT_FALSE(mremote->packedKey().empty());
    RemoteKey* key = import(*ea_, mremote);
    ASSERT_NE(key, nullptr);

    RmaOp w{msrc, addr(src, src_off), key, addr(remote, dst_off), size};
    TestCompletion wc;
    ASSERT_TRUE(posting([&] { return ea_->postWrite({&w, 1}, std::nullopt, &wc); }).ok());
    EXPECT_EQ(wc.calls, 0);
    ASSERT_TRUE(waitFor(wc)) << "write did not complete";
    EXPECT_TRUE(wc.last.ok()) << wc.last.toString();
    EXPECT_EQ(0, std::memcmp(remote.data() + dst_off, data.data(), size));
    for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(remote[i], kPoison) << i;
    for (size_t i = dst_off + size; i < remote.size(); ++i) ASSERT_EQ(remote[i], kPoison) << i;

    RmaOp r{mback, addr(back, back_off), key, addr(remote, dst_off), size};
    TestCompletion rc;
    ASSERT_TRUE(posting([&] { return ea_->postRead({&r, 1}, &rc); }).ok());
    EXPECT_EQ(rc.calls, 0);
    ASSERT_TRUE(waitFor(rc)) << "read did not complete";
    EXPECT_TRUE(rc.last.ok()) << rc.last.toString();
    EXPECT_EQ(0, std::memcmp(back.data() + back_off, data.data(), size));
    for (size_t i = 0; i < back_off; ++i) ASSERT_EQ(back[i], kPoison) << i;
    for (size_t i = back_off + size; i < back.size(); ++i) ASSERT_EQ(back[i], kPoison) << i;

    settle();
    EXPECT_EQ(wc.calls, 1);
    EXPECT_EQ(rc.calls, 1);
    EXPECT_EQ(wc.inline_calls + rc.inline_calls, 0);
    keys_.clear();
    mems_.clear();
  }
}

TEST_P(TransportContractTest, AllocatedMemoryWorksAsTarget) {
  auto m = b_->allocateMemory(64 * 1024, kAccessRemoteWrite | kAccessRemoteRead);
  ASSERT_TRUE(m.ok()) << m.status().toString();
  auto* target = static_cast<uint8_t*>((*m)->address());
  ASSERT_NE(target, nullptr);
  EXPECT_EQ((*m)->length(), 64u * 1024);
  std::memset(target, kPoison, 64 * 1024);
  std::vector<uint8_t> src = randomBytes(1000, 7);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  RemoteKey* key = import(*ea_, m->get());
  ASSERT_TRUE(msrc && key);
  RmaOp w{msrc, addr(src, 0), key, reinterpret_cast<uint64_t>(target) + 17, src.size()};
  TestCompletion wc;
  ASSERT_TRUE(posting([&] { return ea_->postWrite({&w, 1}, std::nullopt, &wc); }).ok());
  ASSERT_TRUE(waitFor(wc));
  EXPECT_TRUE(wc.last.ok()) << wc.last.toString();
  EXPECT_EQ(0, std::memcmp(target + 17, src.data(), src.size()));
  EXPECT_EQ(target[16], kPoison);
  EXPECT_EQ(target[17 + src.size()], kPoison);
  EXPECT_EQ(wc.inline_calls, 0);
  keys_.clear();
  ea_.reset();  // the key's endpoint before the memory
  m->reset();
}

// More operations than a verbs send queue holds (128 by default), targets in reverse order, a
// zero-length op in the middle; written and read back, each batch completing exactly once.
TEST_P(TransportContractTest, BatchOfThousandOpsCompletesOnce) {
  constexpr size_t kOps = 1000, kLen = 61, kStride = 67;
  std::vector<uint8_t> src = randomBytes(kOps * kStride, 99);
  std::vector<uint8_t> remote(kOps * kStride + 64, kPoison);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite | kAccessRemoteRead);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  std::vector<RmaOp> ops;
  for (size_t i = 0; i < kOps; ++i) {
    size_t dst = (kOps - 1 - i) * kStride + 1;
    ops.push_back({msrc, addr(src, i * kStride), key, addr(remote, dst), i == 500 ? 0 : kLen});
  }
  TestCompletion wc;
  ASSERT_TRUE(posting([&] { return ea_->postWrite(ops, std::nullopt, &wc); }).ok());
  EXPECT_EQ(wc.calls, 0);
  ASSERT_TRUE(waitFor(wc, 60s));
  EXPECT_TRUE(wc.last.ok()) << wc.last.toString();
  for (size_t i = 0; i < kOps; ++i) {
    size_t dst = (kOps - 1 - i) * kStride + 1;
    if (i == 500) {
      ASSERT_EQ(remote[dst], kPoison);
      continue;
    }
    ASSERT_EQ(0, std::memcmp(remote.data() + dst, src.data() + i * kStride, kLen)) << "op " << i;
    ASSERT_EQ(remote[dst - 1], kPoison) << "op " << i;
  }
  // The same batch read back.
  std::vector<uint8_t> back(src.size(), kPoison);
  MemoryHandle* mback = reg(*a_, back, kAccessLocal);
  ASSERT_NE(mback, nullptr);
  for (size_t i = 0; i < kOps; ++i) {
    ops[i].local = mback;
    ops[i].local_addr = addr(back, i * kStride);
  }
  TestCompletion rc;
  ASSERT_TRUE(posting([&] { return ea_->postRead(ops, &rc); }).ok());
  EXPECT_EQ(rc.calls, 0);
  ASSERT_TRUE(waitFor(rc, 60s));
  EXPECT_TRUE(rc.last.ok()) << rc.last.toString();
  for (size_t i = 0; i < kOps; ++i) {
    if (i == 500) continue;
    ASSERT_EQ(0, std::memcmp(back.data() + i * kStride, src.data() + i * kStride, kLen)) << i;
  }
  settle();
  EXPECT_EQ(wc.calls, 1);
  EXPECT_EQ(rc.calls, 1);
  EXPECT_EQ(wc.inline_calls + rc.inline_calls, 0);
}

// Batches with nothing to move still complete (later, exactly once) and still notify.
TEST_P(TransportContractTest, EmptyAndZeroLengthBatchesCompleteLaterExactlyOnce) {
  std::vector<uint8_t> remote(4096, kPoison), local(4096, 1);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite | kAccessRemoteRead);
  MemoryHandle* mlocal = reg(*a_, local, kAccessLocal);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(mremote && mlocal && key);
  std::vector<RmaOp> zero(3);  // all length 0, no handles
  RmaOp zero_with_handles{mlocal, addr(local, 0), key, addr(remote, 0), 0};
  TestCompletion w, r, wn, z1, z3;
  ASSERT_TRUE(posting([&] { return ea_->postWrite(zero, std::nullopt, &w); }).ok());
  ASSERT_TRUE(posting([&] { return ea_->postRead(zero, &r); }).ok());
  ASSERT_TRUE(posting([&] { return ea_->postWrite({&zero_with_handles, 1}, 7u, &z1); }).ok());
  ASSERT_TRUE(posting([&] { return ea_->postWrite({}, 42u, &wn); }).ok());
  ASSERT_TRUE(posting([&] {
                return ea_->postWrite({&zero_with_handles, 1}, std::nullopt, &z3);
              }).ok());
  EXPECT_EQ(w.calls + r.calls + wn.calls + z1.calls + z3.calls, 0);  // never inside the post
  ASSERT_TRUE(pump([&] {
    return w.calls && r.calls && wn.calls && z1.calls && z3.calls && evb_.notifies.size() >= 2;
  }));
  settle();
  for (TestCompletion* c : {&w, &r, &wn, &z1, &z3}) {
    EXPECT_EQ(c->calls, 1);
    EXPECT_EQ(c->inline_calls, 0);
    EXPECT_TRUE(c->last.ok()) << c->last.toString();
  }
  EXPECT_EQ(evb_.notifies, (std::vector<uint32_t>{7u, 42u}));
  EXPECT_TRUE(evb_.messages.empty());
  EXPECT_TRUE(eva_.notifies.empty());
  EXPECT_EQ(remote, std::vector<uint8_t>(4096, kPoison));
}

TEST_P(TransportContractTest, WriteWithNotifySeesDataFirst) {
  const size_t size = 256 * 1024 + 3;
  auto data = randomBytes(size, 5);
  std::vector<uint8_t> src = data;
  std::vector<uint8_t> remote(size, kPoison);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  bool data_visible_at_notify = false;
  evb_.on_notify = [&](uint32_t) {
    data_visible_at_notify = std::memcmp(remote.data(), data.data(), size) == 0;
  };
  RmaOp ops[3] = {{msrc, addr(src, 0), key, addr(remote, 0), size / 2},
                  {msrc, addr(src, size / 2), key, addr(remote, size / 2), size - size / 2},
                  {msrc, addr(src, 0), key, addr(remote, 0), 0}};  // zero-length tail
  TestCompletion wc;
  ASSERT_TRUE(posting([&] { return ea_->postWrite(ops, 0xC0FFEEu, &wc); }).ok());
  ASSERT_TRUE(pump([&] { return wc.calls > 0 && !evb_.notifies.empty(); }));
  EXPECT_TRUE(wc.last.ok()) << wc.last.toString();
  EXPECT_EQ(evb_.notifies, std::vector<uint32_t>{0xC0FFEEu});
  EXPECT_TRUE(data_visible_at_notify);
  EXPECT_TRUE(eva_.notifies.empty());
  EXPECT_TRUE(evb_.messages.empty());
  settle();
  EXPECT_EQ(wc.calls, 1);
  EXPECT_EQ(wc.inline_calls, 0);
  EXPECT_EQ(evb_.notifies.size(), 1u);
}

// Messages of every size up to the endpoints' limit (and of 0 bytes) arrive in order; then more
// messages than a verbs receive ring holds go the other way.
TEST_P(TransportContractTest, SendRecvKeepsOrderIncludingLargeMessages) {
  const size_t max = GetParam().max_message_size;
  constexpr int kCount = 100;
  auto sizeOf = [&](int i) -> size_t {
    if (i == 40) return max;  // the largest allowed (UCX: rendezvous)
    if (i == 41) return 0;
    if (i == 70) return std::min<size_t>(300 * 1024, max - 1);  // UCX: rendezvous on most
    return 1 + static_cast<size_t>(i) * 37 % std::min<size_t>(max, 4000);
  };
  std::vector<std::vector<uint8_t>> bufs;
  for (int i = 0; i < kCount; ++i) {
    auto b = randomBytes(sizeOf(i), 1000 + i);
    if (!b.empty()) b[0] = static_cast<uint8_t>(i);
    bufs.push_back(std::move(b));
  }
  std::vector<TestCompletion> done(kCount);
  for (int i = 0; i < kCount; ++i) {
    MemoryHandle* m = bufs[i].empty() ? nullptr : reg(*a_, bufs[i], kAccessLocal);
    uint64_t address = bufs[i].empty() ? 0 : addr(bufs[i], 0);
    Status s = posting([&] { return ea_->postSend(m, address, bufs[i].size(), &done[i]); });
    ASSERT_TRUE(s.ok()) << i << ": " << s.toString();
    // Progress the receiver now and then so messages interleave with posting.
    if (i % 10 == 0) b_->progress();
  }
  ASSERT_TRUE(pump([&] { return evb_.messages.size() >= kCount; }, 60s))
      << evb_.messages.size() << " of " << kCount << " received";
  ASSERT_TRUE(pump([&] {
    for (auto& d : done)
      if (d.calls == 0) return false;
    return true;
  }));
  settle();
  ASSERT_EQ(evb_.messages.size(), static_cast<size_t>(kCount));
  for (int i = 0; i < kCount; ++i) {
    EXPECT_EQ(evb_.messages[i], bufs[i]) << "message " << i << " out of order or corrupted";
    EXPECT_EQ(done[i].calls, 1) << i;
    EXPECT_EQ(done[i].inline_calls, 0) << i;
    EXPECT_TRUE(done[i].last.ok()) << done[i].last.toString();
  }
  EXPECT_TRUE(eva_.messages.empty());

  // And the other direction works independently, with more messages than the receiver's ring
  // (verbs reposts it as it drains).
  constexpr int kBack = 300;
  std::vector<uint8_t> reply(kBack);
  for (int i = 0; i < kBack; ++i) reply[i] = static_cast<uint8_t>(i);
  MemoryHandle* mr = reg(*b_, reply, kAccessLocal);
  ASSERT_NE(mr, nullptr);
  std::vector<TestCompletion> back(kBack);
  for (int i = 0; i < kBack; ++i) {
    Status s = posting([&] { return eb_->postSend(mr, addr(reply, i), 1, &back[i]); });
    ASSERT_TRUE(s.ok()) << i << ": " << s.toString();
  }
  ASSERT_TRUE(pump([&] { return eva_.messages.size() >= kBack && back[kBack - 1].calls > 0; }))
      << eva_.messages.size() << " of " << kBack << " received";
  settle();
  ASSERT_EQ(eva_.messages.size(), static_cast<size_t>(kBack));
  for (int i = 0; i < kBack; ++i) {
    ASSERT_EQ(eva_.messages[i], std::vector<uint8_t>{static_cast<uint8_t>(i)}) << i;
    EXPECT_EQ(back[i].calls, 1) << i;
    EXPECT_EQ(back[i].inline_calls, 0) << i;
    EXPECT_TRUE(back[i].last.ok()) << back[i].last.toString();
  }
  EXPECT_EQ(evb_.messages.size(), static_cast<size_t>(kCount));
}

TEST_P(TransportContractTest, SendLargerThanMaxIsOutOfRange) {
  std::vector<uint8_t> big(GetParam().max_message_size + 1);
  MemoryHandle* m = reg(*a_, big, kAccessLocal);
  ASSERT_NE(m, nullptr);
  TestCompletion c;
  Status s = ea_->postSend(m, addr(big, 0), big.size(), &c);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.toString();
  settle();
  EXPECT_EQ(c.calls, 0);
  EXPECT_EQ(ea_->state(), EndpointState::kReady);
  EXPECT_TRUE(evb_.messages.empty());
}

TEST_P(TransportContractTest, CloseCancelsOutstandingOpsExactlyOnce) {
  const TransportUnderTest& p = GetParam();
  const size_t size = 8 * kMiB;
  std::vector<uint8_t> src(size, 1), remote(size, 0);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite | kAccessRemoteRead);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  std::vector<RmaOp> ops;  // 16 MiB per batch, over the 8 MiB twice
  for (size_t i = 0; i < 16; ++i) {
    size_t off = (i % 8) * kMiB;
    ops.push_back({msrc, addr(src, off), key, addr(remote, off), kMiB});
  }
  // Enough work that it cannot have finished: nothing is progressed between the posts and
  // close().
  std::vector<TestCompletion> w(5);
  TestCompletion r, s;
  for (size_t i = 0; i < w.size(); ++i) {
    std::optional<uint32_t> notify;
    if (i == 0) notify = 7u;
    ASSERT_TRUE(posting([&] { return ea_->postWrite(ops, notify, &w[i]); }).ok()) << i;
  }
  ASSERT_TRUE(posting([&] { return ea_->postRead(ops, &r); }).ok());
  const size_t send_size = std::min(3 * kMiB, p.max_message_size);
  ASSERT_TRUE(posting([&] { return ea_->postSend(msrc, addr(src, 0), send_size, &s); }).ok());
  std::vector<TestCompletion*> all = {&r, &s};
  for (auto& c : w) all.push_back(&c);
  for (TestCompletion* c : all) EXPECT_EQ(c->calls, 0);

  ea_->close(Status(StatusCode::kCancelled, "test closes"));
  if (p.close_completes_at_once) {
    // Before any progress(): everything completed inside close().
    for (TestCompletion* c : all) EXPECT_EQ(c->calls, 1);
  }
  // Every outstanding op completes with the close reason: inside close(), or (for what the
  // transport still held: UCX's flush-mode close needs the peer's progress) from a later
  // progress().
  ASSERT_TRUE(pump([&] {
    for (TestCompletion* c : all)
      if (c->calls == 0) return false;
    return true;
  }));
  for (TestCompletion* c : all) {
    EXPECT_EQ(c->calls, 1);
    EXPECT_EQ(c->inline_calls, 0);
    EXPECT_EQ(c->last.code(), StatusCode::kCancelled) << c->last.toString();
  }
  EXPECT_EQ(ea_->state(), EndpointState::kBroken);
  EXPECT_EQ(ea_->error().code(), StatusCode::kCancelled) << ea_->error().toString();

  ea_->close(Status(StatusCode::kInternal, "again"));  // idempotent
  settle();
  for (TestCompletion* c : all) EXPECT_EQ(c->calls, 1);
  EXPECT_EQ(ea_->state(), EndpointState::kBroken);

  // A closed endpoint refuses new work instead of hanging.
  TestCompletion late_write, late_send;
  EXPECT_FALSE(ea_->postWrite(ops, std::nullopt, &late_write).ok());
  EXPECT_FALSE(ea_->postSend(msrc, addr(src, 0), 1, &late_send).ok());
  if (p.closed_endpoint_refuses_keys) {
    EXPECT_FALSE(ea_->importKey(mremote->packedKey()).ok());
  }
  if (p.peer_sees_close) {
    // The peer learns (its connection is torn down); late flushed completions are ignored.
    EXPECT_TRUE(pump([&] { return eb_->state() == EndpointState::kBroken; }, 10s));
    settle(100ms);
    EXPECT_FALSE(evb_.errors.empty());
  }
  // A remote key destroyed after its endpoint closed, and the endpoint destroyed: harmless.
  keys_.clear();
  ea_.reset();
  settle();
  for (TestCompletion* c : all) EXPECT_EQ(c->calls, 1);
  EXPECT_EQ(late_write.calls, 0);
  EXPECT_EQ(late_send.calls, 0);
}

TEST_P(TransportContractTest, BadPackedKeysAreProtocolErrors) {
  std::vector<uint8_t> remote(4096);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  ASSERT_NE(mremote, nullptr);
  std::vector<uint8_t> good = mremote->packedKey();
  ASSERT_FALSE(good.empty());

  std::vector<std::vector<uint8_t>> bad;
  bad.push_back({});
  bad.push_back({1, 2, 3});
  bad.push_back(randomBytes(good.size(), 1));
  bad.push_back(randomBytes(200, 2));
  bad.push_back(std::vector<uint8_t>(good.begin(), good.begin() + good.size() / 2));
  std::vector<uint8_t> longer(good.begin(), good.end());
  longer.resize(good.size() + 1);
  bad.push_back(longer);
  if (GetParam().malformed_keys) {
    for (auto& k : GetParam().malformed_keys(good)) bad.push_back(std::move(k));
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    auto k = ea_->importKey(bad[i]);
    ASSERT_FALSE(k.ok()) << "bad key " << i << " accepted";
    EXPECT_EQ(k.status().code(), StatusCode::kProtocolError) << i << ": " << k.status().toString();
  }
  auto k = ea_->importKey(good);
  EXPECT_TRUE(k.ok()) << k.status().toString();
  // Local-only memory has no key to give.
  std::vector<uint8_t> local(4096);
  MemoryHandle* mlocal = reg(*a_, local, kAccessLocal);
  ASSERT_NE(mlocal, nullptr);
  EXPECT_TRUE(mlocal->packedKey().empty());
}

}  // namespace zcx::transport::contract

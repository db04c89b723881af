// The UCX transport against itself: two Transport instances (two UCX workers) in one process,
// connected with each other's worker address, driven by progress() loops with deadlines.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <deque>

#include "ucx/factory.h"
#include "ucx/ucx_endpoint.h"
#include "ucx/ucx_params.h"
#include "ucx/ucx_wire.h"
#include "zcx/transport/transport.h"

namespace zcx::transport {
namespace {

using namespace std::chrono_literals;

constexpr uint8_t kPoison = 0xAB;
constexpr size_t kMiB = size_t{1} << 20;

/// True while a post*() call runs: a completion seen then was delivered inline (forbidden).
bool g_posting = false;

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
  Status last;
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

std::map<std::string, std::string> paramsFor(const std::string& name) {
  if (name == "tcp") return {{"ucx.tls", "tcp"}, {"ucx.net_devices", "lo"}};
  // Shared memory: posix for AM + cma for zero-copy put/get (MM_ERROR_HANDLING=y is set by the
  // transport itself); self covers loopback within one worker.
  return {{"ucx.tls", "posix,cma,self"}};
}

uint64_t addr0(const std::vector<uint8_t>& buf) { return reinterpret_cast<uint64_t>(buf.data()); }

std::vector<uint8_t> randomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

class UcxTransportTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    TransportConfig config;
    config.params = paramsFor(GetParam());
    auto a = ucx::create(config);
    ASSERT_TRUE(a.ok()) << a.status().toString();
    auto b = ucx::create(config);
    ASSERT_TRUE(b.ok()) << b.status().toString();
    a_ = std::move(a).value();
    b_ = std::move(b).value();
    connect(0x1234567890abcdefull);
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
    sa.max_message_size = 4 * kMiB;
    sa.events = &eva_;
    auto ea = a_->createEndpoint(sa);
    ASSERT_TRUE(ea.ok()) << ea.status().toString();
    EndpointSetup sb = sa;
    sb.role = Role::kPassive;
    sb.peer_address = a_->localAddress();
    sb.events = &evb_;
    auto eb = b_->createEndpoint(sb);
    ASSERT_TRUE(eb.ok()) << eb.status().toString();
    ea_ = std::move(ea).value();
    eb_ = std::move(eb).value();
    // The endpoints are usable once UCX wireup finished (the core waits for the same).
    ASSERT_TRUE(pump([&] {
      return ea_->state() != EndpointState::kConnecting &&
             eb_->state() != EndpointState::kConnecting;
    })) << "wireup did not finish";
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
  /// Extra progress rounds to catch a second (forbidden) completion.
  void settle() {
    for (int i = 0; i < 200; ++i) {
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

TEST_P(UcxTransportTest, DescribesItself) {
  EXPECT_EQ(a_->name(), "ucx");
  std::string d = a_->description();
  EXPECT_NE(d.find("ucx 1."), std::string::npos) << d;
  EXPECT_NE(d.find("tls="), std::string::npos) << d;
  EXPECT_TRUE(a_->capabilities().allocate);
  EXPECT_GT(a_->capabilities().max_message_size, 4 * kMiB);
  EXPECT_FALSE(a_->localAddress().empty());
  EXPECT_EQ(ea_->state(), EndpointState::kReady);
  EXPECT_TRUE(ea_->error().ok());
}

TEST_P(UcxTransportTest, WriteAndReadOddSizesAndOffsets) {
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
    RemoteKey* key = import(*ea_, mremote);
    ASSERT_NE(key, nullptr);

    RmaOp w{msrc, addr(src, src_off), key, addr(remote, dst_off), size};
    TestCompletion wc;
    ASSERT_TRUE(posting([&] { return ea_->postWrite({&w, 1}, std::nullopt, &wc); }).ok());
    EXPECT_EQ(wc.calls, 0);
    ASSERT_TRUE(waitFor(wc));
    EXPECT_TRUE(wc.last.ok()) << wc.last.toString();
    EXPECT_EQ(0, std::memcmp(remote.data() + dst_off, data.data(), size));
    for (size_t i = 0; i < dst_off; ++i) ASSERT_EQ(remote[i], kPoison) << i;
    for (size_t i = dst_off + size; i < remote.size(); ++i) ASSERT_EQ(remote[i], kPoison) << i;

    RmaOp r{mback, addr(back, back_off), key, addr(remote, dst_off), size};
    TestCompletion rc;
    ASSERT_TRUE(posting([&] { return ea_->postRead({&r, 1}, &rc); }).ok());
    EXPECT_EQ(rc.calls, 0);
    ASSERT_TRUE(waitFor(rc));
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

TEST_P(UcxTransportTest, AllocatedMemoryWorksAsTarget) {
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
  keys_.clear();
  ea_.reset();  // the key's endpoint before the memory
  m->reset();
}

TEST_P(UcxTransportTest, BatchOfThousandOpsCompletesOnce) {
  constexpr size_t kOps = 1000, kLen = 61, kStride = 67;
  std::vector<uint8_t> src = randomBytes(kOps * kStride, 99);
  std::vector<uint8_t> remote(kOps * kStride + 64, kPoison);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite | kAccessRemoteRead);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  std::vector<RmaOp> ops;
  for (size_t i = 0; i < kOps; ++i) {
    // Reverse order of targets, and a zero-length op in the middle.
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
  for (size_t i = 0; i < kOps; ++i) {
    ops[i].local = mback;
    ops[i].local_addr = addr(back, i * kStride);
  }
  TestCompletion rc;
  ASSERT_TRUE(posting([&] { return ea_->postRead(ops, &rc); }).ok());
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

TEST_P(UcxTransportTest, EmptyAndZeroLengthBatchesCompleteLaterExactlyOnce) {
  std::vector<RmaOp> zero(3);  // all length 0, no handles needed
  TestCompletion w, r, wn;
  ASSERT_TRUE(posting([&] { return ea_->postWrite(zero, std::nullopt, &w); }).ok());
  ASSERT_TRUE(posting([&] { return ea_->postRead(zero, &r); }).ok());
  ASSERT_TRUE(posting([&] { return ea_->postWrite({}, 42u, &wn); }).ok());
  EXPECT_EQ(w.calls + r.calls + wn.calls, 0);  // never inside the post call
  ASSERT_TRUE(pump([&] { return w.calls && r.calls && wn.calls && !evb_.notifies.empty(); }));
  settle();
  EXPECT_EQ(w.calls, 1);
  EXPECT_EQ(r.calls, 1);
  EXPECT_EQ(wn.calls, 1);
  EXPECT_TRUE(w.last.ok() && r.last.ok() && wn.last.ok());
  EXPECT_EQ(w.inline_calls + r.inline_calls + wn.inline_calls, 0);
  EXPECT_EQ(evb_.notifies, std::vector<uint32_t>{42u});
}

TEST_P(UcxTransportTest, WriteWithNotifySeesDataFirst) {
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
  RmaOp ops[2] = {{msrc, addr(src, 0), key, addr(remote, 0), size / 2},
                  {msrc, addr(src, size / 2), key, addr(remote, size / 2), size - size / 2}};
  TestCompletion wc;
  ASSERT_TRUE(posting([&] { return ea_->postWrite(ops, 0xC0FFEEu, &wc); }).ok());
  ASSERT_TRUE(pump([&] { return wc.calls > 0 && !evb_.notifies.empty(); }));
  EXPECT_TRUE(wc.last.ok()) << wc.last.toString();
  EXPECT_EQ(evb_.notifies, std::vector<uint32_t>{0xC0FFEEu});
  EXPECT_TRUE(data_visible_at_notify);
  EXPECT_TRUE(eva_.notifies.empty());
  settle();
  EXPECT_EQ(wc.calls, 1);
  EXPECT_EQ(wc.inline_calls, 0);
  EXPECT_EQ(evb_.notifies.size(), 1u);
}

TEST_P(UcxTransportTest, SendRecvKeepsOrderIncludingLargeMessages) {
  constexpr int kCount = 100;
  auto sizeOf = [](int i) -> size_t {
    if (i == 40) return 3 * kMiB + 1;  // rendezvous
    if (i == 41) return 0;
    if (i == 70) return 300 * 1024;  // rendezvous on most transports
    return 1 + static_cast<size_t>(i) * 37;
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

  // And the other direction works independently.
  std::vector<uint8_t> reply = {1, 2, 3};
  MemoryHandle* mr = reg(*b_, reply, kAccessLocal);
  TestCompletion rc;
  ASSERT_TRUE(posting([&] { return eb_->postSend(mr, addr(reply, 0), reply.size(), &rc); }).ok());
  ASSERT_TRUE(pump([&] { return rc.calls > 0 && eva_.messages.size() == 1; }));
  EXPECT_EQ(eva_.messages[0], reply);
}

TEST_P(UcxTransportTest, SendLargerThanMaxIsOutOfRange) {
  std::vector<uint8_t> big(4 * kMiB + 1);
  MemoryHandle* m = reg(*a_, big, kAccessLocal);
  TestCompletion c;
  Status s = ea_->postSend(m, addr(big, 0), big.size(), &c);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.toString();
  settle();
  EXPECT_EQ(c.calls, 0);
}

TEST_P(UcxTransportTest, CloseCancelsOutstandingOpsExactlyOnce) {
  const size_t size = 8 * kMiB;
  std::vector<uint8_t> src(size, 1), remote(size, 0);
  MemoryHandle* msrc = reg(*a_, src, kAccessLocal);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite | kAccessRemoteRead);
  RemoteKey* key = import(*ea_, mremote);
  ASSERT_TRUE(msrc && mremote && key);
  std::vector<RmaOp> ops;
  for (size_t off = 0; off < size; off += kMiB) {
    ops.push_back({msrc, addr(src, off), key, addr(remote, off), kMiB});
  }
  TestCompletion w, r, s;
  ASSERT_TRUE(posting([&] { return ea_->postWrite(ops, 7u, &w); }).ok());
  ASSERT_TRUE(posting([&] { return ea_->postRead(ops, &r); }).ok());
  ASSERT_TRUE(posting([&] { return ea_->postSend(msrc, addr(src, 0), 3 * kMiB, &s); }).ok());
  EXPECT_EQ(w.calls + r.calls + s.calls, 0);

  ea_->close(Status(StatusCode::kCancelled, "test closes"));
  // Every outstanding op completes with the close reason: inside close(), or (for what UCX
  // still held: the flush-mode close needs the peer's progress) from a later progress().
  ASSERT_TRUE(pump([&] { return w.calls && r.calls && s.calls; }));
  EXPECT_EQ(w.calls, 1);
  EXPECT_EQ(r.calls, 1);
  EXPECT_EQ(s.calls, 1);
  EXPECT_EQ(w.last.code(), StatusCode::kCancelled) << w.last.toString();
  EXPECT_EQ(r.last.code(), StatusCode::kCancelled) << r.last.toString();
  EXPECT_EQ(s.last.code(), StatusCode::kCancelled) << s.last.toString();
  EXPECT_EQ(ea_->state(), EndpointState::kBroken);
  EXPECT_EQ(ea_->error().code(), StatusCode::kCancelled);

  ea_->close(Status(StatusCode::kInternal, "again"));  // idempotent
  settle();
  EXPECT_EQ(w.calls, 1);
  EXPECT_EQ(r.calls, 1);
  EXPECT_EQ(s.calls, 1);

  TestCompletion late;
  EXPECT_FALSE(ea_->postWrite(ops, std::nullopt, &late).ok());
  EXPECT_FALSE(ea_->importKey(mremote->packedKey()).ok());
  // A remote key destroyed after its endpoint closed, and after it was destroyed: harmless.
  keys_.clear();
  ea_.reset();
  settle();
  EXPECT_EQ(late.calls, 0);
}

TEST_P(UcxTransportTest, KeyOutlivingItsEndpointIsHarmless) {
  std::vector<uint8_t> remote(4096);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  auto key = ea_->importKey(mremote->packedKey());
  ASSERT_TRUE(key.ok());
  ea_.reset();
  key->reset();  // no crash, no double destroy
  settle();
}

TEST_P(UcxTransportTest, BadPackedKeysAreProtocolErrors) {
  std::vector<uint8_t> remote(4096);
  MemoryHandle* mremote = reg(*b_, remote, kAccessRemoteWrite);
  std::vector<uint8_t> good = mremote->packedKey();
  ASSERT_FALSE(good.empty());

  std::vector<std::vector<uint8_t>> bad;
  bad.push_back({});
  bad.push_back({1, 2, 3});
  bad.push_back(randomBytes(good.size(), 1));
  bad.push_back(randomBytes(200, 2));
  bad.push_back(std::vector<uint8_t>(good.begin(), good.begin() + good.size() / 2));
  std::vector<uint8_t> flipped(good.begin(), good.end());
  for (size_t i = good.size() - 8; i < good.size(); ++i) flipped[i] ^= 0x5a;
  bad.push_back(flipped);
  std::vector<uint8_t> longer(good.begin(), good.end());
  longer.resize(good.size() + 1);
  bad.push_back(longer);
  for (size_t i = 0; i < bad.size(); ++i) {
    auto k = ea_->importKey(bad[i]);
    ASSERT_FALSE(k.ok()) << "bad key " << i << " accepted";
    EXPECT_EQ(k.status().code(), StatusCode::kProtocolError) << k.status().toString();
  }
  auto k = ea_->importKey(good);
  EXPECT_TRUE(k.ok()) << k.status().toString();
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
  passthrough.params = paramsFor(GetParam());
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

// MM_ERROR_HANDLING=y only where a memory-mapper transport (posix, sysv, xpmem) may be used:
// only their ifaces take it, and UCX warns "invalid configuration" about a variable none took.
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

INSTANTIATE_TEST_SUITE_P(Tls, UcxTransportTest, ::testing::Values("tcp", "shm"),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Tls, HostilePeerTest, ::testing::Values("tcp", "shm"),
                         [](const auto& info) { return std::string(info.param); });
INSTANTIATE_TEST_SUITE_P(Tls, UcxTcpTransportTest, ::testing::Values("tcp"),
                         [](const auto& info) { return info.param; });

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

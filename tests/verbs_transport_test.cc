// Tests of the verbs transport. They need an RDMA device (run them in the soft-RoCE guest:
// scripts/test-rxe.sh); where there is none they skip and say so, and VerbsNoDevice checks what
// create() says about the machine (it runs everywhere).
//
// The transport contract (tests/transport_contract_test.h) runs here as
// Verbs/TransportContractTest.*/verbs; this file adds what is verbs' own: rdma_cm connection
// setup, remote access rights enforced by the device, the completion channel behind eventFd(),
// QP draining on close and the device's async events.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "transport_contract_test.h"
#include "verbs/factory.h"
#include "verbs/testing.h"
#include "verbs/verbs_memory.h"
#include "verbs/verbs_params.h"
#include "verbs/verbs_wire.h"
#include "zcx/transport/transport.h"

namespace zcx::transport {
namespace {

using namespace std::chrono_literals;
using contract::TransportContractTest;
using contract::TransportUnderTest;

int rdmaDeviceCount() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list != nullptr) ibv_free_device_list(list);
  return list == nullptr ? 0 : n;
}

/// Why the verbs tests cannot run here, or "" when they can.
std::string noDeviceReason() {
  if (rdmaDeviceCount() > 0) return "";
  return "no RDMA device on this machine (ibv_get_device_list found none): the verbs transport "
         "is tested where one exists, e.g. soft-RoCE in a QEMU guest (scripts/test-rxe.sh)";
}

/// The verbs transport on the first usable device, and what it promises the contract suite.
TransportUnderTest verbsInstance() {
  TransportUnderTest t;
  t.name = "verbs";
  t.create = &verbs::create;
  t.unavailable = noDeviceReason;
  t.transport_name = "verbs";
  t.description_has = {"verbs ", " port ", " gid "};
  t.allocate = false;
  t.capability_max_message_size = size_t{1} << 20;  // VerbsTransport::kMaxMessageSize
  t.requires_event_fd = true;
  t.max_message_size = 64 << 10;
  t.passive_first = true;  // the other order: VerbsConnectRequestBeforePassiveEndpointIsStashed
  t.close_completes_at_once = true;
  t.peer_sees_close = true;                // rdma_disconnect reaches the peer
  t.closed_endpoint_refuses_keys = false;  // a verbs key is self-contained (rkey, range)
  t.malformed_keys = [](const std::vector<uint8_t>& good) {
    std::vector<std::vector<uint8_t>> bad(4, good);
    bad[0][0] ^= 0xff;                                         // magic
    bad[1][3] = 99;                                            // version
    std::fill(bad[2].begin() + 16, bad[2].end(), 0);           // empty range
    std::fill(bad[3].begin() + 8, bad[3].begin() + 16, 0xff);  // range wraps around
    return bad;
  };
  return t;
}

INSTANTIATE_TEST_SUITE_P(Verbs, TransportContractTest, ::testing::Values(verbsInstance()),
                         contract::instanceName);

/// Counts calls to complete().
struct Done final : Completion {
  int calls = 0;
  Status status{StatusCode::kInternal, "never completed"};
  void complete(Status s) override {
    ++calls;
    status = std::move(s);
  }
};

struct Events final : EndpointEvents {
  std::vector<std::vector<uint8_t>> messages;
  std::vector<uint32_t> notifies;
  std::vector<Status> errors;
  std::function<void(uint32_t)> on_notify;
  void onMessage(const uint8_t* data, size_t length) override {
    messages.emplace_back(data, data + length);
  }
  void onNotify(uint32_t value) override {
    if (on_notify) on_notify(value);
    notifies.push_back(value);
  }
  void onError(Status why) override { errors.push_back(std::move(why)); }
};

class VerbsTransport : public ::testing::Test {
 protected:
  /// The two transports' configurations (subclasses choose GIDs) and why they cannot run.
  virtual TransportConfig configA() { return {}; }
  virtual TransportConfig configB() { return {}; }
  virtual std::string unavailable() { return ""; }

  void SetUp() override {
    if (std::string why = noDeviceReason(); !why.empty()) GTEST_SKIP() << why;
    if (std::string why = unavailable(); !why.empty()) GTEST_SKIP() << why;
    auto a = verbs::create(configA());
    ASSERT_TRUE(a.ok()) << "verbs transport needs an RDMA device (run in the rxe guest): "
                        << a.status().toString();
    auto b = verbs::create(configB());
    ASSERT_TRUE(b.ok()) << b.status().toString();
    ta_ = std::move(*a);
    tb_ = std::move(*b);
    std::mt19937_64 rng(std::random_device{}());
    const uint64_t token = rng();
    EndpointSetup sb;
    sb.role = Role::kPassive;
    sb.peer_address = ta_->localAddress();
    sb.token = token;
    sb.max_message_size = 64 << 10;
    sb.events = &eb_;
    // Passive first here; the other order (request before createEndpoint) has its own test.
    auto epb = tb_->createEndpoint(sb);
    ASSERT_TRUE(epb.ok()) << epb.status().toString();
    EndpointSetup sa = sb;
    sa.role = Role::kActive;
    sa.peer_address = tb_->localAddress();
    sa.events = &ea_;
    auto epa = ta_->createEndpoint(sa);
    ASSERT_TRUE(epa.ok()) << epa.status().toString();
    a_ = std::move(*epa);
    b_ = std::move(*epb);
    EXPECT_EQ(a_->state(), EndpointState::kConnecting);
    ASSERT_TRUE(pump([&] { return ready(); }, 20s))
        << "a: " << a_->error().toString() << " b: " << b_->error().toString();

    const size_t size = 2 << 20;
    bufa_.assign(size, 0);
    bufb_.assign(size, 0);
    auto ma = ta_->registerMemory(bufa_.data(), size, kAccessRemoteRead | kAccessRemoteWrite);
    ASSERT_TRUE(ma.ok()) << ma.status().toString();
    auto mb = tb_->registerMemory(bufb_.data(), size, kAccessRemoteRead | kAccessRemoteWrite);
    ASSERT_TRUE(mb.ok()) << mb.status().toString();
    ma_ = std::move(*ma);
    mb_ = std::move(*mb);
    auto kb = a_->importKey(mb_->packedKey());
    ASSERT_TRUE(kb.ok()) << kb.status().toString();
    kb_ = std::move(*kb);
  }

  void TearDown() override {
    kb_.reset();
    a_.reset();
    b_.reset();
    ma_.reset();
    mb_.reset();
    ta_.reset();
    tb_.reset();
  }

  bool ready() const {
    return a_ && b_ && a_->state() == EndpointState::kReady && b_->state() == EndpointState::kReady;
  }

  /// Drives both transports until pred() holds or the deadline passes.
  bool pump(const std::function<bool()>& pred, std::chrono::milliseconds limit = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      if (ta_) ta_->progress();
      if (tb_) tb_->progress();
      if (pred()) return true;
    }
    return pred();
  }

  /// Keeps progressing for a while (to see that nothing more happens).
  void settle(std::chrono::milliseconds d = 200ms) {
    pump([] { return false; }, d);
  }

  uint64_t addrA(size_t off) { return reinterpret_cast<uintptr_t>(bufa_.data()) + off; }
  uint64_t addrB(size_t off) { return reinterpret_cast<uintptr_t>(bufb_.data()) + off; }

  /// Moves bytes both ways over the connection (a write with a notification, a read, a message)
  /// and checks every byte.
  void checkBytesMove() {
    const size_t n = 1 << 20;
    for (size_t i = 0; i < n; ++i) bufa_[i] = static_cast<uint8_t>(i * 7 + 3);
    RmaOp w{ma_.get(), addrA(0), kb_.get(), addrB(0), n};
    Done& wd = newDone();
    ASSERT_TRUE(a_->postWrite({&w, 1}, 77u, &wd).ok());
    ASSERT_TRUE(pump([&] { return wd.calls > 0 && !eb_.notifies.empty(); }, 60s));
    ASSERT_TRUE(wd.status.ok()) << wd.status.toString();
    EXPECT_EQ(eb_.notifies, std::vector<uint32_t>{77});
    EXPECT_TRUE(std::equal(bufa_.begin(), bufa_.begin() + n, bufb_.begin()));
    for (size_t i = 0; i < n; ++i) bufb_[n + i] = static_cast<uint8_t>(i * 13 + 1);
    RmaOp r{ma_.get(), addrA(n), kb_.get(), addrB(n), n};
    Done& rd = newDone();
    ASSERT_TRUE(a_->postRead({&r, 1}, &rd).ok());
    ASSERT_TRUE(pump([&] { return rd.calls > 0; }, 60s));
    ASSERT_TRUE(rd.status.ok()) << rd.status.toString();
    EXPECT_TRUE(std::equal(bufb_.begin() + n, bufb_.end(), bufa_.begin() + n));
    Done& sd = newDone();
    ASSERT_TRUE(a_->postSend(ma_.get(), addrA(100), 4000, &sd).ok());
    ASSERT_TRUE(pump([&] { return sd.calls > 0 && !eb_.messages.empty(); }, 60s));
    ASSERT_TRUE(sd.status.ok()) << sd.status.toString();
    ASSERT_EQ(eb_.messages.size(), 1u);
    EXPECT_EQ(eb_.messages[0], std::vector<uint8_t>(bufa_.begin() + 100, bufa_.begin() + 4100));
  }

  Done& newDone() { return dones_.emplace_back(); }

  std::deque<Done> dones_;  // before the endpoints: closing them may still complete these
  std::unique_ptr<Transport> ta_, tb_;
  Events ea_, eb_;
  std::unique_ptr<Endpoint> a_, b_;
  std::vector<uint8_t> bufa_, bufb_;
  std::unique_ptr<MemoryHandle> ma_, mb_;
  std::unique_ptr<RemoteKey> kb_;
};

TEST_F(VerbsTransport, VerbsWriteToReadOnlyRegionIsRemoteAccessError) {
  std::vector<uint8_t> ro(8192, 0x11);
  auto mro = tb_->registerMemory(ro.data(), ro.size(), kAccessRemoteRead);
  ASSERT_TRUE(mro.ok());
  auto key = a_->importKey((*mro)->packedKey());
  ASSERT_TRUE(key.ok());
  // Reading it is fine.
  RmaOp rop{ma_.get(), addrA(0), key->get(), reinterpret_cast<uintptr_t>(ro.data()), 100};
  Done& r = newDone();
  ASSERT_TRUE(a_->postRead({&rop, 1}, &r).ok());
  ASSERT_TRUE(pump([&] { return r.calls > 0; }));
  EXPECT_TRUE(r.status.ok()) << r.status.toString();
  // Writing it fails, and so does everything queued behind it.
  Done& w = newDone();
  Done& after = newDone();
  ASSERT_TRUE(a_->postWrite({&rop, 1}, std::nullopt, &w).ok());
  RmaOp fine{ma_.get(), addrA(0), kb_.get(), addrB(0), 100};
  ASSERT_TRUE(a_->postWrite({&fine, 1}, std::nullopt, &after).ok());
  ASSERT_TRUE(pump([&] { return w.calls > 0 && after.calls > 0; }, 30s));
  EXPECT_EQ(w.status.code(), StatusCode::kRemoteAccessError) << w.status.toString();
  EXPECT_NE(w.status.message().find("remote"), std::string::npos) << w.status.toString();
  EXPECT_FALSE(after.status.ok());
  ASSERT_TRUE(pump([&] { return !ea_.errors.empty(); }, 5s));
  EXPECT_EQ(a_->state(), EndpointState::kBroken);
  EXPECT_FALSE(a_->error().ok());
  EXPECT_EQ(std::vector<uint8_t>(ro.begin(), ro.begin() + 100), std::vector<uint8_t>(100, 0x11));
  // The endpoint refuses new work instead of hanging.
  Done& later = newDone();
  EXPECT_FALSE(a_->postWrite({&fine, 1}, std::nullopt, &later).ok());
  // The peer learns too (its QP errs or it sees the disconnect).
  EXPECT_TRUE(pump([&] { return b_->state() == EndpointState::kBroken; }, 10s));
  settle(50ms);
  EXPECT_EQ(w.calls, 1);
  EXPECT_EQ(after.calls, 1);
  EXPECT_EQ(later.calls, 0);
  key->reset();
}

TEST_F(VerbsTransport, VerbsRegistrationOpensNothingRemoteUntilItsKeyIsHandedOut) {
  // A peer that guesses a registration's key (rxe: MR index + 8 bits; the lkey is that value)
  // must get nothing: remote rights live only in keys handed out (packedKey, grants).
  std::vector<uint8_t> rw(8192, 0x22);
  auto mrw = tb_->registerMemory(rw.data(), rw.size(), kAccessRemoteRead | kAccessRemoteWrite);
  ASSERT_TRUE(mrw.ok());
  const uint32_t guessed = static_cast<verbs::VerbsMemory*>(mrw->get())->lkey();
  auto forged =
      a_->importKey(verbs::packKey(guessed, reinterpret_cast<uintptr_t>(rw.data()), rw.size()));
  ASSERT_TRUE(forged.ok());
  RmaOp op{ma_.get(), addrA(0), forged->get(), reinterpret_cast<uintptr_t>(rw.data()), 100};
  Done& w = newDone();
  ASSERT_TRUE(a_->postWrite({&op, 1}, std::nullopt, &w).ok());
  ASSERT_TRUE(pump([&] { return w.calls > 0; }, 30s));
  EXPECT_EQ(w.status.code(), StatusCode::kRemoteAccessError) << w.status.toString();
  EXPECT_EQ(std::vector<uint8_t>(rw.begin(), rw.begin() + 100), std::vector<uint8_t>(100, 0x22));
  forged->reset();
}

TEST_F(VerbsTransport, VerbsConnectRequestBeforePassiveEndpointIsStashed) {
  // The active side connects before the passive side has called createEndpoint.
  Events ea2, eb2;
  EndpointSetup sa;
  sa.role = Role::kActive;
  sa.peer_address = tb_->localAddress();
  sa.token = 0x1234567890abcdefULL;
  sa.max_message_size = 4096;
  sa.events = &ea2;
  auto a2 = ta_->createEndpoint(sa);
  ASSERT_TRUE(a2.ok()) << a2.status().toString();
  settle(300ms);  // the request reaches tb_ and waits there
  EXPECT_EQ((*a2)->state(), EndpointState::kConnecting);
  EndpointSetup sb = sa;
  sb.role = Role::kPassive;
  sb.peer_address = ta_->localAddress();
  sb.events = &eb2;
  auto b2 = tb_->createEndpoint(sb);
  ASSERT_TRUE(b2.ok()) << b2.status().toString();
  ASSERT_TRUE(pump([&] {
    return (*a2)->state() == EndpointState::kReady && (*b2)->state() == EndpointState::kReady;
  })) << (*a2)->error().toString()
      << " / " << (*b2)->error().toString();
  bufa_[0] = 77;
  Done& d = newDone();
  ASSERT_TRUE((*a2)->postSend(ma_.get(), addrA(0), 1, &d).ok());
  ASSERT_TRUE(pump([&] { return d.calls > 0 && eb2.messages.size() == 1; }));
  EXPECT_EQ(eb2.messages[0][0], 77);
  // The first pair is untouched.
  EXPECT_TRUE(ready());
}

TEST_F(VerbsTransport, VerbsConnectToNobodyFailsWithoutHanging) {
  Events e;
  EndpointSetup s;
  s.role = Role::kActive;
  std::vector<uint8_t> addr = tb_->localAddress();
  addr[8] ^= 0x5a;  // another port: nobody listens there
  s.peer_address = addr;
  s.token = 99;
  s.max_message_size = 4096;
  s.events = &e;
  auto ep = ta_->createEndpoint(s);
  ASSERT_TRUE(ep.ok()) << ep.status().toString();
  ASSERT_TRUE(pump([&] { return (*ep)->state() == EndpointState::kBroken; }, 30s));
  EXPECT_FALSE((*ep)->error().ok());
  EXPECT_EQ(e.errors.size(), 1u);
  EXPECT_FALSE(ta_->createEndpoint({Role::kActive, {1, 2, 3}, 5, 4096, &e}).ok());
}

TEST_F(VerbsTransport, VerbsEventFdWakesOnCompletion) {
  // Idle: arm() says we may sleep.
  settle(20ms);
  bool armed = false;
  for (int i = 0; i < 100 && !armed; ++i) {
    ta_->progress();
    tb_->progress();
    armed = ta_->arm();
  }
  EXPECT_TRUE(armed);
  // b posts at once (its QP is ready), so a's fd must become readable without progressing a.
  Done& d = newDone();
  ASSERT_TRUE(b_->postSend(mb_.get(), addrB(0), 10, &d).ok());
  pollfd pfd{ta_->eventFd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 10000), 1) << "eventFd did not wake up for a receive";
  ASSERT_TRUE(pump([&] { return ea_.messages.size() == 1 && d.calls == 1; }));
  // Same for a connection event (the cm channel is behind the same fd).
  settle(20ms);
  armed = false;
  for (int i = 0; i < 100 && !armed; ++i) {
    ta_->progress();
    tb_->progress();
    armed = tb_->arm();
  }
  EXPECT_TRUE(armed);
  a_->close(Status(StatusCode::kCancelled, "bye"));
  pfd = {tb_->eventFd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 10000), 1) << "eventFd did not wake up for a disconnect";
  EXPECT_TRUE(pump([&] { return b_->state() == EndpointState::kBroken; }, 10s));
}

TEST_F(VerbsTransport, VerbsCloseDrainsTheQpQuicklyAndCompletesOnce) {
  std::vector<RmaOp> ops;
  for (int i = 0; i < 16; ++i) ops.push_back({ma_.get(), addrA(0), kb_.get(), addrB(0), 1 << 20});
  std::vector<Done*> done;
  for (int i = 0; i < 8; ++i) {
    done.push_back(&newDone());
    ASSERT_TRUE(a_->postWrite(ops, std::nullopt, done.back()).ok());
  }
  ta_->progress();  // some WRs are in flight on the QP now
  const auto t0 = std::chrono::steady_clock::now();
  a_->close(Status(StatusCode::kCancelled, "test closes"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s) << "close() must not wait unboundedly";
  for (Done* d : done) EXPECT_EQ(d->calls, 1);
  EXPECT_TRUE(pump([&] { return b_->state() == EndpointState::kBroken; }, 10s));
  settle(100ms);
  for (Done* d : done) {
    EXPECT_EQ(d->calls, 1);
    EXPECT_FALSE(d->status.ok());
  }
}

TEST_F(VerbsTransport, VerbsQpFatalAsyncEventBreaksOnlyThatQpsEndpoint) {
  // Harmless events change nothing.
  for (ibv_event_type t :
       {IBV_EVENT_COMM_EST, IBV_EVENT_SQ_DRAINED, IBV_EVENT_QP_LAST_WQE_REACHED}) {
    ASSERT_TRUE(verbs::testing::injectAsyncEvent(ta_.get(), a_.get(), t).ok());
  }
  for (ibv_event_type t : {IBV_EVENT_PORT_ACTIVE, IBV_EVENT_LID_CHANGE, IBV_EVENT_GID_CHANGE}) {
    ASSERT_TRUE(verbs::testing::injectAsyncEvent(ta_.get(), nullptr, t).ok());
  }
  settle(50ms);
  ASSERT_TRUE(ready());
  EXPECT_TRUE(ea_.errors.empty());
  EXPECT_TRUE(eb_.errors.empty());

  // b's sends are outstanding (b is never progressed between post and event).
  std::vector<Done*> sends;
  for (int i = 0; i < 6; ++i) {
    sends.push_back(&newDone());
    ASSERT_TRUE(b_->postSend(mb_.get(), addrB(0), 1000, sends.back()).ok());
  }
  // The event is read through a's transport (both share the device context) but concerns b's
  // QP: it must reach b's transport, and wake it.
  // As the core sleeps: arm(), wait for the fd, then one progress() handles what woke it.
  tb_->arm();
  ASSERT_TRUE(verbs::testing::injectAsyncEvent(ta_.get(), b_.get(), IBV_EVENT_QP_FATAL).ok());
  pollfd pfd{tb_->eventFd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 5000), 1);
  tb_->progress();
  const std::string event = ibv_event_type_str(IBV_EVENT_QP_FATAL);
  EXPECT_EQ(b_->state(), EndpointState::kBroken);
  EXPECT_NE(b_->error().message().find(event), std::string::npos) << b_->error().toString();
  ASSERT_TRUE(pump(
      [&] {
        for (Done* d : sends) {
          if (d->calls == 0) return false;
        }
        return eb_.errors.size() == 1 && a_->state() == EndpointState::kBroken;
      },
      10s));
  settle(100ms);
  for (Done* d : sends) {
    EXPECT_EQ(d->calls, 1);
    EXPECT_EQ(d->status.code(), StatusCode::kConnectionBroken) << d->status.toString();
    EXPECT_NE(d->status.message().find(event), std::string::npos) << d->status.toString();
  }
  ASSERT_EQ(eb_.errors.size(), 1u);
  EXPECT_NE(eb_.errors[0].message().find(event), std::string::npos) << eb_.errors[0].toString();
  // a broke because b disconnected, not because of b's QP event.
  ASSERT_EQ(ea_.errors.size(), 1u);
  EXPECT_EQ(ea_.errors[0].message().find(event), std::string::npos) << ea_.errors[0].toString();
}

TEST_F(VerbsTransport, VerbsPortErrorAsyncEventBreaksEveryEndpointOnThePort) {
  std::vector<RmaOp> ops;
  for (int i = 0; i < 8; ++i) ops.push_back({ma_.get(), addrA(0), kb_.get(), addrB(0), 1 << 18});
  std::vector<Done*> done;
  for (int i = 0; i < 4; ++i) {
    done.push_back(&newDone());
    ASSERT_TRUE(a_->postWrite(ops, std::nullopt, done.back()).ok());
  }
  Done& send = newDone();
  ASSERT_TRUE(b_->postSend(mb_.get(), addrB(0), 100, &send).ok());
  // Both transports sit on the same port: one event reaches both.
  ASSERT_TRUE(verbs::testing::injectAsyncEvent(ta_.get(), nullptr, IBV_EVENT_PORT_ERR).ok());
  ASSERT_TRUE(pump(
      [&] {
        for (Done* d : done) {
          if (d->calls == 0) return false;
        }
        return send.calls == 1 && !ea_.errors.empty() && !eb_.errors.empty();
      },
      10s))
      << "a: " << a_->error().toString() << " b: " << b_->error().toString();
  settle(100ms);
  const std::string event = ibv_event_type_str(IBV_EVENT_PORT_ERR);
  for (Done* d : done) {
    EXPECT_EQ(d->calls, 1);
    EXPECT_EQ(d->status.code(), StatusCode::kConnectionBroken) << d->status.toString();
    EXPECT_NE(d->status.message().find(event), std::string::npos) << d->status.toString();
  }
  EXPECT_EQ(send.calls, 1);
  EXPECT_EQ(send.status.code(), StatusCode::kConnectionBroken) << send.status.toString();
  ASSERT_EQ(ea_.errors.size(), 1u);
  ASSERT_EQ(eb_.errors.size(), 1u);
  EXPECT_NE(ea_.errors[0].message().find(event), std::string::npos) << ea_.errors[0].toString();
  EXPECT_NE(eb_.errors[0].message().find(event), std::string::npos) << eb_.errors[0].toString();
  // Closing the broken endpoints drains their QPs within the bound and completes nothing again.
  const auto t0 = std::chrono::steady_clock::now();
  a_->close(Status(StatusCode::kCancelled, "test closes"));
  b_->close(Status(StatusCode::kCancelled, "test closes"));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
  settle(50ms);
  for (Done* d : done) EXPECT_EQ(d->calls, 1);
  EXPECT_EQ(send.calls, 1);
}

TEST_F(VerbsTransport, VerbsCqErrorAsyncEventBreaksTheCqOwnersEndpoints) {
  Done& d = newDone();
  ASSERT_TRUE(
      a_->postRead(std::vector<RmaOp>{{ma_.get(), addrA(0), kb_.get(), addrB(0), 4096}}, &d).ok());
  ta_->arm();  // the next progress() reads the event sources (otherwise within 50 us of calls)
  ASSERT_TRUE(verbs::testing::injectAsyncEvent(ta_.get(), nullptr, IBV_EVENT_CQ_ERR).ok());
  ta_->progress();
  EXPECT_EQ(a_->state(), EndpointState::kBroken);
  ASSERT_TRUE(pump([&] { return d.calls == 1 && ea_.errors.size() == 1; }, 10s));
  EXPECT_EQ(d.status.code(), StatusCode::kConnectionBroken) << d.status.toString();
  EXPECT_NE(ea_.errors[0].message().find(ibv_event_type_str(IBV_EVENT_CQ_ERR)), std::string::npos)
      << ea_.errors[0].toString();
  settle(50ms);
  EXPECT_EQ(d.calls, 1);
}

// ---- GIDs by type and family (docs/soft-roce.md, "Which GID"). scripts/test-rxe.sh gives dummy0
// an IPv6 address (fd00::1) first, so rxe0 has IPv6 RoCE v2 GIDs next to the IPv4 one.

struct SysfsGid {
  std::string device;
  int index = -1;
  std::string text;  ///< the address as rdma_cm takes it: "fd00::1"
};

/// The first RoCE v2 GID of port 1 of an RDMA device whose address is IPv6 and global
/// (`link_local` false) or link-local (true), from sysfs.
std::optional<SysfsGid> findIpv6Gid(bool link_local) {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  std::vector<std::string> devices;
  for (int i = 0; i < n; ++i) devices.emplace_back(ibv_get_device_name(list[i]));
  if (list != nullptr) ibv_free_device_list(list);
  for (const std::string& dev : devices) {
    const std::string port = "/sys/class/infiniband/" + dev + "/ports/1/";
    for (int i = 0; i < 256; ++i) {
      std::ifstream g(port + "gids/" + std::to_string(i));
      std::ifstream t(port + "gid_attrs/types/" + std::to_string(i));
      std::string gid, type;
      if (!std::getline(g, gid) || !std::getline(t, type) || type != "RoCE v2") continue;
      in6_addr a{};
      std::string hex;
      for (char c : gid) {
        if (c != ':') hex += c;
      }
      if (hex.size() != 32) continue;
      for (int b = 0; b < 16; ++b) a.s6_addr[b] = std::stoi(hex.substr(2 * b, 2), nullptr, 16);
      if (IN6_IS_ADDR_V4MAPPED(&a) || IN6_IS_ADDR_UNSPECIFIED(&a)) continue;
      if (bool(IN6_IS_ADDR_LINKLOCAL(&a)) != link_local) continue;
      char text[INET6_ADDRSTRLEN] = {};
      inet_ntop(AF_INET6, &a, text, sizeof(text));
      return SysfsGid{dev, i, text};
    }
  }
  return std::nullopt;
}

constexpr const char* kNoIpv6 =
    "no RoCE v2 GID with a global IPv6 address on port 1 of any RDMA device: give the netdev one "
    "(in the rxe guest: `ip -6 addr add fd00::1/64 dev dummy0 nodad`; scripts/test-rxe.sh does)";

/// Both sides on the IPv6 RoCE v2 GID: a through bind_host (an IPv6 literal), b through gid_index.
class VerbsIpv6 : public VerbsTransport {
 protected:
  TransportConfig configA() override {
    TransportConfig c;
    c.device = gid_->device;
    c.bind_host = gid_->text;
    return c;
  }
  TransportConfig configB() override {
    TransportConfig c;
    c.device = gid_->device;
    c.gid_index = gid_->index;
    return c;
  }
  std::string unavailable() override { return gid_ ? "" : kNoIpv6; }
  std::optional<SysfsGid> gid_ = findIpv6Gid(false);
};

/// a on the default (IPv4) GID connects to b listening on the IPv6 one.
class VerbsMixedFamilies : public VerbsIpv6 {
 protected:
  TransportConfig configA() override {
    TransportConfig c;
    c.device = gid_->device;
    return c;
  }
};

/// Both sides on the IPv6 link-local RoCE v2 GID (fe80::, scoped to the netdev), pinned by index.
class VerbsLinkLocal : public VerbsTransport {
 protected:
  TransportConfig configA() override {
    TransportConfig c;
    c.device = gid_->device;
    c.gid_index = gid_->index;
    return c;
  }
  TransportConfig configB() override { return configA(); }
  std::string unavailable() override {
    return gid_ ? "" : "no RoCE v2 GID with an IPv6 link-local address on port 1";
  }
  std::optional<SysfsGid> gid_ = findIpv6Gid(true);
};

TEST_F(VerbsIpv6, ListenerAndConnectionUseTheIpv6GidAndBytesMove) {
  for (Transport* t : {ta_.get(), tb_.get()}) {
    const std::string d = t->description();
    EXPECT_NE(d.find("RoCE v2 IPv6"), std::string::npos) << d;
    EXPECT_NE(d.find(" gid " + std::to_string(gid_->index) + " "), std::string::npos) << d;
    EXPECT_NE(d.find("[" + gid_->text + "]:"), std::string::npos) << d;
    auto addr = verbs::unpackAddress(t->localAddress());
    ASSERT_TRUE(addr.ok()) << addr.status().toString();
    EXPECT_EQ(addr->family(), AF_INET6);
    EXPECT_EQ(addr->host(), gid_->text);
    EXPECT_NE(addr->port(), 0);
  }
  checkBytesMove();
}

TEST_F(VerbsMixedFamilies, AnIpv4SideReachesAnIpv6Listener) {
  EXPECT_EQ(verbs::unpackAddress(ta_->localAddress())->family(), AF_INET) << ta_->description();
  EXPECT_EQ(verbs::unpackAddress(tb_->localAddress())->family(), AF_INET6) << tb_->description();
  checkBytesMove();
}

TEST_F(VerbsLinkLocal, ALinkLocalGidChosenByIndexWorks) {
  const std::string d = ta_->description();
  EXPECT_NE(d.find("RoCE v2 IPv6 link-local"), std::string::npos) << d;
  EXPECT_NE(d.find("[" + gid_->text + "%"), std::string::npos) << d;  // scoped to its netdev
  checkBytesMove();
}

TEST(VerbsNoDevice, CreateExplainsWhatItFound) {
  auto t = verbs::create(TransportConfig{});
  if (rdmaDeviceCount() == 0) {
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(t.status().message().find("RDMA"), std::string::npos) << t.status().toString();
    EXPECT_NE(t.status().message().find("ucx"), std::string::npos) << t.status().toString();
  } else {
    ASSERT_TRUE(t.ok()) << t.status().toString();
    const std::string d = (*t)->description();
    EXPECT_NE(d.find("verbs "), std::string::npos) << d;
    EXPECT_NE(d.find(" gid "), std::string::npos) << d;
    EXPECT_NE(d.find("RoCE v2 IPv4"), std::string::npos) << d;  // first by preference
    if (const char* dev = std::getenv("RXE_DEV")) {
      EXPECT_NE(d.find(std::string("verbs ") + dev + " port"), std::string::npos) << d;
    }
    // A GID index that holds nothing is refused with what to look at.
    TransportConfig empty;
    empty.gid_index = 100000;
    auto none = verbs::create(empty);
    EXPECT_EQ(none.status().code(), StatusCode::kUnavailable) << none.status().toString();
    EXPECT_NE(none.status().message().find("gid_index 100000 is an empty GID table entry"),
              std::string::npos)
        << none.status().toString();
    // A device that does not exist is refused by name.
    TransportConfig c;
    c.device = "no_such_dev";
    auto bad = verbs::create(c);
    EXPECT_EQ(bad.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(bad.status().message().find("no_such_dev"), std::string::npos);
  }
  TransportConfig c;
  c.params["verbs.bogus"] = "1";
  auto unknown = verbs::create(c);
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument) << unknown.status().toString();
}

// Runs everywhere: the verbs.* parameters are checked before any device is looked at.
TEST(VerbsParams, DepthsInRangeAreTakenEverythingElseIsRejectedByName) {
  auto parse = [](std::map<std::string, std::string> params) {
    TransportConfig c;
    c.params = std::move(params);
    return verbs::parseOptions(c);
  };
  auto defaults = parse({});
  ASSERT_TRUE(defaults.ok()) << defaults.status().toString();
  EXPECT_EQ(defaults->sq_depth, 128u);
  EXPECT_EQ(defaults->recv_depth, 0u);  // derived from max_message_size
  auto set = parse({{"verbs.sq_depth", "2"}, {"verbs.recv_depth", "65536"}});
  ASSERT_TRUE(set.ok()) << set.status().toString();
  EXPECT_EQ(set->sq_depth, 2u);
  EXPECT_EQ(set->recv_depth, 65536u);
  for (const char* key : {"verbs.sq_depth", "verbs.recv_depth"}) {
    for (const char* bad : {"", "0", "1", "65537", "12x", "-5", "0x10", "99999999999999999999"}) {
      auto r = parse({{key, bad}});
      ASSERT_FALSE(r.ok()) << key << "='" << bad << "' accepted";
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().toString();
      EXPECT_NE(r.status().message().find(key), std::string::npos) << r.status().toString();
    }
  }
  for (const char* key : {"verbs.bogus", "verbs.SQ_DEPTH", "sq_depth", "ucx.tls"}) {
    auto r = parse({{key, "8"}});
    ASSERT_FALSE(r.ok()) << key << " accepted";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().toString();
    EXPECT_NE(r.status().message().find(std::string("'") + key + "'"), std::string::npos)
        << r.status().toString();
  }
}

}  // namespace
}  // namespace zcx::transport

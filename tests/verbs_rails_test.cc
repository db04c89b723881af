// Multi-rail verbs (transport/verbs/verbs_rails.h): the wire format and device lists everywhere;
// the contract suite, striping and rail failover where two RDMA devices exist (the rxe guest of
// scripts/test-rxe.sh creates rxe0 and rxe1 and sets RXE_DEVS=rxe0,rxe1).
#include <gtest/gtest.h>
#include <infiniband/verbs.h>
#include <poll.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "transport_contract_test.h"
#include "verbs/factory.h"
#include "verbs/testing.h"
#include "verbs/verbs_rails.h"
#include "verbs/verbs_rails_wire.h"
#include "zcx/transport/transport.h"

namespace zcx::transport {
namespace {

using namespace std::chrono_literals;
using contract::TransportContractTest;
using contract::TransportUnderTest;

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

TEST(VerbsRailsWire, EntriesRoundTripAndEveryMalformedBlobIsRefused) {
  const std::vector<std::vector<uint8_t>> entries = {bytes("first"), bytes("second rail"),
                                                     std::vector<uint8_t>(255, 7)};
  const std::vector<uint8_t> blob = verbs::packRails(entries);
  ASSERT_TRUE(verbs::isRailsBlob(blob));
  auto back = verbs::unpackRails(blob);
  ASSERT_TRUE(back.ok()) << back.status().toString();
  ASSERT_EQ(back->size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(std::vector<uint8_t>((*back)[i].begin(), (*back)[i].end()), entries[i]);
  }
  // A single-rail transport takes rail 0's part; other bytes pass through untouched.
  auto first = verbs::firstRail(blob);
  EXPECT_EQ(std::vector<uint8_t>(first.begin(), first.end()), entries[0]);
  const std::vector<uint8_t> plain = bytes("ZVA\x01 not a blob");
  EXPECT_EQ(verbs::firstRail(plain).data(), plain.data());

  std::vector<std::vector<uint8_t>> bad;
  bad.push_back({});            // nothing
  bad.push_back(bytes("ZVR"));  // header cut short
  bad.push_back(blob);
  bad.back()[3] = 2;  // unknown version
  bad.push_back(blob);
  bad.back()[4] = 0;  // no rails
  bad.push_back(blob);
  bad.back()[4] = static_cast<uint8_t>(verbs::kMaxRails + 1);  // more than we ever pair
  bad.push_back(blob);
  bad.back()[4] = 4;  // a rail missing
  bad.push_back(blob);
  bad.back()[5] = 0;  // empty entry
  bad.push_back(blob);
  bad.back()[5] = 250;             // entry runs past the end... of entry 0
  bad.back().resize(5 + 1 + 100);  // ...and of the blob
  bad.push_back(blob);
  bad.back().push_back(0);                                            // trailing byte
  bad.push_back(std::vector<uint8_t>(blob.begin(), blob.end() - 1));  // truncated
  for (size_t i = 0; i < bad.size(); ++i) {
    auto r = verbs::unpackRails(bad[i]);
    ASSERT_FALSE(r.ok()) << "malformed blob " << i << " accepted";
    EXPECT_EQ(r.status().code(), StatusCode::kProtocolError) << i << ": " << r.status().toString();
    // Not a valid blob: a single rail must not take a piece of it either.
    if (verbs::isRailsBlob(bad[i])) {
      EXPECT_EQ(verbs::firstRail(bad[i]).size(), bad[i].size());
    }
  }
}

TEST(VerbsRailsWire, DeviceListsNameDistinctDevices) {
  auto two = verbs::parseDeviceList("rxe0,rxe1");
  ASSERT_TRUE(two.ok()) << two.status().toString();
  EXPECT_EQ(*two, (std::vector<std::string>{"rxe0", "rxe1"}));
  for (const char* bad :
       {"", ",", "rxe0,", ",rxe0", "rxe0,,rxe1", "rxe0,rxe0", "a,b,c,d,e,f,g,h,i"}) {
    auto r = verbs::parseDeviceList(bad);
    ASSERT_FALSE(r.ok()) << "'" << bad << "' accepted";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  // "all" lists whatever this machine has (nothing on a host without RDMA), sorted.
  auto all = verbs::parseDeviceList("all");
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(std::is_sorted(all->begin(), all->end()));
}

TEST(VerbsRailsWire, SliceSizeRetryCountAndAckTimeoutAreVerbsParameters) {
  TransportConfig c;
  c.params["verbs.slice_size"] = "16384";
  auto o = verbs::parseOptions(c);
  ASSERT_TRUE(o.ok()) << o.status().toString();
  EXPECT_EQ(o->slice_size, 16384u);
  for (const char* bad : {"0", "4095", "1073741825", "64k"}) {
    c.params["verbs.slice_size"] = bad;
    EXPECT_EQ(verbs::parseOptions(c).status().code(), StatusCode::kInvalidArgument) << bad;
  }
  c.params.erase("verbs.slice_size");
  EXPECT_EQ(verbs::parseOptions(c)->retry_count, 7u);  // rails other than 0 get 6 (factory.cc)
  c.params["verbs.retry_count"] = "3";
  EXPECT_EQ(verbs::parseOptions(c)->retry_count, 3u);
  c.params["verbs.retry_count"] = "8";
  EXPECT_EQ(verbs::parseOptions(c).status().code(), StatusCode::kInvalidArgument);
  c.params.erase("verbs.retry_count");
  EXPECT_EQ(verbs::parseOptions(c)->ack_timeout, 0u);  // not set: rdma_cm's choice
  c.params["verbs.ack_timeout"] = "0";                 // the same, asked for
  EXPECT_EQ(verbs::parseOptions(c)->ack_timeout, 0u);
  c.params["verbs.ack_timeout"] = "31";
  EXPECT_EQ(verbs::parseOptions(c)->ack_timeout, 31u);
  c.params["verbs.ack_timeout"] = "32";
  EXPECT_EQ(verbs::parseOptions(c).status().code(), StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------------ on two RDMA devices

std::string railDevices() {
  const char* d = std::getenv("RXE_DEVS");
  return d != nullptr ? d : "rxe0,rxe1";
}

std::string noRailsReason() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list != nullptr) ibv_free_device_list(list);
  if (n >= 2 && railDevices().find(',') != std::string::npos) return "";
  return "multi-rail needs two RDMA devices (found " + std::to_string(n) +
         "; scripts/test-rxe.sh makes rxe0 and rxe1 in its guest and sets RXE_DEVS)";
}

TransportConfig railsConfig() {
  TransportConfig c;
  c.device = railDevices();
  return c;
}

TransportUnderTest railsInstance() {
  TransportUnderTest t;
  t.name = "verbs_rails";
  t.create = &verbs::create;
  t.config = railsConfig();
  t.unavailable = noRailsReason;
  t.transport_name = "verbs";
  t.description_has = {"verbs rails=2", " port ", " gid ", " | "};
  t.allocate = false;
  t.capability_max_message_size = size_t{1} << 20;
  t.requires_event_fd = true;
  t.max_message_size = 64 << 10;
  t.passive_first = true;
  t.close_completes_at_once = true;
  t.peer_sees_close = true;
  t.closed_endpoint_refuses_keys = false;
  t.malformed_keys = [](const std::vector<uint8_t>& good) {
    std::vector<std::vector<uint8_t>> bad(4, good);
    bad[0][3] = 99;     // blob version
    bad[1][4] = 0;      // no rails
    bad[2][6] ^= 0xff;  // rail 0's key magic
    bad[3].pop_back();  // truncated
    return bad;
  };
  return t;
}

INSTANTIATE_TEST_SUITE_P(VerbsRails, TransportContractTest, ::testing::Values(railsInstance()),
                         contract::instanceName);

struct Done final : Completion {
  int calls = 0;
  Status status{StatusCode::kInternal, "never completed"};
  std::function<void()> on_complete;
  void complete(Status s) override {
    ++calls;
    status = std::move(s);
    if (on_complete) on_complete();
  }
};

struct Events final : EndpointEvents {
  std::vector<std::vector<uint8_t>> messages;
  std::vector<Status> errors;
  std::function<void(uint32_t)> on_notify;
  int notifies = 0;
  void onMessage(const uint8_t* data, size_t length) override {
    messages.emplace_back(data, data + length);
  }
  void onNotify(uint32_t value) override {
    ++notifies;
    if (on_notify) on_notify(value);
  }
  void onError(Status why) override { errors.push_back(std::move(why)); }
};

class VerbsRails : public ::testing::Test {
 protected:
  static constexpr size_t kSize = 4 << 20;

  void SetUp() override {
    if (std::string why = noRailsReason(); !why.empty()) GTEST_SKIP() << why;
    auto a = verbs::create(railsConfig());
    ASSERT_TRUE(a.ok()) << a.status().toString();
    auto b = verbs::create(railsConfig());
    ASSERT_TRUE(b.ok()) << b.status().toString();
    ta_ = std::move(*a);
    tb_ = std::move(*b);
    ASSERT_NE(dynamic_cast<verbs::RailsTransport*>(ta_.get()), nullptr) << ta_->description();
    EndpointSetup sb;
    sb.role = Role::kPassive;
    sb.peer_address = ta_->localAddress();
    sb.token = std::mt19937_64(std::random_device{}())();
    sb.max_message_size = 64 << 10;
    sb.events = &eb_;
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
    ASSERT_TRUE(pump([&] {
      return a_->state() == EndpointState::kReady && b_->state() == EndpointState::kReady;
    })) << "a: "
        << a_->error().toString() << " b: " << b_->error().toString();
    bufa_.assign(kSize, 0);
    bufb_.assign(kSize, 0);
    auto ma = ta_->registerMemory(bufa_.data(), kSize, kAccessRemoteRead | kAccessRemoteWrite);
    ASSERT_TRUE(ma.ok()) << ma.status().toString();
    auto mb = tb_->registerMemory(bufb_.data(), kSize, kAccessRemoteRead | kAccessRemoteWrite);
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

  bool pump(const std::function<bool()>& pred, std::chrono::milliseconds limit = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      ta_->progress();
      tb_->progress();
      if (pred()) return true;
    }
    return pred();
  }

  void fill(std::vector<uint8_t>& buf, uint8_t seed) {
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<uint8_t>(i * 131 + seed);
  }

  std::vector<uint64_t> railBytes(Transport& t) {
    std::vector<uint64_t> out;
    for (const DeviceBytes& d : t.deviceBytes()) out.push_back(d.bytes);
    return out;
  }

  uint64_t addrA(size_t off) { return reinterpret_cast<uintptr_t>(bufa_.data()) + off; }
  uint64_t addrB(size_t off) { return reinterpret_cast<uintptr_t>(bufb_.data()) + off; }
  Done& newDone() { return dones_.emplace_back(); }

  std::deque<Done> dones_;
  std::unique_ptr<Transport> ta_, tb_;
  Events ea_, eb_;
  std::unique_ptr<Endpoint> a_, b_;
  std::vector<uint8_t> bufa_, bufb_;
  std::unique_ptr<MemoryHandle> ma_, mb_;
  std::unique_ptr<RemoteKey> kb_;
};

TEST_F(VerbsRails, LargeWritesAndReadsAreStripedOverBothRailsAndCompleteOnce) {
  fill(bufa_, 3);
  RmaOp w{ma_.get(), addrA(0), kb_.get(), addrB(0), kSize};
  Done& wd = newDone();
  ASSERT_TRUE(a_->postWrite({&w, 1}, std::nullopt, &wd).ok());
  ASSERT_TRUE(pump([&] { return wd.calls > 0; }));
  ASSERT_TRUE(wd.status.ok()) << wd.status.toString();
  EXPECT_EQ(bufa_, bufb_);
  std::vector<uint64_t> rails = railBytes(*ta_);
  ASSERT_EQ(rails.size(), 2u);
  EXPECT_GT(rails[0], 0u);
  EXPECT_GT(rails[1], 0u);
  EXPECT_EQ(rails[0] + rails[1], kSize);

  // Read it back into a cleared buffer, in two ops of one batch, one of them unaligned.
  std::fill(bufa_.begin(), bufa_.end(), 0);
  RmaOp r[2] = {
      {ma_.get(), addrA(0), kb_.get(), addrB(0), kSize / 2 + 777},
      {ma_.get(), addrA(kSize / 2 + 777), kb_.get(), addrB(kSize / 2 + 777), kSize / 2 - 777}};
  Done& rd = newDone();
  ASSERT_TRUE(a_->postRead(r, &rd).ok());
  ASSERT_TRUE(pump([&] { return rd.calls > 0; }));
  ASSERT_TRUE(rd.status.ok()) << rd.status.toString();
  EXPECT_EQ(bufa_, bufb_);
  rails = railBytes(*ta_);
  EXPECT_EQ(rails[0] + rails[1], 2 * kSize);
  pump([] { return false; }, 100ms);
  EXPECT_EQ(wd.calls, 1);
  EXPECT_EQ(rd.calls, 1);
}

TEST_F(VerbsRails, NotificationArrivesAfterEverySliceOfItsWrite) {
  fill(bufa_, 9);
  bool data_there_at_notify = false;
  eb_.on_notify = [&](uint32_t v) {
    EXPECT_EQ(v, 42u);
    data_there_at_notify = bufa_ == bufb_;
  };
  RmaOp w{ma_.get(), addrA(0), kb_.get(), addrB(0), kSize};
  Done& wd = newDone();
  ASSERT_TRUE(a_->postWrite({&w, 1}, 42u, &wd).ok());
  ASSERT_TRUE(pump([&] { return wd.calls > 0 && eb_.notifies > 0; }));
  ASSERT_TRUE(wd.status.ok()) << wd.status.toString();
  EXPECT_EQ(eb_.notifies, 1);
  EXPECT_TRUE(data_there_at_notify);
}

TEST_F(VerbsRails, SmallOperationsAndMessagesStayOnOneRail) {
  fill(bufa_, 5);
  RmaOp w{ma_.get(), addrA(0), kb_.get(), addrB(0), 4096};
  Done& wd = newDone();
  ASSERT_TRUE(a_->postWrite({&w, 1}, std::nullopt, &wd).ok());
  Done& sd = newDone();
  ASSERT_TRUE(a_->postSend(ma_.get(), addrA(100), 1000, &sd).ok());
  ASSERT_TRUE(pump([&] { return wd.calls > 0 && sd.calls > 0 && !eb_.messages.empty(); }));
  ASSERT_TRUE(wd.status.ok()) << wd.status.toString();
  ASSERT_TRUE(sd.status.ok()) << sd.status.toString();
  EXPECT_TRUE(std::equal(bufa_.begin(), bufa_.begin() + 4096, bufb_.begin()));
  ASSERT_EQ(eb_.messages.size(), 1u);
  EXPECT_EQ(eb_.messages[0], std::vector<uint8_t>(bufa_.begin() + 100, bufa_.begin() + 1100));
  const std::vector<uint64_t> rails = railBytes(*ta_);
  EXPECT_EQ(rails[0] + rails[1], 4096u + 1000u);
  // The write whole on the connection's rail, the message on rail 0.
  EXPECT_TRUE((rails[0] == 5096u && rails[1] == 0u) || (rails[0] == 1000u && rails[1] == 4096u))
      << rails[0] << " " << rails[1];
}

TEST_F(VerbsRails, SlicesOfAFailedRailAreRetriedOnTheOther) {
  fill(bufa_, 11);
  RmaOp w{ma_.get(), addrA(0), kb_.get(), addrB(0), kSize};
  Done& wd = newDone();
  ASSERT_TRUE(a_->postWrite({&w, 1}, 7u, &wd).ok());
  // Rail 1's port fails before any completion was reaped: its slices must move to rail 0.
  auto* rails = dynamic_cast<verbs::RailsTransport*>(ta_.get());
  ASSERT_TRUE(verbs::testing::injectAsyncEvent(rails->rail(1), nullptr, IBV_EVENT_PORT_ERR).ok());
  ASSERT_TRUE(pump([&] { return wd.calls > 0 && eb_.notifies > 0; }));
  ASSERT_TRUE(wd.status.ok()) << wd.status.toString();
  EXPECT_EQ(bufa_, bufb_);
  EXPECT_EQ(eb_.notifies, 1);
  std::vector<uint64_t> bytes = railBytes(*ta_);
  EXPECT_EQ(bytes[1], 0u) << "rail 1 failed before any of its slices completed";
  EXPECT_EQ(bytes[0], kSize);
  EXPECT_TRUE(ea_.errors.empty()) << ea_.errors[0].toString();
  EXPECT_EQ(a_->state(), EndpointState::kReady);

  // The connection goes on over rail 0 alone.
  fill(bufa_, 12);
  Done& again = newDone();
  ASSERT_TRUE(a_->postWrite({&w, 1}, std::nullopt, &again).ok());
  ASSERT_TRUE(pump([&] { return again.calls > 0; }));
  ASSERT_TRUE(again.status.ok()) << again.status.toString();
  EXPECT_EQ(bufa_, bufb_);
  bytes = railBytes(*ta_);
  EXPECT_EQ(bytes[0], 2 * kSize);
  EXPECT_EQ(bytes[1], 0u);
}

TEST_F(VerbsRails, AnIdleConnectionLetsTheCallerSleepOnTheEventFd) {
  // Nothing to do: progress() settles to 0, arm() says so and the fd stays quiet, so a waiting
  // thread sleeps instead of spinning (the engine's manual-progress waiters rely on it).
  pump([] { return false; }, 200ms);
  for (auto* t : {ta_.get(), tb_.get()}) {
    EXPECT_EQ(t->progress(), 0);
    ASSERT_TRUE(t->arm());
    pollfd p{t->eventFd(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 50), 0) << "the event fd is readable with nothing to do";
  }
  // A write wakes the target's fd... no: a one-sided write raises no event there; a message does.
  Done& sd = newDone();
  ASSERT_TRUE(a_->postSend(ma_.get(), addrA(0), 64, &sd).ok());
  pollfd p{tb_->eventFd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 5000), 1) << "a message did not wake the receiver's event fd";
  ASSERT_TRUE(pump([&] { return sd.calls > 0 && !eb_.messages.empty(); }));
}

TEST(VerbsRailsConnect, ARailThatCannotReachThePeerDoesNotHoldTheConnectionBack) {
  if (std::string why = noRailsReason(); !why.empty()) GTEST_SKIP() << why;
  auto ta = verbs::create(railsConfig());
  auto tb = verbs::create(railsConfig());
  auto tc = verbs::create(railsConfig());  // a stranger: its rail 1 never hears of our token
  ASSERT_TRUE(ta.ok() && tb.ok() && tc.ok()) << ta.status().toString();
  const std::vector<uint8_t> b_blob = (*tb)->localAddress(), c_blob = (*tc)->localAddress();
  auto b_rails = verbs::unpackRails(b_blob);  // spans into the blobs
  auto c_rails = verbs::unpackRails(c_blob);
  ASSERT_TRUE(b_rails.ok() && c_rails.ok());
  // a's view of b: b's rail 0, but a rail 1 that leads elsewhere (a mispaired fabric).
  const std::vector<uint8_t> mixed = verbs::packRails(
      {{(*b_rails)[0].begin(), (*b_rails)[0].end()}, {(*c_rails)[1].begin(), (*c_rails)[1].end()}});
  Events ea, eb;
  EndpointSetup sb;
  sb.role = Role::kPassive;
  sb.peer_address = (*ta)->localAddress();
  sb.token = std::mt19937_64(std::random_device{}())();
  sb.max_message_size = 64 << 10;
  sb.events = &eb;
  auto b = (*tb)->createEndpoint(sb);
  ASSERT_TRUE(b.ok()) << b.status().toString();
  EndpointSetup sa = sb;
  sa.role = Role::kActive;
  sa.peer_address = mixed;
  sa.events = &ea;
  auto a = (*ta)->createEndpoint(sa);
  ASSERT_TRUE(a.ok()) << a.status().toString();
  const auto t0 = std::chrono::steady_clock::now();
  auto pump = [&](const std::function<bool()>& pred) {
    while (std::chrono::steady_clock::now() - t0 < 20s && !pred()) {
      (*ta)->progress();
      (*tb)->progress();
      (*tc)->progress();
    }
    return pred();
  };
  ASSERT_TRUE(pump([&] {
    return (*a)->state() == EndpointState::kReady && (*b)->state() == EndpointState::kReady;
  })) << "a: "
      << (*a)->error().toString() << " b: " << (*b)->error().toString();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 10s);  // the grace period, not a timeout

  // Large writes go over rail 0 alone, every byte right.
  std::vector<uint8_t> src(1 << 20), dst(1 << 20, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 1);
  auto ms = (*ta)->registerMemory(src.data(), src.size(), kAccessLocal);
  auto md = (*tb)->registerMemory(dst.data(), dst.size(), kAccessRemoteWrite);
  ASSERT_TRUE(ms.ok() && md.ok());
  auto key = (*a)->importKey((*md)->packedKey());
  ASSERT_TRUE(key.ok()) << key.status().toString();
  RmaOp w{ms->get(), reinterpret_cast<uintptr_t>(src.data()), key->get(),
          reinterpret_cast<uintptr_t>(dst.data()), src.size()};
  Done d;
  ASSERT_TRUE((*a)->postWrite({&w, 1}, std::nullopt, &d).ok());
  ASSERT_TRUE(pump([&] { return d.calls > 0; }));
  ASSERT_TRUE(d.status.ok()) << d.status.toString();
  EXPECT_EQ(src, dst);
  const std::vector<DeviceBytes> bytes = (*ta)->deviceBytes();
  ASSERT_EQ(bytes.size(), 2u);
  EXPECT_EQ(bytes[0].bytes, src.size());
  EXPECT_EQ(bytes[1].bytes, 0u);
  key->reset();
  a->reset();
  b->reset();
}

TEST_F(VerbsRails, LosingRailZeroBreaksTheConnection) {
  // Messages are not idempotent: they ride rail 0 only, and its loss ends the connection.
  auto* rails = dynamic_cast<verbs::RailsTransport*>(ta_.get());
  ASSERT_TRUE(verbs::testing::injectAsyncEvent(rails->rail(0), nullptr, IBV_EVENT_PORT_ERR).ok());
  ASSERT_TRUE(pump([&] { return !ea_.errors.empty(); }));
  EXPECT_EQ(a_->state(), EndpointState::kBroken);
  Done& d = newDone();
  RmaOp w{ma_.get(), addrA(0), kb_.get(), addrB(0), kSize};
  EXPECT_FALSE(a_->postWrite({&w, 1}, std::nullopt, &d).ok());
  EXPECT_EQ(d.calls, 0);
}

}  // namespace
}  // namespace zcx::transport

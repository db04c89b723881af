// VerbsSendQueue without a device: a fake send queue records what is posted and produces the
// CQEs an RC QP would (one per signaled WR, in order; a signaled WR's CQE means every WR before
// it is done too).
#include "verbs/verbs_send_queue.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <vector>

namespace zcx::transport::verbs {
namespace {

constexpr uint32_t kSerial = 7;

struct Done final : Completion {
  int calls = 0;
  Status status;
  void complete(Status s) override {
    ++calls;
    status = std::move(s);
  }
};

/// The device side: the WRs on the SQ, and checks of what an RC QP would refuse.
struct FakeSq {
  struct Posted {
    uint64_t wr_id;
    bool signaled;
    bool is_read;
    bool inlined;
    ibv_wr_opcode opcode;
  };
  uint32_t depth = 0;
  uint32_t read_limit = 0;
  std::deque<Posted> on_sq;  ///< posted, no CQE covers them yet
  uint32_t max_on_sq = 0;
  uint32_t max_reads = 0;
  uint32_t max_unsignaled_run = 0;
  uint32_t unsignaled_run = 0;
  size_t posts = 0;  ///< calls of the post function
  int fail_next = 0;
  std::vector<std::string> errors;

  VerbsSendQueue::PostFn fn() {
    return [this](ibv_send_wr* wr) -> Status {
      ++posts;
      if (fail_next != 0) {
        const int rc = fail_next;
        fail_next = 0;
        return Status(StatusCode::kConnectionBroken, "post failed " + std::to_string(rc));
      }
      for (; wr != nullptr; wr = wr->next) {
        const bool signaled = (wr->send_flags & IBV_SEND_SIGNALED) != 0;
        if (wr->num_sge > 0 && wr->sg_list == nullptr) errors.push_back("WR without its sge");
        on_sq.push_back({wr->wr_id, signaled, wr->opcode == IBV_WR_RDMA_READ,
                         (wr->send_flags & IBV_SEND_INLINE) != 0, wr->opcode});
        unsignaled_run = signaled ? 0 : unsignaled_run + 1;
        max_unsignaled_run = std::max(max_unsignaled_run, unsignaled_run);
      }
      max_on_sq = std::max(max_on_sq, static_cast<uint32_t>(on_sq.size()));
      uint32_t reads = 0;
      for (const Posted& p : on_sq) reads += p.is_read;
      max_reads = std::max(max_reads, reads);
      if (depth != 0 && on_sq.size() > depth) errors.push_back("SQ over its depth");
      if (read_limit != 0 && reads > read_limit) errors.push_back("READs over the limit");
      return Status();
    };
  }
  /// The next CQE: the first signaled WR's id (the WRs before it retire with it).
  std::optional<uint64_t> nextCqe() {
    while (!on_sq.empty()) {
      Posted p = on_sq.front();
      on_sq.pop_front();
      if (p.signaled) return p.wr_id;
    }
    return std::nullopt;
  }
};

VerbsSendQueue::Wr write(uint32_t length = 64) {
  VerbsSendQueue::Wr w;
  w.wr.opcode = IBV_WR_RDMA_WRITE;
  w.wr.num_sge = 1;
  w.sge.length = length;
  return w;
}

VerbsSendQueue::Wr read() {
  VerbsSendQueue::Wr w;
  w.wr.opcode = IBV_WR_RDMA_READ;
  w.wr.num_sge = 1;
  w.sge.length = 4096;
  w.is_read = true;
  return w;
}

struct VerbsSendQueueTest : ::testing::Test {
  FakeSq dev;
  VerbsSendQueue sq{kSerial, dev.fn()};

  void configure(uint32_t depth, uint32_t read_limit, uint32_t max_inline = 0) {
    dev.depth = depth;
    dev.read_limit = read_limit;
    sq.configure(depth, max_inline, read_limit);
  }
  /// Like VerbsEndpoint::onWc for a successful CQE, then drive().
  void deliver(uint64_t wr_id) {
    if (Completion* done = sq.onSuccess(wr_id)) {
      ASSERT_TRUE(sq.flush().ok());
      done->complete(Status());
    }
  }
  /// Delivers every CQE until the device is idle, flushing after each like progress() does.
  void runToIdle() {
    for (int guard = 0; guard < 1000000; ++guard) {
      auto cqe = dev.nextCqe();
      if (!cqe) {
        ASSERT_TRUE(sq.flush().ok());
        if (dev.on_sq.empty()) return;
        continue;
      }
      deliver(*cqe);
      ASSERT_TRUE(sq.flush().ok());
    }
    FAIL() << "the queue never drained";
  }
};

TEST_F(VerbsSendQueueTest, SingleWriteCompletesOnceWithItsSerialInTheWrId) {
  configure(16, 4);
  Done d;
  auto w = write();
  ASSERT_TRUE(sq.enqueue({&w, 1}, &d, "RDMA WRITE").ok());
  EXPECT_EQ(sq.pendingWrs(), 1u);
  auto n = sq.flush();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1);
  ASSERT_EQ(dev.on_sq.size(), 1u);
  EXPECT_EQ(dev.on_sq[0].wr_id >> 32, kSerial);
  EXPECT_TRUE(dev.on_sq[0].signaled);  // the last WR of an op is always signaled
  EXPECT_EQ(dev.on_sq[0].wr_id & (uint64_t{1} << 31), 0u);  // never looks like a receive
  EXPECT_STREQ(sq.liveKind(dev.on_sq[0].wr_id), "RDMA WRITE");
  runToIdle();
  EXPECT_EQ(d.calls, 1);
  EXPECT_TRUE(d.status.ok());
  EXPECT_EQ(sq.outstandingOps(), 0u);
  EXPECT_EQ(sq.postedWrs(), 0u);
}

TEST_F(VerbsSendQueueTest, StaleWrIdOfAReusedSlotMatchesNoOp) {
  configure(16, 4);
  Done first, second;
  auto w = write();
  ASSERT_TRUE(sq.enqueue({&w, 1}, &first, "first").ok());
  ASSERT_TRUE(sq.flush().ok());
  const uint64_t first_id = dev.on_sq.front().wr_id;
  runToIdle();
  ASSERT_EQ(first.calls, 1);

  ASSERT_TRUE(sq.enqueue({&w, 1}, &second, "second").ok());
  ASSERT_TRUE(sq.flush().ok());
  const uint64_t second_id = dev.on_sq.front().wr_id;
  // Same slot, next generation.
  EXPECT_EQ(second_id & (VerbsSendQueue::kMaxSlots - 1),
            first_id & (VerbsSendQueue::kMaxSlots - 1));
  EXPECT_NE(second_id, first_id);
  EXPECT_EQ(sq.liveKind(first_id), nullptr);
  EXPECT_STREQ(sq.liveKind(second_id), "second");
  // A late CQE with the old id completes nothing (and certainly not the new op).
  EXPECT_EQ(sq.onSuccess(first_id), nullptr);
  EXPECT_EQ(second.calls, 0);
  // Nor does an id that is nobody's (the endpoint's drain marker).
  EXPECT_EQ(sq.liveKind((uint64_t{kSerial} << 32) | VerbsSendQueue::kNoOpLowBits), nullptr);
  EXPECT_EQ(sq.onSuccess(second_id), &second);
  EXPECT_EQ(sq.outstandingOps(), 0u);
}

TEST_F(VerbsSendQueueTest, AnOpOfManyWrsCompletesOnlyWithItsLastWr) {
  configure(64, 4);
  Done d;
  std::vector<VerbsSendQueue::Wr> wrs(5, write());
  ASSERT_TRUE(sq.enqueue(wrs, &d, "RDMA WRITE").ok());
  ASSERT_TRUE(sq.flush().ok());
  ASSERT_EQ(dev.on_sq.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ((dev.on_sq[i].wr_id & VerbsSendQueue::kLastBit) != 0, i == 4) << i;
  }
  // An earlier WR's id (were it signaled) finishes nothing.
  EXPECT_EQ(sq.onSuccess(dev.on_sq[1].wr_id), nullptr);
  EXPECT_EQ(sq.onSuccess(dev.on_sq[4].wr_id), &d);
}

TEST_F(VerbsSendQueueTest, SignalsEveryQuarterDepthAndStaysWithinTheDepth) {
  configure(16, 4);  // signal interval 4
  std::vector<VerbsSendQueue::Wr> wrs(100, write());
  Done d;
  ASSERT_TRUE(sq.enqueue(wrs, &d, "RDMA WRITE").ok());
  auto n = sq.flush();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 16);  // a full SQ, the rest waits in software
  EXPECT_EQ(sq.pendingWrs(), 84u);
  EXPECT_FALSE(sq.canPost());
  for (size_t i = 0; i < dev.on_sq.size(); ++i) {
    EXPECT_EQ(dev.on_sq[i].signaled, i % 4 == 3) << i;
  }
  runToIdle();
  EXPECT_EQ(d.calls, 1);
  EXPECT_LE(dev.max_on_sq, 16u);
  EXPECT_LE(dev.max_unsignaled_run, 3u);
  EXPECT_TRUE(dev.errors.empty()) << dev.errors.front();
}

TEST_F(VerbsSendQueueTest, StoppedByALimitTheLastPostedWrIsSignaled) {
  // Without that signal nothing would retire the WRs after the last group: no CQE, no room.
  configure(13, 8);  // signal interval 3: a full SQ ends one WR into a group
  std::vector<VerbsSendQueue::Wr> wrs(40, write());
  Done d;
  ASSERT_TRUE(sq.enqueue(wrs, &d, "RDMA WRITE").ok());
  ASSERT_TRUE(sq.flush().ok());
  ASSERT_EQ(dev.on_sq.size(), 13u);
  EXPECT_TRUE(dev.on_sq[11].signaled);
  EXPECT_TRUE(dev.on_sq[12].signaled);
  runToIdle();
  EXPECT_EQ(d.calls, 1);

  configure(64, 2);  // interval 16: the READ limit stops the flush
  std::vector<VerbsSendQueue::Wr> reads(5, read());
  Done r;
  ASSERT_TRUE(sq.enqueue(reads, &r, "RDMA READ").ok());
  auto n = sq.flush();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 2);
  EXPECT_FALSE(dev.on_sq[0].signaled);
  EXPECT_TRUE(dev.on_sq[1].signaled);
  runToIdle();
  EXPECT_EQ(r.calls, 1);
  EXPECT_TRUE(dev.errors.empty()) << dev.errors.front();
}

TEST_F(VerbsSendQueueTest, ReadLimitHoldsReadsBackButNotTheWritesBeforeThem) {
  configure(64, 2);
  std::vector<Done> done(6);
  auto r = read();
  auto w = write();
  ASSERT_TRUE(sq.enqueue({&w, 1}, &done[0], "RDMA WRITE").ok());
  for (int i = 1; i < 5; ++i) ASSERT_TRUE(sq.enqueue({&r, 1}, &done[i], "RDMA READ").ok());
  ASSERT_TRUE(sq.enqueue({&w, 1}, &done[5], "RDMA WRITE").ok());
  auto n = sq.flush();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 3);  // the write and two reads; the third read waits, and the write behind it
  EXPECT_EQ(sq.readsInFlight(), 2u);
  EXPECT_FALSE(sq.canPost());
  runToIdle();
  for (const Done& d : done) EXPECT_EQ(d.calls, 1);
  EXPECT_EQ(dev.max_reads, 2u);
  EXPECT_EQ(sq.readsInFlight(), 0u);
  EXPECT_TRUE(dev.errors.empty()) << dev.errors.front();
}

TEST_F(VerbsSendQueueTest, InlinesSmallWritesAndSendsOnly) {
  configure(16, 4, /*max_inline=*/128);
  Done a, b, c;
  auto small = write(128);
  auto big = write(129);
  auto r = read();
  r.sge.length = 8;
  ASSERT_TRUE(sq.enqueue({&small, 1}, &a, "w").ok());
  ASSERT_TRUE(sq.enqueue({&big, 1}, &b, "w").ok());
  ASSERT_TRUE(sq.enqueue({&r, 1}, &c, "r").ok());
  ASSERT_TRUE(sq.flush().ok());
  ASSERT_EQ(dev.on_sq.size(), 3u);
  EXPECT_TRUE(dev.on_sq[0].inlined);
  EXPECT_FALSE(dev.on_sq[1].inlined);
  EXPECT_FALSE(dev.on_sq[2].inlined);  // a READ's data comes back: never inline
}

TEST_F(VerbsSendQueueTest, RandomMixEveryOpCompletesExactlyOnceWithinAllLimits) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    FakeSq d;
    VerbsSendQueue q(kSerial, d.fn());
    std::mt19937 rng(seed);
    const uint32_t depth = 4 + rng() % 60;
    const uint32_t read_limit = 1 + rng() % 8;
    d.depth = depth;
    d.read_limit = read_limit;
    q.configure(depth, 64, read_limit);
    std::vector<std::unique_ptr<Done>> ops;
    for (int i = 0; i < 400; ++i) {
      std::vector<VerbsSendQueue::Wr> wrs(1 + rng() % 7, rng() % 3 == 0 ? read() : write());
      ops.push_back(std::make_unique<Done>());
      ASSERT_TRUE(q.enqueue(wrs, ops.back().get(), "op").ok());
      if (rng() % 2) {
        ASSERT_TRUE(q.flush().ok());
      }
      // Deliver a few CQEs now and then, like progress() between posts.
      for (uint32_t k = rng() % 3; k > 0; --k) {
        auto cqe = d.nextCqe();
        if (!cqe) break;
        if (Completion* done = q.onSuccess(*cqe)) {
          ASSERT_TRUE(q.flush().ok());
          done->complete(Status());
        }
      }
    }
    for (int guard = 0; guard < 100000 && (q.pendingWrs() > 0 || !d.on_sq.empty()); ++guard) {
      ASSERT_TRUE(q.flush().ok());
      if (auto cqe = d.nextCqe()) {
        if (Completion* done = q.onSuccess(*cqe)) done->complete(Status());
      }
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      ASSERT_EQ(ops[i]->calls, 1) << "seed " << seed << " op " << i;
      EXPECT_TRUE(ops[i]->status.ok());
    }
    EXPECT_EQ(q.outstandingOps(), 0u);
    EXPECT_EQ(q.postedWrs(), 0u);
    EXPECT_EQ(q.readsInFlight(), 0u);
    EXPECT_LE(d.max_on_sq, depth) << "seed " << seed;
    EXPECT_LE(d.max_reads, read_limit) << "seed " << seed;
    EXPECT_LT(d.max_unsignaled_run, std::max<uint32_t>(1, depth / 4)) << "seed " << seed;
    EXPECT_TRUE(d.errors.empty()) << "seed " << seed << ": " << d.errors.front();
  }
}

TEST_F(VerbsSendQueueTest, CqeErrorFailsItsOpWithItsStatusAndTheOthersBroken) {
  configure(8, 2);
  std::vector<Done> done(5);
  auto w = write();
  std::vector<VerbsSendQueue::Wr> two(2, read());
  ASSERT_TRUE(sq.enqueue({&w, 1}, &done[0], "RDMA WRITE").ok());
  ASSERT_TRUE(sq.enqueue(two, &done[1], "RDMA READ").ok());
  ASSERT_TRUE(sq.enqueue({&w, 1}, &done[2], "SEND").ok());
  std::vector<VerbsSendQueue::Wr> many(10, write());
  ASSERT_TRUE(sq.enqueue(many, &done[3], "RDMA WRITE").ok());  // partly still queued
  ASSERT_TRUE(sq.flush().ok());
  ASSERT_GT(sq.pendingWrs(), 0u);
  deliver(*dev.nextCqe());  // op 0 completes fine
  ASSERT_EQ(done[0].calls, 1);
  const uint64_t failed_id = dev.on_sq[1].wr_id;  // op 1's last WR: say it failed
  ASSERT_STREQ(sq.liveKind(failed_id), "RDMA READ");

  VerbsSendQueue::Completions out;
  const Status op_status(StatusCode::kRemoteAccessError, "remote key revoked");
  const Status broken(StatusCode::kConnectionBroken, "the connection broke");
  sq.failAll(broken, failed_id, op_status, &out);
  for (auto& [d, s] : out) d->complete(s);
  EXPECT_EQ(done[0].calls, 1);
  EXPECT_TRUE(done[0].status.ok());
  EXPECT_EQ(done[1].calls, 1);
  EXPECT_EQ(done[1].status.code(), StatusCode::kRemoteAccessError);
  for (int i : {2, 3}) {
    EXPECT_EQ(done[i].calls, 1) << i;
    EXPECT_EQ(done[i].status.code(), StatusCode::kConnectionBroken) << i;
  }
  EXPECT_EQ(done[4].calls, 0);  // never queued
  EXPECT_EQ(sq.outstandingOps(), 0u);
  EXPECT_EQ(sq.pendingWrs(), 0u);
  EXPECT_EQ(sq.postedWrs(), 0u);
  // The flushed CQEs that follow complete nothing a second time.
  while (auto cqe = dev.nextCqe()) EXPECT_EQ(sq.onSuccess(*cqe), nullptr);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(done[i].calls, 1) << i;
}

TEST_F(VerbsSendQueueTest, CqeErrorOfAStaleWrIdFailsEveryOpAsBroken) {
  configure(8, 2);
  Done old_op, live;
  auto w = write();
  ASSERT_TRUE(sq.enqueue({&w, 1}, &old_op, "old").ok());
  ASSERT_TRUE(sq.flush().ok());
  const uint64_t stale = dev.on_sq.front().wr_id;
  runToIdle();
  ASSERT_TRUE(sq.enqueue({&w, 1}, &live, "live").ok());  // reuses the slot
  VerbsSendQueue::Completions out;
  sq.failAll(Status(StatusCode::kConnectionBroken, "broke"), stale,
             Status(StatusCode::kRemoteAccessError, "x"), &out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].first, &live);
  EXPECT_EQ(out[0].second.code(), StatusCode::kConnectionBroken);
}

TEST_F(VerbsSendQueueTest, AFailedPostIsReportedAndFailAllResetsTheCounters) {
  configure(8, 2);
  Done d;
  std::vector<VerbsSendQueue::Wr> wrs(3, read());
  ASSERT_TRUE(sq.enqueue(wrs, &d, "RDMA READ").ok());
  dev.fail_next = 12;
  auto n = sq.flush();
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), StatusCode::kConnectionBroken);
  VerbsSendQueue::Completions out;
  sq.failAll(n.status(), std::nullopt, Status(), &out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].first, &d);
  EXPECT_EQ(sq.postedWrs(), 0u);
  EXPECT_EQ(sq.readsInFlight(), 0u);
  // The queue is usable again (a new connection's ops would start from zero).
  Done next;
  auto w = write();
  ASSERT_TRUE(sq.enqueue({&w, 1}, &next, "RDMA WRITE").ok());
  ASSERT_TRUE(sq.flush().ok());
  EXPECT_EQ(dev.on_sq.size(), 1u);
}

TEST_F(VerbsSendQueueTest, RejectsAnEmptyOp) {
  configure(8, 2);
  Done d;
  EXPECT_EQ(sq.enqueue({}, &d, "x").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sq.outstandingOps(), 0u);
}

TEST_F(VerbsSendQueueTest, NothingIsPostedBeforeTheQueueIsConfigured) {
  Done d;
  auto w = write();
  ASSERT_TRUE(sq.enqueue({&w, 1}, &d, "RDMA WRITE").ok());
  auto n = sq.flush();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0);
  EXPECT_EQ(dev.posts, 0u);
  configure(8, 2);
  runToIdle();
  EXPECT_EQ(d.calls, 1);
}

}  // namespace
}  // namespace zcx::transport::verbs

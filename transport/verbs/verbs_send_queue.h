// VerbsSendQueue: the send side of one RC QP without the device. It owns the op slot table
// (wr_ids carry a slot generation, so a stale CQE matches no op), the software queue of WRs the
// SQ has no room for yet, selective signaling (one signaled WR per group: its CQE retires the
// whole group) and the READ limit; it decides which WRs to post and which to signal. Posting
// itself is a function it is given: ibv_post_send in VerbsEndpoint, a recording fake in tests.
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

class VerbsSendQueue {
 public:
  // wr_id of a send WR: [63..32] endpoint serial | [31] 0 (the endpoint's receives set it)
  //                     | [30] last WR of its op | [29] 0 | [28..20] slot generation | [19..0] slot
  static constexpr uint64_t kLastBit = uint64_t{1} << 30;
  static constexpr uint32_t kSlotBits = 20;
  static constexpr uint32_t kMaxSlots = uint32_t{1} << kSlotBits;
  static constexpr uint16_t kGenMask = 0x1ff;
  /// Low 32 bits of a wr_id that matches no op (bit 29 set, which wrId() never sets).
  static constexpr uint64_t kNoOpLowBits = kLastBit - 1;

  /// One WR of an op. The queue fills in wr_id, send_flags, sg_list and next.
  struct Wr {
    ibv_send_wr wr{};
    ibv_sge sge{};
    bool is_read = false;
  };
  /// Posts a chain of WRs (linked by next); an error breaks the connection.
  using PostFn = std::function<Status(ibv_send_wr* first)>;
  using Completions = std::vector<std::pair<Completion*, Status>>;

  VerbsSendQueue(uint32_t serial, PostFn post);

  /// The connection's limits, known once it is established (nothing is posted before): a
  /// group is signaled every sq_depth / 4 WRs.
  void configure(uint32_t sq_depth, uint32_t max_inline, uint32_t read_limit);

  /// Queues one op of `wrs` (not empty): the op completes `done` once its last WR's CQE
  /// arrives. kResourceExhausted when the slot table is full (nothing queued then).
  Status enqueue(std::span<const Wr> wrs, Completion* done, const char* kind);
  /// Posts what the SQ depth and the READ limit allow. Returns the number of WRs posted, or the
  /// post function's error (the queue's counters already include the WRs: the caller breaks
  /// the connection, which calls failAll()).
  Result<int> flush();
  /// Whether flush() would post something.
  bool canPost() const;

  /// The kind given to enqueue() of the live op of `wr_id`; nullptr for a stale or foreign id.
  const char* liveKind(uint64_t wr_id) const;
  /// A successful send CQE: retires the oldest signaled group. Returns the op `wr_id` finished
  /// (its slot is released), or nullptr when the op has more WRs or the id is stale.
  Completion* onSuccess(uint64_t wr_id);
  /// Fails every outstanding op into `out`: the live op of `failed_wr_id` with `op_status`, the
  /// others with `others`. The queue is empty afterwards (slots released, counters zero).
  void failAll(const Status& others, std::optional<uint64_t> failed_wr_id, const Status& op_status,
               Completions* out);

  uint32_t postedWrs() const { return sq_posted_; }  ///< posted, not yet retired by a CQE
  uint32_t readsInFlight() const { return reads_inflight_; }
  size_t pendingWrs() const { return pending_.size(); }  ///< queued, not yet posted
  size_t outstandingOps() const { return slots_.size() - free_slots_.size(); }

 private:
  struct OpSlot {
    Completion* done = nullptr;
    uint16_t gen = 0;
    bool active = false;
    const char* kind = "";
  };
  struct PendingWr {
    ibv_send_wr wr{};
    ibv_sge sge{};
    uint32_t slot = 0;
    bool last_of_op = false;
    bool is_read = false;
  };
  struct SignalGroup {
    uint32_t wrs = 0;
    uint32_t reads = 0;
  };

  uint64_t wrId(uint32_t slot, uint16_t gen, bool last) const;
  /// The slot of `wr_id` if it names a live op (same generation).
  std::optional<uint32_t> liveSlot(uint64_t wr_id) const;
  Result<uint32_t> allocSlot(Completion* done, const char* kind);
  void releaseSlot(uint32_t slot);
  /// Signals `wr`: its CQE retires the run of WRs since the previous signaled one.
  void closeGroup(ibv_send_wr& wr);

  const uint32_t serial_;
  const PostFn post_;
  uint32_t sq_depth_ = 0;
  uint32_t max_inline_ = 0;
  uint32_t read_limit_ = 1;
  uint32_t signal_interval_ = 1;

  std::vector<OpSlot> slots_;
  std::vector<uint32_t> free_slots_;
  std::deque<PendingWr> pending_;
  std::deque<SignalGroup> groups_;
  uint32_t sq_posted_ = 0;       ///< WRs posted and not yet retired by a CQE
  uint32_t reads_inflight_ = 0;  ///< READ WRs among them
  uint32_t unsignaled_run_ = 0;
  uint32_t unsignaled_reads_ = 0;
  std::vector<ibv_send_wr> post_buf_;
  std::vector<ibv_sge> sge_buf_;
};

}  // namespace zcx::transport::verbs

#include "verbs/verbs_send_queue.h"

#include <algorithm>

namespace zcx::transport::verbs {

VerbsSendQueue::VerbsSendQueue(uint32_t serial, PostFn post)
    : serial_(serial), post_(std::move(post)) {}

void VerbsSendQueue::configure(uint32_t sq_depth, uint32_t max_inline, uint32_t read_limit) {
  sq_depth_ = sq_depth;
  max_inline_ = max_inline;
  read_limit_ = read_limit;
  signal_interval_ = std::max<uint32_t>(1, sq_depth / 4);
}

uint64_t VerbsSendQueue::wrId(uint32_t slot, uint16_t gen, bool last) const {
  return (uint64_t{serial_} << 32) | (last ? kLastBit : 0) |
         (static_cast<uint64_t>(gen & kGenMask) << kSlotBits) | slot;
}

std::optional<uint32_t> VerbsSendQueue::liveSlot(uint64_t wr_id) const {
  const auto slot = static_cast<uint32_t>(wr_id & (kMaxSlots - 1));
  const auto gen = static_cast<uint16_t>((wr_id >> kSlotBits) & kGenMask);
  // Bit 29 is never set in an op's wr_id: such an id (the drain marker) is nobody's.
  if ((wr_id & (uint64_t{1} << 29)) != 0) return std::nullopt;
  if (slot < slots_.size() && slots_[slot].active && slots_[slot].gen == gen) return slot;
  return std::nullopt;
}

Result<uint32_t> VerbsSendQueue::allocSlot(Completion* done, const char* kind) {
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    if (slots_.size() >= kMaxSlots) {
      return Status(StatusCode::kResourceExhausted,
                    "too many outstanding operations on one verbs endpoint");
    }
    slot = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  OpSlot& s = slots_[slot];
  s.done = done;
  s.active = true;
  s.kind = kind;
  return slot;
}

void VerbsSendQueue::releaseSlot(uint32_t slot) {
  OpSlot& s = slots_[slot];
  s.active = false;
  s.done = nullptr;
  s.gen = static_cast<uint16_t>((s.gen + 1) & kGenMask);
  free_slots_.push_back(slot);
}

Status VerbsSendQueue::enqueue(std::span<const Wr> wrs, Completion* done, const char* kind) {
  if (wrs.empty() || done == nullptr) {
    return Status(StatusCode::kInvalidArgument, "an op needs a WR and a completion");
  }
  auto slot_r = allocSlot(done, kind);
  if (!slot_r.ok()) return slot_r.status();
  const uint32_t slot = *slot_r;
  const uint16_t gen = slots_[slot].gen;
  for (size_t i = 0; i < wrs.size(); ++i) {
    PendingWr p;
    p.wr = wrs[i].wr;
    p.sge = wrs[i].sge;
    p.is_read = wrs[i].is_read;
    p.slot = slot;
    p.last_of_op = i + 1 == wrs.size();
    p.wr.wr_id = wrId(slot, gen, p.last_of_op);
    pending_.push_back(p);
  }
  return Status();
}

void VerbsSendQueue::closeGroup(ibv_send_wr& wr) {
  wr.send_flags |= IBV_SEND_SIGNALED;
  groups_.push_back({unsignaled_run_, unsignaled_reads_});
  unsignaled_run_ = 0;
  unsignaled_reads_ = 0;
}

Result<int> VerbsSendQueue::flush() {
  if (pending_.empty()) return 0;
  post_buf_.clear();
  sge_buf_.clear();
  uint32_t reads = 0;
  while (!pending_.empty() && sq_posted_ + post_buf_.size() < sq_depth_) {
    PendingWr& p = pending_.front();
    if (p.is_read && reads_inflight_ + reads >= read_limit_) break;
    post_buf_.push_back(p.wr);
    sge_buf_.push_back(p.sge);
    ibv_send_wr& wr = post_buf_.back();
    wr.send_flags = 0;
    const bool can_inline = wr.opcode == IBV_WR_SEND || wr.opcode == IBV_WR_RDMA_WRITE ||
                            wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM;
    if (can_inline && wr.num_sge == 1 && p.sge.length <= max_inline_) {
      wr.send_flags |= IBV_SEND_INLINE;
    }
    ++unsignaled_run_;
    if (p.is_read) {
      ++reads;
      ++unsignaled_reads_;
    }
    if (p.last_of_op || unsignaled_run_ >= signal_interval_) closeGroup(wr);
    pending_.pop_front();
  }
  if (post_buf_.empty()) return 0;
  // Stopped by a limit with the last WR unsignaled: signal it, or nothing would free the slots.
  if (!(post_buf_.back().send_flags & IBV_SEND_SIGNALED)) closeGroup(post_buf_.back());
  for (size_t i = 0; i < post_buf_.size(); ++i) {
    post_buf_[i].sg_list = post_buf_[i].num_sge > 0 ? &sge_buf_[i] : nullptr;
    post_buf_[i].next = i + 1 < post_buf_.size() ? &post_buf_[i + 1] : nullptr;
  }
  sq_posted_ += static_cast<uint32_t>(post_buf_.size());
  reads_inflight_ += reads;
  ZCX_RETURN_IF_ERROR(post_(post_buf_.data()));
  return static_cast<int>(post_buf_.size());
}

bool VerbsSendQueue::canPost() const {
  if (pending_.empty()) return false;
  return sq_posted_ < sq_depth_ && !(pending_.front().is_read && reads_inflight_ >= read_limit_);
}

const char* VerbsSendQueue::liveKind(uint64_t wr_id) const {
  const auto slot = liveSlot(wr_id);
  return slot ? slots_[*slot].kind : nullptr;
}

Completion* VerbsSendQueue::onSuccess(uint64_t wr_id) {
  // A successful send CQE is always a signaled WR: it retires its group of WRs.
  if (!groups_.empty()) {
    sq_posted_ -= std::min(sq_posted_, groups_.front().wrs);
    reads_inflight_ -= std::min(reads_inflight_, groups_.front().reads);
    groups_.pop_front();
  }
  const auto slot = liveSlot(wr_id);
  if (!slot || (wr_id & kLastBit) == 0) return nullptr;
  Completion* done = slots_[*slot].done;
  releaseSlot(*slot);
  return done;
}

void VerbsSendQueue::failAll(const Status& others, std::optional<uint64_t> failed_wr_id,
                             const Status& op_status, Completions* out) {
  const std::optional<uint32_t> failed = failed_wr_id ? liveSlot(*failed_wr_id) : std::nullopt;
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].active) continue;
    out->emplace_back(slots_[i].done, failed == i ? op_status : others);
    releaseSlot(i);
  }
  pending_.clear();
  groups_.clear();
  sq_posted_ = reads_inflight_ = unsignaled_run_ = unsignaled_reads_ = 0;
}

}  // namespace zcx::transport::verbs

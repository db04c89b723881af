// Unsignaled writes: no Request per write. They are gathered into batches, each posted as one
// transport write with one completion (the transport's own selective signalling does the rest),
// and Connection::flush() completes once every batch before it did.
#include <algorithm>
#include <utility>

#include "connection_impl.h"

namespace zcx::detail {
namespace {

// A batch goes out at this many writes or bytes, whichever comes first: large enough to spread
// the completion's cost, small enough that data does not wait long for the next write.
constexpr size_t kBatchWrites = 64;
constexpr size_t kBatchBytes = 256 * 1024;
// Batches in flight per connection before writeUnsignaled pushes back (16k writes).
constexpr size_t kMaxBatchesInFlight = 256;

}  // namespace

Status ConnectionImpl::writeUnsignaled(const RmaOp& op) {
  ZCX_RETURN_IF_ERROR(checkRmaOp(true, 0, op));
  bool posted = false;
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    if (closed_) return broken_;
    const auto& key = op.remote->key_;
    if (!key->key) {
      return Status(StatusCode::kConnectionBroken,
                    "the remote region's connection is closed; import it again on a new "
                    "connection");
    }
    UnsignaledBatch& b = unsignaled_;
    const bool posts = b.ops.size() + 1 >= kBatchWrites || b.bytes + op.length >= kBatchBytes;
    if (posts && unsignaled_in_flight_.size() >= kMaxBatchesInFlight) {
      return Status(StatusCode::kResourceExhausted,
                    std::to_string(kMaxBatchesInFlight) +
                        " batches of unsignaled writes are in flight to " + peer_name +
                        "; wait for a flush() before writing more");
    }
    const std::shared_ptr<RegionState>& region = op.local->state();
    b.ops.push_back({region->handle.get(),
                     reinterpret_cast<uint64_t>(op.local->data()) + op.local_offset, key->key.get(),
                     op.remote->descriptor().address + op.remote_offset, op.length});
    if (b.regions.empty() || b.regions.back() != region) {
      b.regions.push_back(region);
      b.pins.emplace_back(region);  // counted in flight: the region waits for it when destroyed
    }
    if (b.keys.empty() || b.keys.back() != key) b.keys.push_back(key);
    b.bytes += op.length;
    if (posts) {
      postUnsignaledLocked();
      posted = true;
    }
  }
  if (posted) engine_->notePosted();
  return Status::Ok();
}

Request ConnectionImpl::flush() {
  auto r = newRequest(OpKind::kWrite);
  r->metrics.reset();  // the batches count as writes; the flush itself moves nothing
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    if (closed_) {
      r->finish(broken_);
    } else {
      postUnsignaledLocked();
      flushes_.push_back(
          {unsignaled_flushed_, unsignaled_posted_, std::exchange(dropped_, Status::Ok()), r});
      unsignaled_flushed_ = unsignaled_posted_;
      settleFlushesLocked();
    }
  }
  engine_->notePosted();
  engine_->kick();  // a flush finished at once runs its callbacks on progress
  return Request(std::move(r));
}

void ConnectionImpl::postUnsignaledLocked() {
  if (unsignaled_.ops.empty()) return;
  UnsignaledBatch b = std::move(unsignaled_);
  unsignaled_ = UnsignaledBatch{};
  auto r = newRequest(OpKind::kWrite);
  r->setBytes(b.bytes);
  trackLocked(r);
  // The request holds the memory now (its own pins); the batch's holds end.
  for (size_t k = 0; k < std::max(b.regions.size(), b.keys.size()); ++k) {
    r->pin(k < b.regions.size() ? b.regions[k] : nullptr, k < b.keys.size() ? b.keys[k] : nullptr);
  }
  for (RegionPin& p : b.pins) engine_->dropLater(p.release());
  const uint64_t seq = ++unsignaled_posted_;
  // In flight before it is posted: its completion, whenever it comes, finds it.
  r->unsignaled_batch = seq;
  unsignaled_in_flight_.insert(seq);
  Status st = endpoint_->postWrite(b.ops, std::nullopt, r.get());
  if (!st.ok()) {
    unsignaled_in_flight_.erase(seq);
    batch_errors_.emplace(seq, st);
    abandonLocked(r.get(), st);  // nothing was posted: no complete() comes
  }
}

void ConnectionImpl::unsignaledDoneLocked(uint64_t seq, const Status& status) {
  unsignaled_in_flight_.erase(seq);
  if (!status.ok()) batch_errors_.emplace(seq, status);
  settleFlushesLocked();
}

void ConnectionImpl::settleFlushesLocked() {
  const uint64_t oldest =
      unsignaled_in_flight_.empty() ? UINT64_MAX : *unsignaled_in_flight_.begin();
  while (!flushes_.empty() && flushes_.front().upto < oldest) {
    PendingFlush f = std::move(flushes_.front());
    flushes_.pop_front();
    // Each flush reports what happened to its own writes: those dropped before it was made,
    // else the first failed batch it covers. (A failed batch also closes the connection.)
    Status outcome = std::move(f.dropped);
    auto first_failed = batch_errors_.upper_bound(f.from);
    if (outcome.ok() && first_failed != batch_errors_.end() && first_failed->first <= f.upto)
      outcome = first_failed->second;
    batch_errors_.erase(batch_errors_.begin(), batch_errors_.upper_bound(f.upto));
    f.request->finish(std::move(outcome));
  }
}

void ConnectionImpl::failUnsignaledLocked() {
  for (RegionPin& p : unsignaled_.pins) engine_->dropLater(p.release());
  unsignaled_ = UnsignaledBatch{};
  unsignaled_in_flight_.clear();  // their requests fail with the connection (breakLocked)
  batch_errors_.clear();
  dropped_ = Status::Ok();
  for (PendingFlush& f : flushes_) f.request->finish(broken_);
  flushes_.clear();
}

void ConnectionImpl::dropUnsignaledFromLocked(const RegionState* region) {
  UnsignaledBatch& b = unsignaled_;
  if (std::none_of(b.regions.begin(), b.regions.end(),
                   [&](const auto& r) { return r.get() == region; })) {
    return;
  }
  // Not posted yet: they can still be recalled, so they are, and the next flush says so.
  for (RegionPin& p : b.pins) engine_->dropLater(p.release());
  unsignaled_ = UnsignaledBatch{};
  if (dropped_.ok()) {
    dropped_ = Status(StatusCode::kCancelled,
                      "a MemoryRegion used by unsignaled writes not posted yet was destroyed; the "
                      "unsignaled writes gathered with them were dropped");
  }
}

}  // namespace zcx::detail

#include "zcx/request.h"

#include "connection_impl.h"
#include "engine_impl.h"
#include "request_state.h"

namespace zcx {
namespace detail {

void RequestState::complete(Status status) {
  // Keep ourselves alive through finish(): `self` may hold the last reference.
  std::shared_ptr<RequestState> keep = std::move(self);
  ConnectionImpl* conn = connection;
  ConnectionImpl* batch_of = unsignaled_batch != 0 ? connection : nullptr;
  if (connection) connection->unlink(this);
  releasePins();  // the transport no longer touches the memory
  if (conn != nullptr && batch_of == nullptr && status.code() == StatusCode::kRemoteAccessError &&
      conn->holdAccessErrorLocked(keep, status)) {
    return;  // finished once the connection knows whether its peer is still there
  }
  const Status outcome = batch_of ? status : Status();
  finish(std::move(status));
  // After finish(): a flush it lets complete sees this batch already counted in the stats.
  if (batch_of) batch_of->unsignaledDoneLocked(unsignaled_batch, outcome);
}

void RequestState::releasePins() {
  region_pins.forEach([&](RegionPin& p) { engine_->dropLater(p.release()); });
  region_pins.clear();
  key_pins.clear();
}

void RequestState::pin(const std::shared_ptr<RegionState>& region,
                       const std::shared_ptr<RemoteKeyRef>& key) {
  if (region && (region_pins.empty() || region_pins.back().get() != region.get()))
    region_pins.emplace_back(region);
  if (key && (key_pins.empty() || key_pins.back() != key)) key_pins.push_back(key);
}

bool RequestState::uses(const RegionState* region) const {
  return region_pins.any([&](const RegionPin& p) { return p.get() == region; });
}

bool RequestState::finish(Status status) {
  std::function<void(const Status&)> cb;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_.load(std::memory_order_relaxed)) return false;
    status_ = std::move(status);
    cb = std::move(callback_);
    // Counted before anyone can see the request done: a waiter then reads its own operation
    // in Engine::stats(). Relaxed atomic adds; mu_ is per request, not shared.
    // The reference goes with it: a Request kept by the user does not keep a closed
    // connection's counters listed.
    if (metrics) {
      metrics->record(op_kind, status_.code(), bytes_, posted, engine_->completionNow());
      metrics.reset();
    }
    // Last: whoever sees done_ (without mu_, done()) sees the status and the counters too.
    done_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
  engine_->wakeSleepingWaiters();
  if (cb) engine_->deferCallback(std::move(cb), status_);
  return true;
}

// Polled in every pipeline loop (Request::done/test): one acquire load, no lock. status_ never
// changes once done_ is set.
bool RequestState::done() const { return done_.load(std::memory_order_acquire); }

Status RequestState::status() const {
  if (done()) return status_;
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

bool RequestState::waitUntil(Clock::time_point until) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, until, [&] { return done_.load(std::memory_order_relaxed); });
}

void RequestState::onComplete(std::function<void(const Status&)> callback) {
  Status final_status;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_.load(std::memory_order_relaxed)) {
      callback_ = std::move(callback);
      return;
    }
    final_status = status_;
  }
  // Already complete: still on a progress thread, never in the caller's (it may hold a lock the
  // callback takes).
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    engine_->deferCallback(std::move(callback), std::move(final_status));
  }
  engine_->kick();
}

}  // namespace detail

Status Request::wait(std::chrono::milliseconds timeout) {
  if (!state_) return Status(StatusCode::kInvalidArgument, "wait() on an empty Request");
  auto until = detail::Clock::now() + timeout;
  if (state_->engine()->manualProgress()) {
    if (!state_->done()) state_->engine()->progressUntil([&] { return state_->done(); }, until);
  } else {
    state_->waitUntil(until);
  }
  if (!state_->done()) {
    return Status(StatusCode::kStillInFlight,
                  "operation still in flight after " + std::to_string(timeout.count()) +
                      " ms of waiting; its buffers are still in use: wait again (it completes "
                      "by its own deadline, operation_timeout)");
  }
  return state_->status();
}

std::optional<Status> Request::test() {
  if (!state_) return Status(StatusCode::kInvalidArgument, "test() on an empty Request");
  if (!state_->done() && state_->engine()->manualProgress()) state_->engine()->progressOnce();
  if (!state_->done()) return std::nullopt;
  return state_->status();
}

bool Request::done() const { return state_ && state_->done(); }

size_t Request::bytes() const { return state_ ? state_->bytes() : 0; }

void Request::onComplete(std::function<void(const Status&)> callback) {
  if (!state_) {
    callback(Status(StatusCode::kInvalidArgument, "onComplete() on an empty Request"));
    return;
  }
  state_->onComplete(std::move(callback));
}

Status waitAll(std::span<Request> requests, std::chrono::milliseconds timeout) {
  auto until = detail::Clock::now() + timeout;
  Status first;
  for (auto& r : requests) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - detail::Clock::now());
    Status s = r.wait(std::max(left, std::chrono::milliseconds(0)));
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

}  // namespace zcx

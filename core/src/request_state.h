// The shared state behind a Request: completes exactly once, whoever gets there first
// (the transport, the deadline, or a close), and only then runs the user's callback.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "engine_impl.h"
#include "metrics.h"
#include "small_vector.h"
#include "socket.h"
#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::detail {

class EngineImpl;
class ConnectionImpl;
struct RemoteKeyRef;

class RequestState final : public transport::Completion {
 public:
  explicit RequestState(std::shared_ptr<EngineImpl> engine) : engine_(std::move(engine)) {}

  /// The transport is done with the operation and no longer touches its memory (engine lock
  /// held). Unlinks it from its connection's outstanding list, releases what it pinned and
  /// finishes it if nothing (deadline, close) finished it before.
  void complete(Status status) override;
  /// Holds `region` and `key` (may be null) until complete(); consecutive repeats are held once.
  void pin(const std::shared_ptr<RegionState>& region, const std::shared_ptr<RemoteKeyRef>& key);
  /// Ends what pin() held: the holds end now, the references are dropped outside the engine
  /// lock (the last one deregisters). Engine lock held.
  void releasePins();
  /// Whether this operation holds `region`.
  bool uses(const RegionState* region) const;

  /// The user-visible completion; false if already complete. Engine lock held.
  bool finish(Status status);

  bool done() const;
  Status status() const;
  size_t bytes() const { return bytes_; }
  void setBytes(size_t n) { bytes_ = n; }
  /// Waits on the condition variable (thread mode) until done or `until`.
  bool waitUntil(Clock::time_point until);
  void onComplete(std::function<void(const Status&)> callback);

  EngineImpl* engine() const { return engine_.get(); }

  // Outstanding-list bookkeeping, owned by ConnectionImpl under the engine lock.
  ConnectionImpl* connection = nullptr;
  Clock::time_point deadline{};
  RequestState* prev = nullptr;
  RequestState* next = nullptr;
  std::shared_ptr<RequestState> self;     ///< keeps the state alive while the transport holds it
  SmallVector<RegionPin, 2> region_pins;  ///< local memory the operation uses (until complete())
  SmallVector<std::shared_ptr<RemoteKeyRef>, 2> key_pins;  ///< remote keys it uses

  // Counting (set before the request is posted; then under mu_): finish() records the outcome
  // once in its connection's counters and drops the reference.
  /// An unsignaled batch's sequence number (0: an ordinary operation): complete() reports it to
  /// its connection so that flushes waiting for it can finish.
  uint64_t unsignaled_batch = 0;
  std::shared_ptr<ConnMetrics> metrics;
  OpKind op_kind = OpKind::kWrite;
  Clock::time_point posted{};

 private:
  std::shared_ptr<EngineImpl> engine_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> done_{false};  ///< set once, under mu_, after status_
  Status status_;
  size_t bytes_ = 0;
  std::function<void(const Status&)> callback_;
};

}  // namespace zcx::detail

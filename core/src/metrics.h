// Traffic counters of one connection, bumped on the operation path with relaxed atomics (no
// lock), and the engine's registry that snapshots them and renders Prometheus text.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "socket.h"
#include "zcx/stats.h"

namespace zcx::detail {

/// One connection's counters. Writers: whoever completes an operation (engine lock held, but
/// the lock is not what makes them safe); readers: snapshots from any thread.
class ConnMetrics {
 public:
  ConnMetrics(uint64_t id, std::string peer) : id(id), peer(std::move(peer)) {}

  /// An operation of `kind` posted at `posted` completed with `code` having moved `bytes`.
  void record(OpKind kind, StatusCode code, size_t bytes, Clock::time_point posted,
              Clock::time_point now);
  /// An operation refused before it was posted (no latency).
  void recordError(StatusCode code);
  /// A receive that completed Ok was written by the transport straight into its buffer.
  void countZeroCopyRecv() { recv_zero_copy_.fetch_add(1, std::memory_order_relaxed); }
  void markClosed() { open_.store(false, std::memory_order_relaxed); }
  void snapshot(TrafficStats* out) const;
  bool open() const { return open_.load(std::memory_order_relaxed); }

  const uint64_t id;
  const std::string peer;

 private:
  using Counter = std::atomic<uint64_t>;
  struct Op {
    Counter operations{0}, bytes{0}, sum_us{0};
    std::array<Counter, LatencyHistogram::kBuckets> buckets{};
  };
  std::array<Op, kOpKinds> ops_{};
  std::array<Counter, kStatusCodes> errors_{};
  Counter recv_zero_copy_{0};
  std::atomic<bool> open_{true};
};

/// The bucket of a latency of `us` microseconds (exposed for tests).
size_t latencyBucket(uint64_t us);

/// Escapes a Prometheus label value: backslash, double quote and newline.
std::string escapeLabelValue(std::string_view v);

/// Renders `stats` in the Prometheus text exposition format (version 0.0.4).
std::string renderPrometheus(const EngineStats& stats, std::string_view engine_name);

/// The engine's connections' counters. The registry's lock is taken when a connection is made
/// and by snapshots, never per operation.
class MetricsRegistry {
 public:
  explicit MetricsRegistry(std::string rail_name) : rail_name_(std::move(rail_name)) {}
  std::shared_ptr<ConnMetrics> add(uint64_t id, std::string peer);
  /// Connections still referenced, and the rail totals (including connections gone).
  EngineStats snapshot();

 private:
  void retireLocked();

  const std::string rail_name_;
  std::mutex mu_;
  size_t prune_at_ = 64;
  std::vector<std::shared_ptr<ConnMetrics>> conns_;  ///< by id (ids only grow)
  TrafficStats retired_;  ///< what connections no longer referenced had counted
};

}  // namespace zcx::detail

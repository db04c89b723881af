// Counters an engine keeps about its traffic: per connection and per rail (Engine::stats()).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "zcx/export.h"
#include "zcx/status.h"

namespace zcx {

/// The kinds of operation that are counted. A batch (writeBatch, readBatch, writeWithNotify)
/// is one operation of its kind carrying the sum of its lengths.
enum class OpKind : uint8_t { kWrite = 0, kRead, kSend, kRecv };
inline constexpr size_t kOpKinds = 4;
/// "write", "read", "send", "recv".
ZCX_EXPORT std::string_view opKindName(OpKind kind);

/// One more than the largest StatusCode: the size of per-code arrays.
inline constexpr size_t kStatusCodes = static_cast<size_t>(StatusCode::kStillInFlight) + 1;

/// Latency from posting an operation to its completion, in log2 buckets of microseconds:
/// buckets[i] counts latencies in (2^(i-1), 2^i] us (buckets[0]: up to 1 us); the last bucket
/// counts everything slower than the one before it (Prometheus le="+Inf").
struct LatencyHistogram {
  static constexpr size_t kBuckets = 28;  ///< 1 us .. 2^26 us (67 s), then +Inf
  std::array<uint64_t, kBuckets> buckets{};
  uint64_t count = 0;   ///< sum of buckets
  uint64_t sum_us = 0;  ///< sum of all latencies in microseconds
  /// Upper bound of bucket i in microseconds (2^i); the last bucket is unbounded.
  static uint64_t upperBoundUs(size_t i) { return uint64_t{1} << i; }
};

/// What one operation kind moved. Only operations that completed Ok are counted here;
/// failed ones are counted in TrafficStats::errors under their StatusCode.
struct OpStats {
  uint64_t operations = 0;
  uint64_t bytes = 0;
  LatencyHistogram latency;  ///< of the operations counted above
};

struct TrafficStats {
  std::array<OpStats, kOpKinds> ops{};  ///< indexed by OpKind
  /// Operations that completed with an error, indexed by StatusCode (kOk stays 0). Includes
  /// operations refused before posting (a bad range) and those cancelled by a close.
  std::array<uint64_t, kStatusCodes> errors{};
  /// Of the receives counted under OpKind::kRecv, those the transport wrote straight into the
  /// posted buffer (zero copy: UCX rendezvous fetched into it); the others were copied once.
  uint64_t recv_zero_copy = 0;

  OpStats& op(OpKind k) { return ops[static_cast<size_t>(k)]; }
  const OpStats& op(OpKind k) const { return ops[static_cast<size_t>(k)]; }
  uint64_t error(StatusCode c) const { return errors[static_cast<size_t>(c)]; }
  /// Adds `other` into this (totals of several connections).
  ZCX_EXPORT void add(const TrafficStats& other);
};

/// One connection that exists now. A closed one stays listed while its Connection handles (or
/// the engine's threads) still refer to it; then its counts live on in its rail's totals.
struct ConnectionStats {
  uint64_t id = 0;    ///< unique in this process
  std::string peer;   ///< the peer's name (from the network: do not trust it)
  size_t rail = 0;    ///< index into EngineStats::rails
  bool open = false;  ///< false once closed (kept while its Connection handles remain)
  TrafficStats traffic;
};

/// A path traffic takes: today one per engine (its transport device/TLS). Its traffic is the
/// total of every connection that used it, including connections already gone.
struct RailStats {
  std::string name;  ///< e.g. "ucx:tcp/lo" or "verbs:rxe0"
  TrafficStats traffic;
};

/// Bytes one RDMA device (or the transport, if it has no devices to tell apart) carried for
/// this engine: writes, reads and sends it posted. With several rails, each one's share.
struct DeviceStats {
  std::string device;  ///< "rxe0"; the transport's name when it does not count per device
  uint64_t bytes = 0;
};

struct EngineStats {
  std::vector<RailStats> rails;
  std::vector<DeviceStats> devices;
  std::vector<ConnectionStats> connections;  ///< by id
};

}  // namespace zcx

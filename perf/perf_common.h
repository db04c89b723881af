// Shared pieces of zcx_perf: test kinds, exit codes, data patterns, latency statistics, results.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace zcx::perf {

using Clock = std::chrono::steady_clock;

enum class TestKind : uint32_t { kWriteBw = 1, kReadBw, kSendBw, kWriteLat, kReadLat, kSendLat };

inline bool parseTest(std::string_view s, TestKind* out) {
  static const std::pair<std::string_view, TestKind> kNames[] = {
      {"write_bw", TestKind::kWriteBw}, {"read_bw", TestKind::kReadBw},
      {"send_bw", TestKind::kSendBw},   {"write_lat", TestKind::kWriteLat},
      {"read_lat", TestKind::kReadLat}, {"send_lat", TestKind::kSendLat},
  };
  for (const auto& [name, kind] : kNames) {
    if (s == name) {
      *out = kind;
      return true;
    }
  }
  return false;
}

inline const char* testName(TestKind k) {
  switch (k) {
    case TestKind::kWriteBw: return "write_bw";
    case TestKind::kReadBw: return "read_bw";
    case TestKind::kSendBw: return "send_bw";
    case TestKind::kWriteLat: return "write_lat";
    case TestKind::kReadLat: return "read_lat";
    case TestKind::kSendLat: return "send_lat";
  }
  return "?";
}

inline bool isLatency(TestKind k) {
  return k == TestKind::kWriteLat || k == TestKind::kReadLat || k == TestKind::kSendLat;
}

constexpr int kExitUsage = 2, kExitFail = 1, kExitVerify = 3;

// ------------------------------------------------------------------ data patterns

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// The byte pattern of message `n` (seeded): 8 bytes at a time from splitmix64.
inline void fillPattern(uint8_t* p, size_t len, uint64_t seed, uint64_t n) {
  uint64_t base = splitmix64(seed ^ (n * 0x9e3779b97f4a7c15ull));
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = splitmix64(base + i);
    std::memcpy(p + i, &v, 8);
  }
  if (i < len) {
    uint64_t v = splitmix64(base + i);
    std::memcpy(p + i, &v, len - i);
  }
}

/// Number of bytes of [p, p+len) that differ from the pattern of message `n`.
inline uint64_t countMismatches(const uint8_t* p, size_t len, uint64_t seed, uint64_t n) {
  uint64_t base = splitmix64(seed ^ (n * 0x9e3779b97f4a7c15ull));
  uint64_t bad = 0;
  size_t i = 0;
  for (; i < len; i += 8) {
    uint64_t v = splitmix64(base + i);
    size_t k = std::min<size_t>(8, len - i);
    if (std::memcmp(p + i, &v, k) != 0) {
      const uint8_t* e = reinterpret_cast<const uint8_t*>(&v);
      for (size_t j = 0; j < k; ++j) bad += p[i + j] != e[j];
    }
  }
  return bad;
}

// ------------------------------------------------------------------ statistics

struct LatencyStats {
  double min = 0, avg = 0, p50 = 0, p99 = 0, p999 = 0, max = 0;  // microseconds
};

/// Percentiles of samples in nanoseconds (sorts the vector in place).
inline LatencyStats computeStats(std::vector<uint32_t>& ns, double scale = 1.0) {
  LatencyStats s;
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  double sum = 0;
  for (uint32_t v : ns) sum += v;
  auto at = [&](double q) {
    size_t i = static_cast<size_t>(q * static_cast<double>(ns.size() - 1) + 0.5);
    return ns[std::min(i, ns.size() - 1)] * scale / 1000.0;
  };
  s.min = ns.front() * scale / 1000.0;
  s.max = ns.back() * scale / 1000.0;
  s.avg = sum / static_cast<double>(ns.size()) * scale / 1000.0;
  s.p50 = at(0.50);
  s.p99 = at(0.99);
  s.p999 = at(0.999);
  return s;
}

struct PerfResult {
  std::string test;
  std::string transport;
  std::string transport_description;
  uint64_t size = 0;
  uint64_t iterations = 0;
  int depth = 0;
  int qps = 0;
  int batch = 1;
  uint64_t cq_mod = 1;  ///< write_bw: writes per completion (selective signalling)
  double seconds = 0;
  double bw_avg_MBps = 0;
  double bw_peak_MBps = 0;
  double msg_rate_Mpps = 0;
  LatencyStats lat;
  bool verified = false;
  uint64_t verify_errors = 0;
  uint64_t verified_bytes = 0;
  /// --cpu_util: CPU time each process used (all its threads) while the size ran, and the wall
  /// time it was measured over. Utilisation is in % of one core, like perftest's --cpu_util.
  bool cpu_measured = false;
  double cpu_client_s = 0, cpu_client_wall_s = 0;
  double cpu_server_s = 0, cpu_server_wall_s = 0;
  /// Bytes the size moved (for CPU-seconds per GB).
  double bytes_moved = 0;
  /// Bytes each device (rail) of this side carried in the measured phase (warm-up operations
  /// still in flight when it starts count too). EngineStats::devices.
  std::vector<std::pair<std::string, uint64_t>> rails;
};

/// This process's CPU time (user + system, every thread) and the wall clock, for --cpu_util.
struct CpuSample {
  double cpu_s = 0;
  std::chrono::steady_clock::time_point wall;
  static CpuSample now();
};

}  // namespace zcx::perf

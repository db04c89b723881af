#include "metrics.h"

#include <algorithm>
#include <bit>
#include <cinttypes>
#include <cstdio>

namespace zcx {

std::string_view opKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kWrite: return "write";
    case OpKind::kRead: return "read";
    case OpKind::kSend: return "send";
    case OpKind::kRecv: return "recv";
  }
  return "unknown";
}

void TrafficStats::add(const TrafficStats& other) {
  for (size_t k = 0; k < kOpKinds; ++k) {
    OpStats& a = ops[k];
    const OpStats& b = other.ops[k];
    a.operations += b.operations;
    a.bytes += b.bytes;
    for (size_t i = 0; i < LatencyHistogram::kBuckets; ++i)
      a.latency.buckets[i] += b.latency.buckets[i];
    a.latency.count += b.latency.count;
    a.latency.sum_us += b.latency.sum_us;
  }
  for (size_t c = 0; c < kStatusCodes; ++c) errors[c] += other.errors[c];
  recv_zero_copy += other.recv_zero_copy;
}

namespace detail {

size_t latencyBucket(uint64_t us) {
  if (us <= 1) return 0;
  // Smallest i with 2^i >= us.
  size_t i = static_cast<size_t>(std::bit_width(us - 1));
  return std::min(i, LatencyHistogram::kBuckets - 1);
}

void ConnMetrics::record(OpKind kind, StatusCode code, size_t bytes, Clock::time_point posted,
                         Clock::time_point now) {
  if (code != StatusCode::kOk) {
    recordError(code);
    return;
  }
  constexpr auto kRelaxed = std::memory_order_relaxed;
  Op& op = ops_[static_cast<size_t>(kind)];
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(now - posted).count();
  const uint64_t latency = us > 0 ? static_cast<uint64_t>(us) : 0;
  op.operations.fetch_add(1, kRelaxed);
  op.bytes.fetch_add(bytes, kRelaxed);
  op.sum_us.fetch_add(latency, kRelaxed);
  op.buckets[latencyBucket(latency)].fetch_add(1, kRelaxed);
}

void ConnMetrics::recordError(StatusCode code) {
  size_t c = static_cast<size_t>(code);
  if (c < kStatusCodes) errors_[c].fetch_add(1, std::memory_order_relaxed);
}

void ConnMetrics::snapshot(TrafficStats* out) const {
  constexpr auto kRelaxed = std::memory_order_relaxed;
  for (size_t k = 0; k < kOpKinds; ++k) {
    const Op& op = ops_[k];
    OpStats& s = out->ops[k];
    s.operations = op.operations.load(kRelaxed);
    s.bytes = op.bytes.load(kRelaxed);
    s.latency.sum_us = op.sum_us.load(kRelaxed);
    s.latency.count = 0;
    for (size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
      s.latency.buckets[i] = op.buckets[i].load(kRelaxed);
      s.latency.count += s.latency.buckets[i];
    }
  }
  for (size_t c = 0; c < kStatusCodes; ++c) out->errors[c] = errors_[c].load(kRelaxed);
  out->recv_zero_copy = recv_zero_copy_.load(kRelaxed);
}

std::shared_ptr<ConnMetrics> MetricsRegistry::add(uint64_t id, std::string peer) {
  auto m = std::make_shared<ConnMetrics>(id, std::move(peer));
  std::lock_guard<std::mutex> lock(mu_);
  // Connections come and go: fold the ones nothing refers to any more into the rail's totals
  // now and then, so the list stays as long as the live connections (amortised O(1)).
  if (conns_.size() >= prune_at_) {
    retireLocked();
    prune_at_ = std::max<size_t>(64, 2 * conns_.size());
  }
  conns_.push_back(m);
  return m;
}

void MetricsRegistry::retireLocked() {
  std::erase_if(conns_, [&](const std::shared_ptr<ConnMetrics>& m) {
    if (m.use_count() != 1) return false;
    // Only we hold it: no operation can count into it any more. The fence pairs with the
    // release of the last other owner's reference drop, so its counts are all visible.
    std::atomic_thread_fence(std::memory_order_acquire);
    TrafficStats t;
    m->snapshot(&t);
    retired_.add(t);
    return true;
  });
}

EngineStats MetricsRegistry::snapshot() {
  EngineStats out;
  std::lock_guard<std::mutex> lock(mu_);
  retireLocked();
  RailStats rail;
  rail.name = rail_name_;
  rail.traffic = retired_;
  out.connections.reserve(conns_.size());
  for (const auto& m : conns_) {
    ConnectionStats c;
    c.id = m->id;
    c.peer = m->peer;
    c.rail = 0;
    c.open = m->open();
    m->snapshot(&c.traffic);
    rail.traffic.add(c.traffic);
    out.connections.push_back(std::move(c));
  }
  out.rails.push_back(std::move(rail));
  return out;
}

std::string escapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char ch : v) {
    switch (ch) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += ch;
    }
  }
  return out;
}

namespace {

// Appends "name{labels} value\n".
void line(std::string* out, std::string_view name, const std::string& labels, uint64_t value) {
  *out += name;
  if (!labels.empty()) {
    *out += '{';
    *out += labels;
    *out += '}';
  }
  *out += ' ';
  *out += std::to_string(value);
  *out += '\n';
}

void header(std::string* out, std::string_view name, std::string_view type, std::string_view help) {
  *out += "# HELP ";
  *out += name;
  *out += ' ';
  *out += help;
  *out += "\n# TYPE ";
  *out += name;
  *out += ' ';
  *out += type;
  *out += '\n';
}

struct Series {
  std::string labels;  // already escaped, without braces
  const TrafficStats* traffic;
};

std::string label(std::string_view key, std::string_view value) {
  return std::string(key) + "=\"" + escapeLabelValue(value) + "\"";
}

// One metric family over every series (connections or rails).
void families(std::string* out, std::string_view prefix, const std::vector<Series>& series) {
  const std::string p(prefix);
  header(out, p + "operations_total", "counter", "Operations that completed Ok.");
  for (const auto& s : series)
    for (size_t k = 0; k < kOpKinds; ++k)
      line(out, p + "operations_total",
           s.labels + "," + label("op", opKindName(static_cast<OpKind>(k))),
           s.traffic->ops[k].operations);
  header(out, p + "bytes_total", "counter", "Bytes moved by operations that completed Ok.");
  for (const auto& s : series)
    for (size_t k = 0; k < kOpKinds; ++k)
      line(out, p + "bytes_total", s.labels + "," + label("op", opKindName(static_cast<OpKind>(k))),
           s.traffic->ops[k].bytes);
  header(out, p + "errors_total", "counter", "Operations that completed with an error, by code.");
  for (const auto& s : series)
    for (size_t c = 1; c < kStatusCodes; ++c)
      line(out, p + "errors_total",
           s.labels + "," + label("code", statusCodeName(static_cast<StatusCode>(c))),
           s.traffic->errors[c]);
  header(out, p + "recv_zero_copy_total", "counter",
         "Receives the transport wrote straight into the posted buffer (no copy).");
  for (const auto& s : series)
    line(out, p + "recv_zero_copy_total", s.labels, s.traffic->recv_zero_copy);
  header(out, p + "latency_microseconds", "histogram",
         "Time from posting an operation to its Ok completion, in microseconds.");
  for (const auto& s : series) {
    for (size_t k = 0; k < kOpKinds; ++k) {
      const LatencyHistogram& h = s.traffic->ops[k].latency;
      const std::string base = s.labels + "," + label("op", opKindName(static_cast<OpKind>(k)));
      uint64_t cumulative = 0;
      for (size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
        cumulative += h.buckets[i];
        std::string le = i + 1 == LatencyHistogram::kBuckets
                             ? std::string("+Inf")
                             : std::to_string(LatencyHistogram::upperBoundUs(i));
        line(out, p + "latency_microseconds_bucket", base + ",le=\"" + le + "\"", cumulative);
      }
      line(out, p + "latency_microseconds_sum", base, h.sum_us);
      line(out, p + "latency_microseconds_count", base, h.count);
    }
  }
}

}  // namespace

std::string renderPrometheus(const EngineStats& stats, std::string_view engine_name) {
  std::string out;
  const std::string engine = label("engine", engine_name);
  std::vector<Series> conns;
  for (const auto& c : stats.connections) {
    std::string rail = c.rail < stats.rails.size() ? stats.rails[c.rail].name : std::string();
    conns.push_back({engine + "," + label("conn", std::to_string(c.id)) + "," +
                         label("peer", c.peer) + "," + label("rail", rail),
                     &c.traffic});
  }
  families(&out, "zcx_", conns);
  std::vector<Series> rails;
  for (const auto& r : stats.rails)
    rails.push_back({engine + "," + label("rail", r.name), &r.traffic});
  families(&out, "zcx_rail_", rails);
  header(&out, "zcx_connections_open", "gauge", "Connections of this engine that are open.");
  uint64_t open = 0;
  for (const auto& c : stats.connections) open += c.open ? 1 : 0;
  line(&out, "zcx_connections_open", engine, open);
  return out;
}

}  // namespace detail
}  // namespace zcx

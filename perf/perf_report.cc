// zcx_perf's output: every result line (text table or JSON) and the metrics dump.
#include "perf_report.h"

#include <cinttypes>
#include <cstdio>
#include <sstream>

#include "perf_flags.h"
#include "zcx/zcx.h"

namespace zcx::perf {
namespace {

std::string jsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

double cpuPercent(double cpu_s, double wall_s) { return wall_s > 0 ? 100.0 * cpu_s / wall_s : 0; }

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

std::string toJson(const PerfResult& r) {
  std::ostringstream o;
  o << "{\"test\":" << jsonString(r.test) << ",\"transport\":" << jsonString(r.transport)
    << ",\"size\":" << r.size << ",\"iterations\":" << r.iterations
    << ",\"bw_avg_MBps\":" << num(r.bw_avg_MBps) << ",\"bw_peak_MBps\":" << num(r.bw_peak_MBps)
    << ",\"msg_rate_Mpps\":" << num(r.msg_rate_Mpps) << ",\"lat_us\":{\"min\":" << num(r.lat.min)
    << ",\"avg\":" << num(r.lat.avg) << ",\"p50\":" << num(r.lat.p50)
    << ",\"p99\":" << num(r.lat.p99) << ",\"p999\":" << num(r.lat.p999)
    << ",\"max\":" << num(r.lat.max) << "}"
    << ",\"depth\":" << r.depth << ",\"qps\":" << r.qps << ",\"batch\":" << r.batch
    << ",\"cq_mod\":" << r.cq_mod << ",\"seconds\":" << num(r.seconds)
    << ",\"verify\":" << (r.verified ? "true" : "false");
  if (r.verified)
    o << ",\"verify_errors\":" << r.verify_errors << ",\"verified_bytes\":" << r.verified_bytes;
  if (r.cpu_measured) {
    double gb = r.bytes_moved / 1e9;
    o << ",\"cpu_util\":{\"client\":" << num(cpuPercent(r.cpu_client_s, r.cpu_client_wall_s))
      << ",\"server\":" << num(cpuPercent(r.cpu_server_s, r.cpu_server_wall_s))
      << "},\"cpu_s\":{\"client\":" << num(r.cpu_client_s) << ",\"server\":" << num(r.cpu_server_s)
      << "}";
    if (gb > 0) {
      o << ",\"cpu_s_per_GB\":{\"client\":" << num(r.cpu_client_s / gb)
        << ",\"server\":" << num(r.cpu_server_s / gb) << "}";
    }
  }
  o << ",\"rails\":[";
  for (size_t i = 0; i < r.rails.size(); ++i) {
    o << (i == 0 ? "" : ",") << "{\"device\":" << jsonString(r.rails[i].first)
      << ",\"bytes\":" << r.rails[i].second << "}";
  }
  o << "]";
  o << ",\"transport_description\":" << jsonString(r.transport_description) << "}";
  return o.str();
}

void printHeader(bool latency) {
  std::printf(
      "---------------------------------------------------------------------------------------\n");
  if (latency) {
    std::printf(" %-10s %-12s %-11s %-11s %-11s %-11s %-11s %-11s %-11s\n", "#bytes", "#iterations",
                "t_min[us]", "t_max[us]", "t_p50[us]", "t_avg[us]", "t_p99[us]", "t_p99.9[us]",
                "MsgRate[Mpps]");
  } else {
    std::printf(" %-10s %-12s %-15s %-18s %-14s %-10s\n", "#bytes", "#iterations", "BW peak[MB/s]",
                "BW average[MB/s]", "MsgRate[Mpps]", "lat_p50[us]");
  }
}

void printRow(const PerfResult& r) {
  if (r.test.find("_lat") != std::string::npos) {
    std::printf(" %-10llu %-12llu %-11.3f %-11.3f %-11.3f %-11.3f %-11.3f %-11.3f %-11.6f",
                static_cast<unsigned long long>(r.size),
                static_cast<unsigned long long>(r.iterations), r.lat.min, r.lat.max, r.lat.p50,
                r.lat.avg, r.lat.p99, r.lat.p999, r.msg_rate_Mpps);
  } else {
    std::printf(" %-10llu %-12llu %-15.2f %-18.2f %-14.6f %-10.2f",
                static_cast<unsigned long long>(r.size),
                static_cast<unsigned long long>(r.iterations), r.bw_peak_MBps, r.bw_avg_MBps,
                r.msg_rate_Mpps, r.lat.p50);
  }
  if (r.cpu_measured) {
    std::printf("  cpu: client %.0f%% server %.0f%%",
                cpuPercent(r.cpu_client_s, r.cpu_client_wall_s),
                cpuPercent(r.cpu_server_s, r.cpu_server_wall_s));
  }
  if (r.verified) {
    std::printf("  verify: %s (%llu bytes checked)", r.verify_errors ? "FAILED" : "ok",
                static_cast<unsigned long long>(r.verified_bytes));
  }
  std::printf("\n");
  std::fflush(stdout);
}

void printClientBanner(TestKind kind, const std::string& transport, const std::string& description,
                       int depth, int qps, bool verify) {
  if (FLAGS_json) return;
  std::printf("zcx_perf %s  transport %s (%s)  depth %d  qps %d%s\n", testName(kind),
              transport.c_str(), description.c_str(), depth, qps, verify ? "  verify" : "");
  std::printf("MB/s = 10^6 bytes/s.%s\n",
              kind == TestKind::kReadLat ? " Latency: full round trip of a read."
              : isLatency(kind)          ? " Latency: one-way (half the round trip)."
                                         : " lat_p50: post to completion.");
  printHeader(isLatency(kind));
}

void printResult(const PerfResult& r) {
  if (FLAGS_json)
    std::printf("%s\n", toJson(r).c_str()), std::fflush(stdout);
  else
    printRow(r);
}

void printMetrics(const Engine& e, const char* side) {
  if (!FLAGS_metrics) return;
  FILE* out = FLAGS_json ? stderr : stdout;
  std::fprintf(out, "# zcx_perf %s metrics\n%s", side, e.metricsText().c_str());
  std::fflush(out);
}

void printMpiMatrix(const std::vector<double>& matrix, int n, uint64_t size, uint64_t iters,
                    int depth, const std::string& pattern, const std::string& transport) {
  const bool ring = pattern == "ring";
  if (FLAGS_json) {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        if (matrix[size_t(i) * n + j] <= 0) continue;
        std::printf("{\"test\":\"write_bw\",\"transport\":\"%s\",\"size\":%" PRIu64
                    ",\"iterations\":%" PRIu64
                    ",\"src\":%d,\"dst\":%d,\"bw_avg_MBps\":%.6g,\"pattern\":\"%s\"}\n",
                    transport.c_str(), size, iters, i, j, matrix[size_t(i) * n + j],
                    pattern.c_str());
      }
    }
  } else {
    std::printf("zcx_perf --mpi: write_bw %" PRIu64 " B, %" PRIu64
                " iterations, depth %d, %s, transport %s\n",
                size, iters, depth,
                ring ? "ring (all pairs at once)" : "every ordered pair, one at a time",
                transport.c_str());
    std::printf("bandwidth matrix, MB/s (10^6 B/s); row = writer, column = target\n%8s", "");
    for (int j = 0; j < n; ++j) std::printf(" %10d", j);
    std::printf("\n");
    for (int i = 0; i < n; ++i) {
      std::printf("%8d", i);
      for (int j = 0; j < n; ++j) {
        double v = matrix[size_t(i) * n + j];
        if (v > 0)
          std::printf(" %10.1f", v);
        else
          std::printf(" %10s", "-");
      }
      std::printf("\n");
    }
  }
  std::fflush(stdout);
}

}  // namespace zcx::perf

#include "perf_common.h"

#include <sys/resource.h>

#include <cstdio>
#include <sstream>

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
    << ",\"seconds\":" << num(r.seconds) << ",\"verify\":" << (r.verified ? "true" : "false");
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
  o << ",\"transport_description\":" << jsonString(r.transport_description) << "}";
  return o.str();
}

CpuSample CpuSample::now() {
  CpuSample c;
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto secs = [](const timeval& t) { return t.tv_sec + t.tv_usec / 1e6; };
  c.cpu_s = secs(u.ru_utime) + secs(u.ru_stime);
  c.wall = std::chrono::steady_clock::now();
  return c;
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

}  // namespace zcx::perf

#include "verbs/verbs_params.h"

#include <cerrno>
#include <cstdlib>
#include <string>

namespace zcx::transport::verbs {
namespace {

Result<uint32_t> parseParam(const std::string& key, const std::string& value, uint32_t lo,
                            uint32_t hi) {
  char* end = nullptr;
  errno = 0;
  const unsigned long v = std::strtoul(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    return Status(StatusCode::kInvalidArgument, "transport parameter " + key + "='" + value +
                                                    "' must be a number in [" + std::to_string(lo) +
                                                    ", " + std::to_string(hi) + "]");
  }
  return static_cast<uint32_t>(v);
}

}  // namespace

Result<VerbsOptions> parseOptions(const TransportConfig& config) {
  VerbsOptions options;
  for (const auto& [key, value] : config.params) {
    if (key == "verbs.sq_depth") {
      auto v = parseParam(key, value, 2, 1 << 16);
      if (!v.ok()) return v.status();
      options.sq_depth = *v;
    } else if (key == "verbs.recv_depth") {
      auto v = parseParam(key, value, 2, 1 << 16);
      if (!v.ok()) return v.status();
      options.recv_depth = *v;
    } else if (key == "verbs.slice_size") {
      auto v = parseParam(key, value, 4096, 1u << 30);
      if (!v.ok()) return v.status();
      options.slice_size = *v;
    } else if (key == "verbs.retry_count") {
      auto v = parseParam(key, value, 0, 7);
      if (!v.ok()) return v.status();
      options.retry_count = *v;
    } else if (key == "verbs.ack_timeout") {
      auto v = parseParam(key, value, 0, 31);
      if (!v.ok()) return v.status();
      options.ack_timeout = *v;
    } else {
      return Status(
          StatusCode::kInvalidArgument,
          "unknown verbs transport parameter '" + key +
              "' (known: verbs.sq_depth, verbs.recv_depth, verbs.slice_size, verbs.retry_count, "
              "verbs.ack_timeout)");
    }
  }
  return options;
}

}  // namespace zcx::transport::verbs

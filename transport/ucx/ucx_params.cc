#include "ucx/ucx_params.h"

namespace zcx::transport::ucx {
namespace {

constexpr std::string_view kPrefix = "ucx.";

bool isUcxVarName(std::string_view name) {
  if (name.empty()) return false;
  if (name.front() < 'A' || name.front() > 'Z') return false;
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

/// True unless the TLS list names transports and none of them is shared memory (then UCX warns
/// "invalid configuration: MM_ERROR_HANDLING=y").
bool mayUseSharedMemory(std::string_view tls) {
  if (tls.empty() || tls.front() == '^') return true;
  size_t start = 0;
  while (start <= tls.size()) {
    size_t end = tls.find(',', start);
    if (end == std::string_view::npos) end = tls.size();
    std::string_view t = tls.substr(start, end - start);
    if (t == "all" || t == "sm" || t == "shm" || t == "posix" || t == "sysv" || t == "mm" ||
        t == "xpmem" || t == "knem" || t == "cma") {
      return true;
    }
    start = end + 1;
  }
  return false;
}

}  // namespace

Result<UcxSettings> parseSettings(const TransportConfig& config) {
  UcxSettings settings;
  // Peer error handling over posix/sysv needs it (UCX default n: ep creation fails otherwise).
  // Inserted first so an explicit ucx.MM_ERROR_HANDLING overrides it.
  settings.vars.emplace_back("MM_ERROR_HANDLING", "y");
  bool have_devices = false;
  for (const auto& [key, value] : config.params) {
    std::string_view k(key);
    if (k == "ucx.tls") {
      settings.tls = value;
      settings.vars.emplace_back("TLS", value);
    } else if (k == "ucx.net_devices") {
      settings.net_devices = value;
      have_devices = true;
      settings.vars.emplace_back("NET_DEVICES", value);
    } else if (k.starts_with(kPrefix) && isUcxVarName(k.substr(kPrefix.size()))) {
      std::string var(k.substr(kPrefix.size()));
      if (var == "TLS") settings.tls = value;
      if (var == "NET_DEVICES") {
        settings.net_devices = value;
        have_devices = true;
      }
      settings.vars.emplace_back(std::move(var), value);
    } else {
      return Status(StatusCode::kInvalidArgument,
                    "unknown ucx transport parameter '" + key +
                        "' (known: ucx.tls, ucx.net_devices, ucx.<UCX_VARIABLE> such as "
                        "ucx.RNDV_THRESH)");
    }
  }
  if (!have_devices && !config.device.empty()) {
    settings.net_devices = config.device;
    settings.vars.emplace_back("NET_DEVICES", config.device);
  }
  if (!mayUseSharedMemory(settings.tls)) settings.vars.erase(settings.vars.begin());
  return settings;
}

}  // namespace zcx::transport::ucx

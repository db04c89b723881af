#include "ucx/ucx_params.h"

#include <cstdlib>

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

/// True unless the TLS list names transports and none of them is a UCX memory mapper (posix,
/// sysv, xpmem, or an alias of them): only their iface configuration has MM_ERROR_HANDLING (UCX
/// 1.13 src/uct/sm/mm/base/mm_iface.c), and a cached variable no opened iface takes makes
/// ucp_worker_create warn "invalid configuration: MM_ERROR_HANDLING=y" (cma and knem lack it).
bool mayUseMemoryMapper(std::string_view tls) {
  if (tls.empty() || tls.front() == '^') return true;
  size_t start = 0;
  while (start <= tls.size()) {
    size_t end = tls.find(',', start);
    if (end == std::string_view::npos) end = tls.size();
    std::string_view t = tls.substr(start, end - start);
    if (t.starts_with('\\')) t.remove_prefix(1);  // "\posix": the name without aliasing
    t = t.substr(0, t.find(':'));                 // "posix:aux"
    if (t == "all" || t == "mm" || t == "sm" || t == "shm" || t == "posix" || t == "sysv" ||
        t == "xpmem") {
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
  // Without ucx.tls, UCX takes the transports from the environment (ucp_config_read).
  const char* env_tls = settings.tls.empty() ? std::getenv("UCX_TLS") : nullptr;
  if (!mayUseMemoryMapper(env_tls != nullptr ? env_tls : settings.tls)) {
    settings.vars.erase(settings.vars.begin());
  }
  return settings;
}

}  // namespace zcx::transport::ucx

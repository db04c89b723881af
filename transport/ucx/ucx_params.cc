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

}  // namespace

Result<UcxSettings> parseSettings(const TransportConfig& config) {
  UcxSettings settings;
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
  return settings;
}

}  // namespace zcx::transport::ucx

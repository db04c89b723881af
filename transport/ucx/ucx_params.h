// Translation of TransportConfig into UCX configuration variables.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

struct UcxSettings {
  /// (UCX variable without the UCX_ prefix, value), applied in order with ucp_config_modify.
  std::vector<std::pair<std::string, std::string>> vars;
  std::string tls;          ///< for description(); "" = UCX default
  std::string net_devices;  ///< for description(); "" = UCX default
};

/// Accepts ucx.tls, ucx.net_devices and ucx.<UPPERCASE_UCX_VAR>; anything else is
/// kInvalidArgument naming the key. Adds MM_ERROR_HANDLING=y (needed for peer error handling
/// over posix/sysv/xpmem) unless the TLS (ucx.tls, else $UCX_TLS) exclude those. A non-empty
/// config.device is used as NET_DEVICES unless ucx.net_devices is given.
Result<UcxSettings> parseSettings(const TransportConfig& config);

}  // namespace zcx::transport::ucx

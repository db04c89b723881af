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
  /// Remote writes and reads as active messages that the target checks against what it
  /// registered (ucx_access_table.h), instead of UCX RMA, which over tcp writes wherever a peer
  /// asks. On unless every transport in the TLS list is shared memory (peers on this host that
  /// can reach our memory through the kernel anyway); ucx.rma=checked|native overrides.
  bool checked_rma = true;
};

/// Accepts ucx.tls, ucx.net_devices, ucx.rma (checked|native|auto) and ucx.<UPPERCASE_UCX_VAR>; anything else is
/// kInvalidArgument naming the key. Adds MM_ERROR_HANDLING=y (needed for peer error handling
/// over posix/sysv/xpmem) unless the TLS (ucx.tls, else $UCX_TLS) exclude those. A non-empty
/// config.device is used as NET_DEVICES unless ucx.net_devices is given.
Result<UcxSettings> parseSettings(const TransportConfig& config);

}  // namespace zcx::transport::ucx

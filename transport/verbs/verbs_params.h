// Translation of TransportConfig::params into the verbs transport's options (mirrors
// ucx/ucx_params.h).
#pragma once

#include <cstdint>

#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

/// Tunables ("verbs.sq_depth", "verbs.recv_depth" params).
struct VerbsOptions {
  uint32_t sq_depth = 128;
  uint32_t recv_depth = 0;  ///< 0 = derived from max_message_size
};

/// Accepts verbs.sq_depth and verbs.recv_depth (decimal numbers in [2, 65536]); anything else is
/// kInvalidArgument naming the key. The device, port and GID index are TransportConfig fields,
/// not params (chooseDevice, verbs_device.h).
Result<VerbsOptions> parseOptions(const TransportConfig& config);

}  // namespace zcx::transport::verbs

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
  /// Multi-rail: one-sided operations longer than this are striped over the rails in slices
  /// of this size (verbs_rails.h); shorter ones stay on their connection's rail.
  uint32_t slice_size = 64 * 1024;
};

/// Accepts verbs.sq_depth and verbs.recv_depth (decimal numbers in [2, 65536]) and
/// verbs.slice_size (bytes, [4096, 1 GiB]); anything else is
/// kInvalidArgument naming the key. The device, port and GID index are TransportConfig fields,
/// not params (chooseDevice, verbs_device.h).
Result<VerbsOptions> parseOptions(const TransportConfig& config);

}  // namespace zcx::transport::verbs

// The UCX transport's entry point (registered as "ucx" by transport/builtin.cc).
//
// config.params: ucx.tls (UCX_TLS), ucx.net_devices (UCX_NET_DEVICES) and ucx.<UCX_VARIABLE>
// for any other UCX variable (ucx.RNDV_THRESH = "64k"); other keys are kInvalidArgument.
#pragma once

#include <memory>

#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

Result<std::unique_ptr<Transport>> create(const TransportConfig& config);

}  // namespace zcx::transport::ucx

// The verbs (libibverbs + librdmacm) transport: one create() for the registry.
#pragma once

#include <memory>

#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

/// A verbs transport on config.device/port/gid_index (or the best usable GID: chooseDevice), or
/// kUnavailable explaining why this machine has none ("no RDMA device found: ...").
Result<std::unique_ptr<Transport>> create(const TransportConfig& config);

}  // namespace zcx::transport::verbs

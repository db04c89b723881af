// Error text and status codes for failed verbs / rdma_cm calls (mirrors ucx/ucx_status.h).
#pragma once

#include <string>
#include <string_view>

#include "zcx/status.h"

namespace zcx::transport::verbs {

/// "errno 12: Cannot allocate memory".
std::string errnoText(int err);

/// The zcx code for an errno from a verbs or rdma_cm call (ENOMEM -> kResourceExhausted, ...).
StatusCode statusCodeFromErrno(int err);

/// A Status naming the failed call: "ibv_reg_mr: errno 12: Cannot allocate memory".
Status statusFromErrno(int err, std::string_view call);

}  // namespace zcx::transport::verbs

// Translation of UCX status codes into zcx Status values.
#pragma once

#include <ucs/type/status.h>

#include <string_view>

#include "zcx/status.h"

namespace zcx::transport::ucx {

/// The zcx code for a UCX status (UCS_OK -> kOk).
StatusCode statusCodeFromUcs(ucs_status_t status);

/// A Status naming the failed call: "ucp_put_nbx: Connection reset by remote peer". Ok for UCS_OK.
Status statusFromUcs(ucs_status_t status, std::string_view call);

}  // namespace zcx::transport::ucx

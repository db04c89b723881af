#include "ucx/ucx_status.h"

#include <string>

namespace zcx::transport::ucx {

StatusCode statusCodeFromUcs(ucs_status_t status) {
  switch (status) {
    case UCS_OK:
    case UCS_INPROGRESS: return StatusCode::kOk;
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_SOME_CONNECTS_FAILED: return StatusCode::kConnectionBroken;
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED: return StatusCode::kConnectionRefused;
    case UCS_ERR_CANCELED: return StatusCode::kCancelled;
    case UCS_ERR_TIMED_OUT: return StatusCode::kTimedOut;
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
    case UCS_ERR_BUSY: return StatusCode::kResourceExhausted;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR: return StatusCode::kInvalidArgument;
    case UCS_ERR_OUT_OF_RANGE:
    case UCS_ERR_MESSAGE_TRUNCATED: return StatusCode::kOutOfRange;
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NO_ELEM: return StatusCode::kUnavailable;
    case UCS_ERR_NOT_IMPLEMENTED:
    case UCS_ERR_NO_PROGRESS: return StatusCode::kInternal;
    case UCS_ERR_NO_MESSAGE:
    case UCS_ERR_ALREADY_EXISTS: return StatusCode::kProtocolError;
    default: return StatusCode::kInternal;
  }
}

Status statusFromUcs(ucs_status_t status, std::string_view call) {
  StatusCode code = statusCodeFromUcs(status);
  if (code == StatusCode::kOk) return Status::Ok();
  std::string message(call);
  message += ": ";
  message += ucs_status_string(status);
  return Status(code, std::move(message));
}

}  // namespace zcx::transport::ucx

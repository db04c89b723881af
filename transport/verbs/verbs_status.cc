#include "verbs/verbs_status.h"

#include <cerrno>
#include <cstring>

namespace zcx::transport::verbs {

std::string errnoText(int err) {
  return "errno " + std::to_string(err) + ": " + std::strerror(err);
}

StatusCode statusCodeFromErrno(int err) {
  switch (err) {
    case ENOMEM:
    case ENOSPC:
    case EAGAIN: return StatusCode::kResourceExhausted;
    case EPERM:
    case EACCES: return StatusCode::kPermissionDenied;
    case EINVAL: return StatusCode::kInvalidArgument;
    case ENODEV:
    case ENOSYS:
    case EOPNOTSUPP: return StatusCode::kUnavailable;
    case ECONNREFUSED: return StatusCode::kConnectionRefused;
    case ECONNRESET:
    case ENETUNREACH:
    case EHOSTUNREACH:
    case ETIMEDOUT: return StatusCode::kConnectionBroken;
    default: return StatusCode::kInternal;
  }
}

Status statusFromErrno(int err, std::string_view call) {
  return Status(statusCodeFromErrno(err), std::string(call) + ": " + errnoText(err));
}

}  // namespace zcx::transport::verbs

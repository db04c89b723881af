#include "zcx/status.h"

namespace zcx {

std::string_view statusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "Ok";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kOutOfRange: return "OutOfRange";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kUnavailable: return "Unavailable";
    case StatusCode::kTimedOut: return "TimedOut";
    case StatusCode::kCancelled: return "Cancelled";
    case StatusCode::kConnectionRefused: return "ConnectionRefused";
    case StatusCode::kConnectionBroken: return "ConnectionBroken";
    case StatusCode::kVersionMismatch: return "VersionMismatch";
    case StatusCode::kPermissionDenied: return "PermissionDenied";
    case StatusCode::kResourceExhausted: return "ResourceExhausted";
    case StatusCode::kRemoteAccessError: return "RemoteAccessError";
    case StatusCode::kProtocolError: return "ProtocolError";
    case StatusCode::kInternal: return "Internal";
    case StatusCode::kStillInFlight: return "StillInFlight";
  }
  return "Unknown";
}

std::string Status::toString() const {
  if (ok()) return "Ok";
  std::string s(statusCodeName(code_));
  s += ": ";
  s += message_;
  return s;
}

Status Status::withContext(std::string_view context) const {
  if (ok()) return *this;
  std::string m(context);
  m += ": ";
  m += message_;
  return Status(code_, std::move(m));
}

}  // namespace zcx

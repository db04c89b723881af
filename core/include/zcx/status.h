// Errors are values: every fallible zcx call returns a Status or a Result<T>.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "zcx/export.h"

namespace zcx {

/// Canonical error codes. Each message says what happened and what to do.
enum class StatusCode : uint8_t {
  kOk = 0,
  kInvalidArgument,    ///< a bad value from the caller (size, offset, option)
  kOutOfRange,         ///< a local or remote range outside its region, or a message too big
  kNotFound,           ///< unknown region name, unknown transport
  kUnavailable,        ///< a transport or device that is not usable on this machine
  kTimedOut,           ///< a deadline passed
  kCancelled,          ///< the operation was cancelled because its connection closed
  kConnectionRefused,  ///< nobody listens at the address, or the peer rejected us
  kConnectionBroken,   ///< the peer died or the link failed
  kVersionMismatch,    ///< the peer speaks another protocol version or transport
  kPermissionDenied,   ///< the region's access flags forbid the operation
  kResourceExhausted,  ///< out of memory, locked-memory limit, queue full
  kRemoteAccessError,  ///< the peer rejected the access (revoked or wrong key)
  kProtocolError,      ///< malformed bytes from the peer or in a descriptor
  kInternal,           ///< a bug or an unexpected library failure
  /// Request::wait() ran out of time while the operation is still in flight: it has NOT
  /// completed, its buffers are still in use; wait again (it completes by its own deadline).
  kStillInFlight,
};

ZCX_EXPORT std::string_view statusCodeName(StatusCode code);

class [[nodiscard]] ZCX_EXPORT Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  /// "TimedOut: write did not complete within 5000 ms; ..." or "Ok".
  std::string toString() const;

  /// Prefixes the message with context, keeping the code.
  Status withContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline bool operator==(const Status& a, StatusCode c) { return a.code() == c; }

/// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).ok())
      v_ = Status(StatusCode::kInternal, "Result built from an Ok status without a value");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }
  /// The error; Ok if there is a value.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace zcx

/// Returns from the enclosing function if `expr` (a Status) is not ok.
#define ZCX_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::zcx::Status zcx_status_ = (expr);        \
    if (!zcx_status_.ok()) return zcx_status_; \
  } while (0)

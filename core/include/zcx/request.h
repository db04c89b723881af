// The one completion contract: every operation returns a Request that completes exactly once
// (Ok, an error, TimedOut at its deadline, or Cancelled when its connection closes).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <span>

#include "zcx/status.h"

namespace zcx {

namespace detail {
class RequestState;
}

class ZCX_EXPORT Request {
 public:
  Request() = default;
  explicit Request(std::shared_ptr<detail::RequestState> state) : state_(std::move(state)) {}

  /// Blocks until the operation completes or `timeout` passes. If the wait ran out first it
  /// returns kStillInFlight: the operation has not completed and its buffers are still in use
  /// (wait again; it completes at the latest at its own deadline, operation_timeout, then with
  /// kTimedOut). A buffer may be reused once wait() returned anything but kStillInFlight.
  /// In manual progress mode it drives progress itself.
  Status wait(std::chrono::milliseconds timeout = std::chrono::milliseconds(60000));
  /// The final status if complete, nothing if still in flight. Never blocks; in manual progress
  /// mode it makes one round of progress.
  std::optional<Status> test();
  bool done() const;
  /// Bytes received (recv) or moved (other operations); valid once complete.
  size_t bytes() const;
  /// Runs `callback` once with the final status, always on a progress thread (the engine's, or
  /// the caller of Engine::progress() / Request::wait() / test() in manual mode), outside any zcx
  /// lock; also when the request is already complete (then soon after this call). Never inside
  /// onComplete(), write(), send(), recv() or close(), so a callback may take a lock the caller
  /// holds around them. (On an empty Request it runs at once with kInvalidArgument.)
  void onComplete(std::function<void(const Status&)> callback);

  bool valid() const { return state_ != nullptr; }

 private:
  std::shared_ptr<detail::RequestState> state_;
};

/// Waits for all requests, each within what is left of `timeout`; returns the first error.
ZCX_EXPORT Status waitAll(std::span<Request> requests,
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(60000));

}  // namespace zcx

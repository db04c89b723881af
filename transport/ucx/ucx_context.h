// RAII owners of the UCX library handles: config, context, worker.
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <string>
#include <vector>

#include "ucx/ucx_params.h"
#include "zcx/status.h"

namespace zcx::transport::ucx {

struct UcpConfigDeleter {
  void operator()(ucp_config_t* config) const noexcept;
};
struct UcpContextDeleter {
  void operator()(ucp_context_h context) const noexcept;
};
struct UcpWorkerDeleter {
  void operator()(ucp_worker_h worker) const noexcept;
};

using UcpConfigPtr = std::unique_ptr<ucp_config_t, UcpConfigDeleter>;
using UcpContextPtr = std::unique_ptr<ucp_context, UcpContextDeleter>;
using UcpWorkerPtr = std::unique_ptr<ucp_worker, UcpWorkerDeleter>;

/// One ucp_context with one worker (features RMA | AM | WAKEUP, thread mode SERIALIZED).
/// The worker is destroyed before the context.
class UcxContext {
 public:
  static Result<std::unique_ptr<UcxContext>> create(const UcxSettings& settings);

  ucp_context_h context() const { return context_.get(); }
  ucp_worker_h worker() const { return worker_.get(); }
  /// The worker address bytes (ucp_worker_get_address), copied once.
  const std::vector<uint8_t>& address() const { return address_; }
  int eventFd() const { return event_fd_; }
  /// Remote writes/reads go as target-checked active messages (UcxSettings::checked_rma).
  bool checkedRma() const { return checked_rma_; }

 private:
  UcxContext() = default;

  UcpContextPtr context_;  // declared first: destroyed last
  UcpWorkerPtr worker_;
  std::vector<uint8_t> address_;
  int event_fd_ = -1;
  bool checked_rma_ = true;
};

}  // namespace zcx::transport::ucx

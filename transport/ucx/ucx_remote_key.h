// A peer's key unpacked on one endpoint: the owner of a ucp_rkey_h.
//
// The endpoint tracks its keys: when it closes it destroys their ucp_rkey_h (after the ep is
// closed) and detaches them, so a RemoteKey destroyed after its endpoint is harmless.
#pragma once

#include <ucp/api/ucp.h>

#include "ucx/ucx_key_format.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

class UcxEndpoint;

class UcxRemoteKey final : public RemoteKey {
 public:
  UcxRemoteKey(UcxEndpoint* owner, ucp_rkey_h rkey) : owner_(owner), rkey_(rkey) {}
  /// Checked RMA: the target's access-table key instead of a UCX rkey.
  UcxRemoteKey(UcxEndpoint* owner, CheckedKey checked)
      : owner_(owner), rkey_(nullptr), checked_(checked), has_checked_(true) {}
  ~UcxRemoteKey() override;
  UcxRemoteKey(const UcxRemoteKey&) = delete;
  UcxRemoteKey& operator=(const UcxRemoteKey&) = delete;

  ucp_rkey_h rkey() const { return rkey_; }
  const UcxEndpoint* owner() const { return owner_; }
  const CheckedKey& checked() const { return checked_; }
  /// Still attached to a live endpoint with a key to use.
  bool usable() const { return owner_ != nullptr && (rkey_ != nullptr || has_checked_); }
  /// Called by the closing endpoint: destroys the ucp_rkey_h and forgets the endpoint.
  void release() noexcept;

 private:
  UcxEndpoint* owner_;
  ucp_rkey_h rkey_;
  CheckedKey checked_{};
  bool has_checked_ = false;
};

}  // namespace zcx::transport::ucx

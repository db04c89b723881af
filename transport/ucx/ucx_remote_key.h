// A peer's key unpacked on one endpoint: the owner of a ucp_rkey_h.
//
// The endpoint tracks its keys: when it closes it destroys their ucp_rkey_h (after the ep is
// closed) and detaches them, so a RemoteKey destroyed after its endpoint is harmless.
#pragma once

#include <ucp/api/ucp.h>

#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

class UcxEndpoint;

class UcxRemoteKey final : public RemoteKey {
 public:
  UcxRemoteKey(UcxEndpoint* owner, ucp_rkey_h rkey) : owner_(owner), rkey_(rkey) {}
  ~UcxRemoteKey() override;
  UcxRemoteKey(const UcxRemoteKey&) = delete;
  UcxRemoteKey& operator=(const UcxRemoteKey&) = delete;

  ucp_rkey_h rkey() const { return rkey_; }
  const UcxEndpoint* owner() const { return owner_; }
  /// Called by the closing endpoint: destroys the ucp_rkey_h and forgets the endpoint.
  void release() noexcept;

 private:
  UcxEndpoint* owner_;
  ucp_rkey_h rkey_;
};

}  // namespace zcx::transport::ucx

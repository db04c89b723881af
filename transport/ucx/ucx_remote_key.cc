#include "ucx/ucx_remote_key.h"

#include "ucx/ucx_endpoint.h"

namespace zcx::transport::ucx {

UcxRemoteKey::~UcxRemoteKey() {
  if (owner_ != nullptr) owner_->forgetKey(this);
  release();
}

void UcxRemoteKey::release() noexcept {
  if (rkey_ != nullptr) ucp_rkey_destroy(rkey_);
  rkey_ = nullptr;
  owner_ = nullptr;
  has_checked_ = false;
}

}  // namespace zcx::transport::ucx

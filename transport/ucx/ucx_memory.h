// A local memory registration: the owner of a ucp_mem_h (ucp_mem_map / ucp_mem_unmap) and of
// its packed remote key bytes (packed once at registration).
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <vector>

#include "ucx/ucx_access_table.h"
#include "ucx/ucx_worker.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

struct UcpMemDeleter {
  ucp_context_h context = nullptr;
  void operator()(ucp_mem_h memh) const noexcept;
};
using UcpMemPtr = std::unique_ptr<ucp_mem, UcpMemDeleter>;

class UcxMemory final : public MemoryHandle {
 public:
  /// Maps [address, address+length) (allocate=false) or lets UCX allocate `length` bytes
  /// (allocate=true, address ignored). Packs a remote key unless access is local only.
  static Result<std::unique_ptr<UcxMemory>> map(std::shared_ptr<UcxWorker> worker, void* address,
                                                size_t length, uint32_t access, bool allocate);

  void* address() const override { return address_; }
  size_t length() const override { return length_; }
  std::vector<uint8_t> packedKey() const override { return packed_; }
  void revokeRemoteAccess() override;
  uint32_t remoteAccessesInFlight() const override;
  Result<std::unique_ptr<RemoteGrant>> grant(uint32_t access,
                                             std::optional<ConnectionScope> only) override;
  ~UcxMemory() override;

  ucp_mem_h memh() const { return memh_.get(); }

 private:
  UcxMemory() = default;

  std::shared_ptr<UcxWorker> worker_;  // keeps the context alive until the unmap
  UcpMemPtr memh_;
  void* address_ = nullptr;
  size_t length_ = 0;
  uint32_t access_ = 0;
  std::vector<uint8_t> packed_;
  /// Checked RMA: this memory's entry in the worker's access table (0 = none).
  uint64_t grant_id_ = 0;
  std::shared_ptr<AccessEntry> grant_;
};

/// Hands UCX the registration of `local` (if any) for a request on its memory.
inline void setMemh(ucp_request_param_t* p, MemoryHandle* local) {
  if (local == nullptr) return;
  p->op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
  p->memh = static_cast<UcxMemory*>(local)->memh();
}

/// Checked RMA: an entry of its own in the access table, revoked on destruction. Native RMA:
/// the registration's own rkey (nothing below us could enforce less), not enforced.
class UcxGrant final : public RemoteGrant {
 public:
  UcxGrant(std::shared_ptr<UcxWorker> worker, uint64_t id, std::vector<uint8_t> packed)
      : worker_(std::move(worker)), id_(id), packed_(std::move(packed)) {}
  ~UcxGrant() override;
  std::vector<uint8_t> packedKey() const override { return packed_; }

 private:
  std::shared_ptr<UcxWorker> worker_;
  uint64_t id_;  ///< 0: native RMA
  std::vector<uint8_t> packed_;
};

}  // namespace zcx::transport::ucx

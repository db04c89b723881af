#include "ucx/ucx_memory.h"

#include <glog/logging.h>

#include <string>

#include "ucx/ucx_key_format.h"
#include "ucx/ucx_status.h"

namespace zcx::transport::ucx {

void UcpMemDeleter::operator()(ucp_mem_h memh) const noexcept {
  if (memh == nullptr) return;
  ucs_status_t st = ucp_mem_unmap(context, memh);
  if (st != UCS_OK) LOG(ERROR) << "ucp_mem_unmap: " << ucs_status_string(st);
}

UcxMemory::~UcxMemory() { revokeRemoteAccess(); }  // before memh_ unmaps the memory

void UcxMemory::revokeRemoteAccess() {
  if (grant_id_ != 0) worker_->access().revoke(grant_id_);
}

uint32_t UcxMemory::remoteAccessesInFlight() const {
  return grant_ ? grant_->inflight.load(std::memory_order_acquire) : 0;
}

UcxGrant::~UcxGrant() {
  if (id_ != 0) worker_->access().revoke(id_);
}

Result<std::unique_ptr<RemoteGrant>> UcxMemory::grant(uint32_t access,
                                                      std::optional<ConnectionScope> only) {
  ZCX_RETURN_IF_ERROR(checkGrantAccess("ucx", access, access_));
  if (!grant_) return std::unique_ptr<RemoteGrant>(new UcxGrant(worker_, 0, packed_));
  const bool scoped = only.has_value();
  const uint64_t token = scoped ? only->token : 0;
  const uint8_t role = scoped && only->role == Role::kPassive ? 1 : 0;  // UcxEndpoint's key
  auto g = worker_->access().addGrant(grant_, access, scoped, token, role);
  return std::unique_ptr<RemoteGrant>(
      new UcxGrant(worker_, g.id, frameCheckedKey(CheckedKey{g.id, g.cookie})));
}

Result<std::unique_ptr<UcxMemory>> UcxMemory::map(std::shared_ptr<UcxWorker> worker, void* address,
                                                  size_t length, uint32_t access, bool allocate) {
  if (length == 0) {
    return Status(StatusCode::kInvalidArgument, "ucx: cannot register zero bytes");
  }
  if (!allocate && address == nullptr) {
    return Status(StatusCode::kInvalidArgument, "ucx: cannot register a null address");
  }
  if ((access & ~uint32_t{kAccessRemoteRead | kAccessRemoteWrite}) != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "ucx: unknown access bits " + std::to_string(access));
  }
  ucp_mem_map_params_t p{};
  p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                 UCP_MEM_MAP_PARAM_FIELD_FLAGS | UCP_MEM_MAP_PARAM_FIELD_PROT;
  // Exactly the rights asked for (UCX's default is remote read|write). Transports that honour
  // them refuse the rest; over shared memory the kernel lets same-user processes reach each
  // other's memory anyway (see docs/SECURITY.md).
  p.prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE;
  if ((access & kAccessRemoteRead) != 0) p.prot |= UCP_MEM_MAP_PROT_REMOTE_READ;
  if ((access & kAccessRemoteWrite) != 0) p.prot |= UCP_MEM_MAP_PROT_REMOTE_WRITE;
  p.address = allocate ? nullptr : address;
  p.length = length;
  p.flags = allocate ? UCP_MEM_MAP_ALLOCATE : 0;
  ucp_mem_h raw = nullptr;
  ucs_status_t st = ucp_mem_map(worker->context(), &p, &raw);
  if (st != UCS_OK) {
    return statusFromUcs(st, "ucp_mem_map")
        .withContext("ucx: registering " + std::to_string(length) + " bytes");
  }
  std::unique_ptr<UcxMemory> self(new UcxMemory());
  self->memh_ = UcpMemPtr(raw, UcpMemDeleter{worker->context()});
  self->worker_ = std::move(worker);
  self->length_ = length;
  self->address_ = address;
  self->access_ = access;
  if (allocate) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    st = ucp_mem_query(raw, &attr);
    if (st != UCS_OK) return statusFromUcs(st, "ucp_mem_query");
    if (attr.length < length) {
      return Status(StatusCode::kInternal, "ucp_mem_map allocated fewer bytes than asked");
    }
    self->address_ = attr.address;
  }
  if (access != kAccessLocal && self->worker_->ucx().checkedRma()) {
    // Peers get a key to our access table, which every one of their accesses is checked
    // against, not a UCX rkey.
    auto grant =
        self->worker_->access().add(static_cast<uint8_t*>(self->address_), length, access, raw);
    self->grant_id_ = grant.id;
    self->grant_ = std::move(grant.entry);
    self->packed_ = frameCheckedKey(CheckedKey{grant.id, grant.cookie});
  } else if (access != kAccessLocal) {
    void* buffer = nullptr;
    size_t size = 0;
    st = ucp_rkey_pack(self->worker_->context(), raw, &buffer, &size);
    if (st != UCS_OK) return statusFromUcs(st, "ucp_rkey_pack");
    self->packed_ = frameKey({static_cast<const uint8_t*>(buffer), size});
    ucp_rkey_buffer_release(buffer);
  }
  return self;
}

}  // namespace zcx::transport::ucx

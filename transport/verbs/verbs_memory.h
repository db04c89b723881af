// Memory registration (MemoryHandle), packed keys and their import (RemoteKey).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "verbs/verbs_resources.h"
#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

/// Maps zcx AccessBits to ibv access flags (LOCAL_WRITE always: recv and READ targets need it).
int ibvAccessFlags(uint32_t access);

class VerbsMemory final : public MemoryHandle {
 public:
  /// Registers [address, address+length) on `pd` for local use (plus MW_BIND when the device
  /// has type-2 windows: `memory_windows`). Remote rights (`access`) live only in the keys handed
  /// out: packedKey()'s registration (made on first use) and grants, so no rkey reaches this
  /// memory before one was. Errors name the cause (max_mr_size, RLIMIT_MEMLOCK, ...).
  static Result<std::unique_ptr<VerbsMemory>> create(ibv_pd* pd, void* address, size_t length,
                                                     uint32_t access, uint64_t max_mr_size,
                                                     bool memory_windows = false);
  /// Allocates page-aligned memory (huge-page aligned above 2 MiB) and registers it.
  static Result<std::unique_ptr<VerbsMemory>> allocate(ibv_pd* pd, size_t length, uint32_t access,
                                                       uint64_t max_mr_size,
                                                       bool memory_windows = false);
  ~VerbsMemory() override;

  void* address() const override { return address_; }
  size_t length() const override { return length_; }
  /// The registration's own remote key (MemoryRegion::descriptor()): a registration with the
  /// remote rights, made on the first call and kept for the region's life.
  std::vector<uint8_t> packedKey() const override;
  /// Unscoped: a registration of its own (the NIC enforces its range and rights; deregistering
  /// revokes it). Connection-scoped, on a device with type-2 memory windows: a window over a
  /// registration without remote rights, which the connection's endpoint binds to its QP
  /// (needsBind; only that QP can use the rkey). Without windows: a registration whose rkey only
  /// that peer is told (not enforced against others: docs/SECURITY.md).
  Result<std::unique_ptr<RemoteGrant>> grant(uint32_t access,
                                             std::optional<ConnectionScope> only) override;

  uint32_t lkey() const { return mr_->lkey; }

 private:
  VerbsMemory(void* address, size_t length, uint32_t access, MrPtr mr, void* owned,
              bool memory_windows)
      : address_(address),
        length_(length),
        access_(access),
        mr_(std::move(mr)),
        owned_(owned),
        memory_windows_(memory_windows) {}

  void* address_;
  size_t length_;
  uint32_t access_;
  MrPtr mr_;                     ///< local use (and windows' binds): no remote rights
  void* owned_;                  ///< allocation freed after deregistration (allocate() only)
  bool memory_windows_ = false;  ///< mr_ has MW_BIND: connection-scoped grants are windows
  mutable std::mutex key_mu_;
  mutable MrPtr key_mr_;  ///< packedKey()'s registration, with the remote rights
};

/// A type-2 memory window, shared by its grant and the endpoint it is bound through: whichever
/// lets go first deallocates it (a QP must not be destroyed with windows still bound to it).
class MemoryWindow {
 public:
  explicit MemoryWindow(MwPtr mw) : mw_(std::move(mw)) {}
  ibv_mw* get() const {
    std::lock_guard<std::mutex> lock(mu_);
    return mw_.get();
  }
  /// Deallocates it (unbinding it from its QP); its rkey opens nothing from then on.
  void invalidate() {
    MwPtr dead;
    std::lock_guard<std::mutex> lock(mu_);
    dead = std::move(mw_);
  }

 private:
  mutable std::mutex mu_;
  MwPtr mw_;
};

/// What Engine::expose hands out on verbs (VerbsMemory::grant).
class VerbsGrant final : public RemoteGrant {
 public:
  VerbsGrant(std::shared_ptr<ibv_mr> mr, MwPtr mw, uint32_t rkey, uint64_t addr, uint64_t length,
             uint32_t access);
  ~VerbsGrant() override;
  std::vector<uint8_t> packedKey() const override;
  bool needsBind() const override { return window_ != nullptr; }

  // For VerbsEndpoint::bindGrant.
  const std::shared_ptr<MemoryWindow>& window() const { return window_; }
  ibv_mr* mr() const { return mr_.get(); }
  uint32_t rkey() const { return rkey_; }
  uint64_t addr() const { return addr_; }
  uint64_t length() const { return length_; }
  uint32_t access() const { return access_; }

 private:
  std::shared_ptr<ibv_mr> mr_;
  std::shared_ptr<MemoryWindow> window_;  ///< invalidated by the destructor, before mr_ goes
  uint32_t rkey_;
  uint64_t addr_;
  uint64_t length_;
  uint32_t access_;
};

/// A peer's region as seen through a packed key: {rkey, addr, length}.
class VerbsRemoteKey final : public RemoteKey {
 public:
  VerbsRemoteKey(uint32_t rkey, uint64_t addr, uint64_t length)
      : rkey_(rkey), addr_(addr), length_(length) {}
  uint32_t rkey() const { return rkey_; }
  uint64_t addr() const { return addr_; }
  uint64_t length() const { return length_; }

 private:
  uint32_t rkey_;
  uint64_t addr_;
  uint64_t length_;
};

/// decodeKey() (verbs_wire.h) as a RemoteKey: kProtocolError if the bytes are not a packed key.
Result<std::unique_ptr<VerbsRemoteKey>> unpackKey(std::span<const uint8_t> bytes);

}  // namespace zcx::transport::verbs

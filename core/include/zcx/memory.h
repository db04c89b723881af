// Registered memory and the descriptor a peer needs to reach it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "zcx/status.h"

namespace zcx {

/// What peers may do with a region. Local use (send source, receive or read target) is always
/// allowed.
enum Access : uint32_t {
  kLocalOnly = 0,
  kRemoteRead = 1,
  kRemoteWrite = 2,
  kRemoteReadWrite = kRemoteRead | kRemoteWrite,
};

/// A portable description of a region: what a peer needs to read or write it. Encoded as
/// compact, versioned, checksummed bytes that can travel through any channel.
struct ZCX_EXPORT RegionDescriptor {
  std::string transport;  ///< transport that registered it ("ucx", "verbs")
  uint64_t address = 0;   ///< virtual address in the owner's process
  uint64_t length = 0;
  uint32_t access = kLocalOnly;
  std::vector<uint8_t> key;  ///< transport's packed remote key

  std::vector<uint8_t> encode() const;
  /// Validates magic, version, lengths and checksum: corrupt bytes give kProtocolError.
  static Result<RegionDescriptor> decode(std::span<const uint8_t> bytes);
};

/// How Engine::expose publishes a region. The memory's owner enforces both on every access
/// (verbs: the NIC; UCX tcp: our target-side check), except over UCX native RMA (shared memory),
/// where only lookups are restricted (docs/SECURITY.md).
struct ExposeOptions {
  /// What peers may do through this exposure: a non-empty subset of the region's access (e.g.
  /// kRemoteRead of a read-write registration). Default: the region's access.
  std::optional<uint32_t> access;
  /// Names of the peers (their EngineOptions::name, as their handshake carried it) that may look
  /// the region up and reach it; empty: every peer. Any other peer gets kNotFound, and a key it
  /// got elsewhere is refused. A name is what the peer declares: with auth_secret only holders
  /// of the secret can connect at all, so a list separates peers that hold it.
  std::vector<std::string> peers;
};

namespace detail {
struct RegionState;
}

/// A registered memory region; deregisters (and frees, if the engine allocated it) on destruction.
/// Move-only. May outlive its Engine object (it keeps the transport alive).
///
/// Destroying the last MemoryRegion of a registration while operations use it cancels them
/// first: receives posted into it complete with kCancelled, and a connection with a one-sided
/// operation or send in flight on it is closed (kCancelled; a posted RDMA operation cannot be
/// recalled). The destructor returns once the transport no longer touches the memory, so user
/// memory may be freed right after it (bounded by connect_timeout; past that it logs an error and
/// the registration stays until the transport lets go).
class ZCX_EXPORT MemoryRegion {
 public:
  MemoryRegion() = default;
  explicit MemoryRegion(std::shared_ptr<detail::RegionState> state);
  MemoryRegion(MemoryRegion&& other) noexcept : state_(std::move(other.state_)) {}
  MemoryRegion& operator=(MemoryRegion&& other) noexcept;
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;
  ~MemoryRegion();

  bool valid() const { return state_ != nullptr; }
  uint8_t* data() const;
  size_t size() const;
  uint32_t access() const;
  /// The descriptor to give a peer (see Engine::expose() for the by-name route).
  RegionDescriptor descriptor() const;

  const std::shared_ptr<detail::RegionState>& state() const { return state_; }

 private:
  std::shared_ptr<detail::RegionState> state_;
};

}  // namespace zcx

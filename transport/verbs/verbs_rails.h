// Multi-rail verbs: one Transport over several RDMA devices/ports ("rails"), each a complete
// single-rail VerbsTransport. Memory is registered on every rail; a connection is one QP per
// rail ("lane"), lane k joining our rail k to the peer's rail k (rails pair by index: rail k of
// every node sits on the same fabric). Large one-sided operations are cut into slices striped
// over the lanes and complete once, when every slice did; a lane that fails has its slices
// retried on the others (writes and reads are idempotent). Two-sided messages and
// notifications travel on lane 0, whose loss breaks the connection (a message is not
// idempotent). See docs/multi-rail.md.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "verbs/verbs_memory.h"
#include "verbs/verbs_resources.h"
#include "verbs/verbs_transport.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

class RailsEndpoint;

/// The devices a TransportConfig::device names: "rxe0" (one), "rxe0,rxe1" (these, in this
/// order) or "all" (every RDMA device, sorted by name; the factory keeps those that open, at
/// most kMaxRails). kInvalidArgument for an empty entry, a duplicate or more than kMaxRails.
Result<std::vector<std::string>> parseDeviceList(const std::string& spec);

/// A registration on every rail (rail 0's for local use by lane-0 sends as well).
class RailsMemory final : public MemoryHandle {
 public:
  explicit RailsMemory(std::vector<std::unique_ptr<VerbsMemory>> rails)
      : rails_(std::move(rails)) {}
  ~RailsMemory() override;
  void* address() const override { return rails_[0]->address(); }
  size_t length() const override { return rails_[0]->length(); }
  /// Every rail's key in one blob (verbs_rails_wire.h); empty for local-only memory.
  std::vector<uint8_t> packedKey() const override;
  void revokeRemoteAccess() override;
  uint32_t remoteAccessesInFlight() const override;
  Result<std::unique_ptr<RemoteGrant>> grant(uint32_t access,
                                             std::optional<ConnectionScope> only) override;
  VerbsMemory* rail(size_t k) const { return rails_[k].get(); }

 private:
  std::vector<std::unique_ptr<VerbsMemory>> rails_;  ///< rail 0 owns allocateMemory()'s memory
};

/// A grant on every rail; lane k binds rail k's (needsBind: memory windows).
class RailsGrant final : public RemoteGrant {
 public:
  explicit RailsGrant(std::vector<std::unique_ptr<RemoteGrant>> rails) : rails_(std::move(rails)) {}
  std::vector<uint8_t> packedKey() const override;
  bool needsBind() const override;
  RemoteGrant* rail(size_t k) const { return rails_[k].get(); }

 private:
  std::vector<std::unique_ptr<RemoteGrant>> rails_;
};

class RailsTransport final : public Transport {
 public:
  /// Drives `rails` (2 to kMaxRails, in the order peers pair them) as one transport.
  static Result<std::unique_ptr<RailsTransport>> create(
      std::vector<std::unique_ptr<VerbsTransport>> rails);
  ~RailsTransport() override;

  std::string_view name() const override { return "verbs"; }
  Capabilities capabilities() const override;
  std::string description() const override;
  Result<std::unique_ptr<MemoryHandle>> registerMemory(void* address, size_t length,
                                                       uint32_t access) override;
  Result<std::unique_ptr<MemoryHandle>> allocateMemory(size_t length, uint32_t access) override;
  /// Every rail's address in one blob; a single-rail peer uses rail 0's (firstRail).
  std::vector<uint8_t> localAddress() const override;
  Result<std::unique_ptr<Endpoint>> createEndpoint(const EndpointSetup& setup) override;
  int progress() override;
  int eventFd() const override { return epoll_fd_.get(); }
  bool arm() override;
  std::vector<DeviceBytes> deviceBytes() const override;

  // ---- for RailsEndpoint
  size_t rails() const { return rails_.size(); }
  VerbsTransport* rail(size_t k) const { return rails_[k].get(); }
  /// Operations longer than this are striped; shorter ones stay on their connection's lane.
  size_t sliceSize() const { return slice_size_; }
  void countBytes(size_t rail, uint64_t bytes) {
    bytes_[rail].fetch_add(bytes, std::memory_order_relaxed);
  }
  /// `ep` has slices to repost or notifications to send: drive() it from the next progress().
  void schedule(RailsEndpoint* ep);
  void forget(RailsEndpoint* ep);

 private:
  RailsTransport() = default;

  std::vector<std::unique_ptr<VerbsTransport>> rails_;
  std::unique_ptr<std::atomic<uint64_t>[]> bytes_;  ///< per rail, read by deviceBytes()
  size_t slice_size_ = 0;
  UniqueFd epoll_fd_;
  std::vector<RailsEndpoint*> scheduled_;
  std::vector<RailsEndpoint*>* driving_ = nullptr;  ///< progress()'s list while it drives it
};

}  // namespace zcx::transport::verbs

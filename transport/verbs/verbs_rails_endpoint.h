// RailsEndpoint: one connection of a multi-rail verbs transport, one lane (a single-rail
// VerbsEndpoint, i.e. one RC QP) per rail. It cuts one-sided operations into slices, stripes
// them over the lanes, completes each operation once when all its slices did, and moves the
// slices of a failed lane to the lanes that still work.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

class RailsTransport;
class RailsMemory;

/// A peer's key as every lane imported it (lanes[k] null: the peer gave no key for rail k).
class RailsRemoteKey final : public RemoteKey {
 public:
  explicit RailsRemoteKey(std::vector<std::unique_ptr<RemoteKey>> lanes)
      : lanes_(std::move(lanes)) {}
  RemoteKey* lane(size_t k) const { return k < lanes_.size() ? lanes_[k].get() : nullptr; }

 private:
  std::vector<std::unique_ptr<RemoteKey>> lanes_;
};

class RailsEndpoint final : public Endpoint {
 public:
  /// `peer_rails`: the peer's per-rail addresses; one lane per rail both sides have.
  static Result<std::unique_ptr<RailsEndpoint>> create(
      RailsTransport* transport, const EndpointSetup& setup,
      const std::vector<std::vector<uint8_t>>& peer_rails);
  ~RailsEndpoint() override;

  /// kReady once lane 0 is connected and the other lanes connected, failed or had 2 s to;
  /// kBroken when lane 0 is (messages ride it). A side lane that connects later joins then.
  EndpointState state() const override;
  Status error() const override;
  Result<std::unique_ptr<RemoteKey>> importKey(std::span<const uint8_t> packed_key) override;
  Status postWrite(std::span<const RmaOp> ops, std::optional<uint32_t> notify,
                   Completion* done) override;
  Status postRead(std::span<const RmaOp> ops, Completion* done) override;
  Status postSend(MemoryHandle* local, uint64_t local_addr, size_t length,
                  Completion* done) override;
  Status bindGrant(RemoteGrant* grant, Completion* done) override;
  void close(Status why) override;

  /// Reposts the slices of failed lanes and sends pending notifications (RailsTransport's
  /// progress, after every rail's); returns how much it did.
  int drive();

 private:
  /// A piece of one RmaOp, in the rails' handles (mapped to a lane's when posted).
  struct Slice {
    RailsMemory* local = nullptr;
    uint64_t local_addr = 0;
    RemoteKey* remote = nullptr;  ///< a RailsRemoteKey
    uint64_t remote_addr = 0;
    size_t length = 0;
    size_t lane = 0;  ///< where it goes (chosen again when it is retried)
  };
  struct Op;
  /// What one lane was given of an Op: completes into the Op.
  struct Part final : Completion {
    RailsEndpoint* owner = nullptr;
    Op* op = nullptr;
    size_t lane = 0;
    uint64_t bytes = 0;
    std::vector<Slice> slices;  ///< retried elsewhere if the lane fails (one-sided ops only)
    void complete(Status status) override;
  };
  /// One operation of the core's: done once every part did.
  struct Op {
    uint64_t id = 0;
    Completion* done = nullptr;
    bool is_read = false;
    std::optional<uint32_t> notify;  ///< still to send on lane 0 once the data is there
    std::vector<std::unique_ptr<Part>> parts;
    std::vector<Slice> to_retry;  ///< slices of failed lanes, reposted by drive()
    Status retry_cause;           ///< why they failed (the op's error if no lane is left)
    Status error;                 ///< the first error that ends the op
    uint32_t retries = 0;
    bool bind = false;  ///< a bindGrant: a rail that died under it does not fail it
  };
  class LaneEvents final : public EndpointEvents {
   public:
    LaneEvents(RailsEndpoint* owner, size_t lane) : owner_(owner), lane_(lane) {}
    void onMessage(const uint8_t* data, size_t length) override;
    void onNotify(uint32_t value) override;
    void onError(Status why) override;

   private:
    RailsEndpoint* owner_;  ///< owns the lane whose events these are
    size_t lane_;
  };

  RailsEndpoint(RailsTransport* transport, const EndpointSetup& setup);
  /// Lane `lane` (not 0) is dead: no more slices go there (logged once).
  void laneFailed(size_t lane, const Status& why);
  Status checkUsable() const;
  bool laneUsable(size_t k) const;
  /// Lanes a slice to `remote` may take now (ready, with a key for that lane).
  std::vector<size_t> lanesFor(const RemoteKey* remote) const;
  Op& newOp(Completion* done);
  /// drive() looks at `op` from the next progress().
  void scheduleOp(Op& op);
  /// One part: `slices` (all for `lane`) posted as one batch of that lane. On an error nothing
  /// was posted and `slices` are left to the caller.
  Status postPart(Op& op, size_t lane, std::vector<Slice>& slices, std::optional<uint32_t> notify);
  /// Posts every slice on its lane. A lane that refuses has its slices queued for retry, unless
  /// nothing was posted yet and `first_post` (then the error is returned and nothing is posted).
  Status postSlices(Op& op, std::vector<Slice> slices, bool first_post);
  Status postRma(std::span<const RmaOp> ops, bool is_read, std::optional<uint32_t> notify,
                 Completion* done);
  void onPartDone(Part* part, Status status);
  /// The error of an op whose retried slices have no lane left.
  Status noRailLeft(const Op& op) const;
  /// Completes `op` if nothing of it is outstanding or queued; may post its notification.
  void settle(Op& op);
  void finish(Op& op, Status status);

  RailsTransport* transport_;
  const uint64_t token_;
  size_t home_lane_ = 0;  ///< where this connection's small operations go
  EndpointEvents* events_;
  std::vector<std::unique_ptr<LaneEvents>> lane_events_;
  std::vector<std::unique_ptr<Endpoint>> lanes_;
  std::vector<bool> lane_failed_;
  std::unordered_map<uint64_t, std::unique_ptr<Op>> ops_;
  std::vector<uint64_t> scheduled_ops_;
  uint64_t next_op_ = 1;
  size_t next_lane_ = 0;  ///< round robin of striped slices
  bool closed_ = false;
  Status close_why_;
  /// When state() first saw lane 0 ready (the other lanes' grace period starts then).
  mutable std::optional<std::chrono::steady_clock::time_point> first_ready_at_;
};

}  // namespace zcx::transport::verbs

// VerbsEndpoint: one RC QP made through rdma_cm, its receive ring, and its send queue (op slots,
// software pending queue, selective signaling, READ limit: VerbsSendQueue).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "verbs/verbs_memory.h"
#include "verbs/verbs_resources.h"
#include "verbs/verbs_send_queue.h"
#include "verbs/verbs_wire.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::verbs {

class VerbsTransport;

class VerbsEndpoint final : public Endpoint {
 public:
  VerbsEndpoint(VerbsTransport* transport, uint32_t serial, const EndpointSetup& setup,
                size_t max_message_size);
  ~VerbsEndpoint() override;

  EndpointState state() const override { return state_; }
  Status error() const override { return error_; }
  Result<std::unique_ptr<RemoteKey>> importKey(std::span<const uint8_t> packed_key) override;
  Status postWrite(std::span<const RmaOp> ops, std::optional<uint32_t> notify,
                   Completion* done) override;
  Status postRead(std::span<const RmaOp> ops, Completion* done) override;
  Status postSend(MemoryHandle* local, uint64_t local_addr, size_t length,
                  Completion* done) override;
  Status bindGrant(RemoteGrant* grant, Completion* done) override;
  void close(Status why) override;

  // ---- for VerbsTransport
  uint32_t serial() const { return serial_; }
  uint64_t token() const { return token_; }
  /// The QP number (0 while there is no QP).
  uint32_t qpNum() const { return qp_ != nullptr ? qp_->qp_num : 0; }
  /// Active side: creates the cm id and starts address resolution.
  Status startActive(const CmAddress& peer);
  /// Passive side: takes the connect request's id, creates the QP and accepts.
  void accept(CmIdPtr id, const ConnectData& data, uint8_t initiator_depth,
              uint8_t responder_resources);
  /// A cm event for our id (already acked; private data copied).
  void onCmEvent(rdma_cm_event_type type, int status, const std::vector<uint8_t>& private_data);
  void onWc(const ibv_wc& wc);
  /// Delivers deferred completions and posts pending WRs; returns how much it did.
  int drive();
  bool hasWork() const;
  /// A fatal async device event (QP/port/device/CQ error): breaks the endpoint like an error
  /// CQE does (outstanding ops fail from the next drive(), then onError).
  void breakFromAsyncEvent(Status why) { breakConnection(std::move(why)); }
  /// The transport is going away before us: close and stop calling it.
  void detach(Status why);

 private:
  using Deferred = VerbsSendQueue::Completions;

  Status checkUsable() const;
  Status createQp(rdma_cm_id* id);
  Status postRecv(uint32_t index);
  /// Asks rdma_cm for VerbsOptions::ack_timeout on this QP (before connect/accept); an error
  /// if it was set and rdma_cm refuses it.
  Status setAckTimeout(rdma_cm_id* id);
  Status queueRma(std::span<const RmaOp> ops, bool is_read, std::optional<uint32_t> notify,
                  Completion* done);
  /// One op of one WR (SEND, BIND_MW): queued and flushed.
  Status queueSingleWr(const VerbsSendQueue::Wr& w, Completion* done, const char* kind);
  /// Posts what the send queue allows (once the QP is ready); a failed post breaks us.
  int flushPending();
  /// Marks the endpoint broken: QP to ERR, every outstanding op fails (the op of `failed_wr_id`
  /// with `op_status`, the others with kConnectionBroken), then onError(why); the callbacks run
  /// from the next drive() (inside progress()).
  void breakConnection(Status why, std::optional<uint64_t> failed_wr_id = std::nullopt,
                       Status op_status = Status());
  /// Collects every outstanding op and deferred completion (slots released).
  Deferred takeOutstanding(const Status& why, std::optional<uint64_t> failed_wr_id,
                           const Status& op_status);
  /// Moves the QP to ERR and consumes its flushed CQEs (bounded wait), then destroys it.
  void moveQpToError();
  void drainQp();
  void destroyConnection();
  Status wcError(const ibv_wc& wc, const char* kind) const;

  VerbsTransport* transport_;
  const uint32_t serial_;
  const Role role_;
  const uint64_t token_;
  const size_t max_message_size_;
  EndpointEvents* events_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  EndpointState state_ = EndpointState::kConnecting;
  Status error_;
  bool closed_ = false;
  bool error_pending_ = false;  ///< onError(error_) not yet reported
  bool qp_connected_ = false;   ///< rdma_connect/accept done: rdma_disconnect makes sense
  bool qp_registered_ = false;  ///< the transport routes async events of qp_ to us
  bool qp_used_ = false;        ///< the QP reached RTS: WRs may be outstanding on it

  CmIdPtr id_;
  ibv_qp* qp_ = nullptr;  ///< id_->qp
  uint32_t cq_entries_ = 0;
  uint32_t sq_depth_ = 0;
  uint32_t max_inline_ = 0;
  uint32_t read_limit_ = 1;
  uint64_t max_wr_bytes_ = 0;

  // Receive ring: recv_depth_ buffers of slot_size_ bytes in one registration.
  uint32_t recv_depth_ = 0;
  size_t slot_size_ = 0;
  std::unique_ptr<VerbsMemory> recv_ring_;

  VerbsSendQueue sq_;
  std::vector<VerbsSendQueue::Wr> op_wrs_;  ///< the WRs of the op being queued (reused)
  Deferred deferred_;
  /// Memory windows bound through this QP (bindGrant); invalidated before the QP is destroyed.
  std::vector<std::shared_ptr<MemoryWindow>> windows_;
};

}  // namespace zcx::transport::verbs

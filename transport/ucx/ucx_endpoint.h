// One connection to a peer worker: a ucp_ep created from the peer's worker address with peer
// error handling, plus the ordering state of the two-sided messages it receives.
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <unordered_set>
#include <vector>

#include "ucx/ucx_op.h"
#include "ucx/ucx_worker.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

class UcxRemoteKey;

class UcxEndpoint final : public Endpoint {
 public:
  static Result<std::unique_ptr<UcxEndpoint>> create(std::shared_ptr<UcxWorker> worker,
                                                     const EndpointSetup& setup);
  ~UcxEndpoint() override;

  EndpointState state() const override { return state_; }
  Status error() const override { return error_; }
  Result<std::unique_ptr<RemoteKey>> importKey(std::span<const uint8_t> packed_key) override;
  Status postWrite(std::span<const RmaOp> ops, std::optional<uint32_t> notify,
                   Completion* done) override;
  Status postRead(std::span<const RmaOp> ops, Completion* done) override;
  Status postSend(MemoryHandle* local, uint64_t local_addr, size_t length,
                  Completion* done) override;
  void close(Status why) override;

  // --- called by UcxWorker ---
  ucp_ep_h ucpEp() const { return ep_; }
  /// Runs the record's state machine once it has no UCX request in flight.
  void advance(OpRecord* rec);
  /// An in-order-or-not message; delivered at once when it is the next one.
  void receiveMessage(uint64_t seq, const uint8_t* data, size_t length);
  void receiveOwned(BufferedMessage message);
  /// A rendezvous message whose data is still at the sender (`desc`, from the AM callback): if
  /// it is the next one in order and the core takes it as a held message (fetched later, straight
  /// into its posted buffer), returns true and the callback returns UCS_INPROGRESS. false: the
  /// worker receives it into a buffer of its own and delivers it with onMessage.
  bool holdInOrder(uint64_t seq, void* desc, size_t length);
  Status fetchHeld(uint64_t held, const ReceiveTarget& target) override;
  void receiveNotify(uint32_t value);
  /// Delivers what was buffered before the endpoint existed.
  void deliverBuffered();
  /// Passive side: the active side is wired up (kAmHello); create our ucp_ep now.
  void connectToPeer();
  /// From the err_handler (inside UCX progress): only marks the endpoint broken.
  void markBroken(ucs_status_t status);
  /// The peer broke the wire protocol (oversized message, sequence number outside the window):
  /// marks the endpoint broken with kProtocolError; progress() fails it like a peer failure.
  void protocolViolation(const std::string& what);
  /// Marks the endpoint broken with `why` from inside a UCX callback (see protocolViolation).
  void failFromCallback(Status why);
  size_t maxMessageSize() const { return max_message_size_; }
  /// Checked RMA: a chunk sent on this endpoint was answered (pump: send more of the waiting
  /// ones) or dropped with its record.
  void chunkAnswered(bool pump);
  void pumpAfterReply() { pumpChunks(); }
  /// Deferred part of a peer failure: fails outstanding ops, then calls onError.
  void reportBroken();

  // --- called by UcxRemoteKey ---
  void forgetKey(UcxRemoteKey* key) { keys_.erase(key); }

 private:
  UcxEndpoint(std::shared_ptr<UcxWorker> worker, const EndpointSetup& setup);

  Status checkUsable() const;
  OpRecord* startRecord(OpRecord::Kind kind, Completion* done);
  /// Posts one request for `rec`; false if it failed at once (rec->status then holds why).
  bool track(OpRecord* rec, ucs_status_ptr_t ptr, const char* call);
  ucp_request_param_t requestParam(OpRecord* rec, MemoryHandle* local) const;
  /// After posting: returns the status for the post call (error only if nothing was posted).
  Status finishPost(OpRecord* rec, bool posted_any);
  /// ucp_ep_create to the peer's worker address with peer error handling.
  Status createUcpEp();
  /// Posts the flush whose completion means UCX wireup finished (see Kind::kWireup).
  Status startWireup();
  void postHello(OpRecord* rec);
  /// Checked RMA (ucx_checked_rma.cc has the target side): one AM per op, answered by the target.
  Status postChecked(std::span<const RmaOp> ops, bool is_read, std::optional<uint32_t> notify,
                     Completion* done);
  /// Sends waiting chunks while fewer than kCheckedWindow are unanswered.
  void pumpChunks();
  /// A native write whose puts are posted while a flush is in flight joins the open flush group
  /// (opening one); the group's single flush is posted once no flush is in flight (flushDone),
  /// or at once when it is full.
  void joinGroup(OpRecord* rec);
  /// Posts the open group's flush, if there is a group.
  void postGroupFlush();
  /// A flush counted in flushes_in_flight_ was seen complete by progress(): the open group's
  /// flush goes out once none is left in flight.
  void flushDone();
  /// The group's flush finished: its members may complete (with its error, if it failed).
  void completeGroup(OpRecord* group);
  /// A write with a notify: its notify goes out after those of the writes posted before it.
  void orderNotify(OpRecord* rec);
  /// Posts the notifies of the writes at the front of notify_order_ whose data is visible.
  void pumpNotifies();
  void postNotify(OpRecord* rec);
  void finish(OpRecord* rec);
  void unlink(OpRecord* rec);
  /// Fails every outstanding record; returns those UCX still holds requests on.
  std::vector<OrphanRef> failAll(const Status& why);
  void drainReorder();

  std::shared_ptr<UcxWorker> worker_;
  std::vector<uint8_t> peer_address_;  ///< the peer's ucp worker address (unframed)
  ucp_ep_h ep_ = nullptr;
  RouteKey key_;
  uint64_t token_ = 0;
  uint8_t role_ = 0;
  size_t max_message_size_ = 0;
  EndpointEvents* events_ = nullptr;
  EndpointState state_ = EndpointState::kConnecting;  ///< kReady once wireup finished
  Status error_;
  bool closed_ = false;
  bool broken_reported_ = false;

  OpRecord* head_ = nullptr;  // outstanding records (doubly linked)
  /// The flush group collecting writes (also in head_'s list); its flush is not posted yet.
  /// Only open while flushes_in_flight_ > 0 (so some flushDone() will post its flush).
  OpRecord* open_group_ = nullptr;
  /// Flushes posted (a write's own or a group's) whose completion progress() has not handled
  /// yet; while there is one, writes collect in open_group_ (Nagle-like).
  uint32_t flushes_in_flight_ = 0;
  /// Writes with a notify, in posting order (stale entries are skipped).
  std::deque<OrphanRef> notify_order_;
  std::vector<OrphanRef> orphans_;  ///< failed by a peer failure, still held by UCX
  std::unordered_set<UcxRemoteKey*> keys_;

  uint64_t next_send_seq_ = 0;
  uint64_t next_recv_seq_ = 0;
  std::map<uint64_t, BufferedMessage> reorder_;
  size_t reorder_bytes_ = 0;
  std::vector<uint32_t> early_notifies_;
  /// Rendezvous descriptors the core holds as messages (onMessageHeld), until fetched or closed.
  struct HeldMessage {
    void* desc;
    size_t length;
  };
  std::map<uint64_t, HeldMessage> held_;
  uint64_t next_held_ = 1;

  struct UnsentChunk {
    OpRecord* rec;
    uint64_t generation;
    uint32_t index;  ///< into rec->rma_headers
    MemoryHandle* local;
    const void* data;
    size_t length;
    bool is_read;
  };
  std::deque<UnsentChunk> unsent_;
  uint32_t chunks_in_flight_ = 0;
};

}  // namespace zcx::transport::ucx

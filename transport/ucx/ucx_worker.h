// The state shared by one transport and everything created from it: the UCX context and worker,
// active-message routing (token -> endpoint), the pool of operation records and the work that
// progress() defers out of UCX callbacks.
//
// Shared (std::shared_ptr) by the transport, its endpoints and memory handles, so the worker
// outlives every UCX object created on it whatever order the core destroys them in.
#pragma once

#include <ucp/api/ucp.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "ucx/ucx_access_table.h"
#include "ucx/ucx_context.h"
#include "ucx/ucx_op.h"
#include "zcx/transport/transport.h"

namespace zcx::transport::ucx {

class UcxEndpoint;

/// Which endpoint an active message is for: the connection token and the receiver's role.
using RouteKey = std::pair<uint64_t, uint8_t>;

/// A message that arrived before its endpoint existed (or one received by rendezvous).
struct BufferedMessage {
  bool is_notify = false;
  bool is_hello = false;  ///< the active side's kAmHello
  uint64_t value = 0;     ///< sequence number or notify value
  bool hole = false;      ///< the data was lost (failed rendezvous receive): skip this sequence
  std::vector<uint8_t> data;
};

class UcxWorker {
 public:
  /// Installs the AM handlers; `context` must be fully created.
  static Result<std::shared_ptr<UcxWorker>> create(std::unique_ptr<UcxContext> context);
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  ucp_context_h context() const { return context_->context(); }
  ucp_worker_h worker() const { return context_->worker(); }
  const UcxContext& ucx() const { return *context_; }

  // --- operation records ---
  OpRecord* acquire();
  /// Returns a record to the pool once nobody refers to it any more.
  void releaseIfIdle(OpRecord* rec);
  /// The record has no UCX request in flight: advance it from the next progress().
  void schedule(OpRecord* rec);
  /// The ucp_send_nbx_callback_t used for every request; user_data is the OpRecord.
  static void onRequestDone(void* request, ucs_status_t status, void* user_data);

  // --- endpoints ---
  Status addEndpoint(RouteKey key, UcxEndpoint* endpoint);
  /// Fetches a held rendezvous message (`desc` from the AM callback) into `target`
  /// (UcxEndpoint::fetchHeld); completes target.landed inside the call if it is there at once.
  Status receiveInto(void* desc, size_t length, const ReceiveTarget& target);
  /// The endpoint is closing: later messages for `key` are dropped.
  void removeEndpoint(RouteKey key);
  /// Messages that arrived for `key` before addEndpoint (handed over once).
  std::vector<BufferedMessage> takeEarly(RouteKey key);
  /// Asks progress() to call endpoint->deliverBuffered() for `key`.
  void scheduleDelivery(RouteKey key);
  /// Asks progress() to call endpoint->connectToPeer() for `key` (outside UCX callbacks).
  void scheduleConnect(RouteKey key);
  /// progress() fails the endpoint at `key` (already marked broken) like a peer failure.
  void scheduleBroken(RouteKey key) { broken_.emplace_back(key, UCS_ERR_INVALID_PARAM); }
  /// ucp_err_handler_cb_t; arg is the UcxWorker.
  static void onEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  /// Waits (bounded, ~1 s) for an ep close request, or leaves it to progress() if called from
  /// inside a UCX callback. Once the close is complete UCX has destroyed the ep: `orphans` (records
  /// still waiting for UCX callbacks, e.g. a flush on a force-closed shm ep, which UCX 1.13 never
  /// calls back) are completed then.
  void finishClose(void* request, std::vector<OrphanRef> orphans);
  /// Flushes `ep` (every operation on it done at the target), progressing the worker for at most
  /// `limit`; false if it did not finish (or cannot be waited for from inside a UCX callback).
  bool flushBounded(ucp_ep_h ep, std::chrono::milliseconds limit);
  /// Completes orphaned records whose ep UCX has destroyed (skips records completed or reused).
  void releaseOrphans(const std::vector<OrphanRef>& orphans);

  // --- checked RMA (ucx_checked_rma.cc) ---
  /// What this process exposed; every incoming put/get is checked against it.
  UcxAccessTable& access() { return access_; }
  bool checkedRma() const { return context_->checkedRma(); }
  /// Initiator side: remembers op `slot` until its reply; returns the op id to send.
  struct RmaSlot {
    OpRecord* rec = nullptr;
    uint64_t generation = 0;
    RouteKey route;            ///< the endpoint the reply must come from
    uint8_t* local = nullptr;  ///< a get's destination
    size_t length = 0;
    bool is_read = false;
    bool sent = false;  ///< counted in its endpoint's window until answered or dropped
  };
  uint64_t addRmaSlot(const RmaSlot& slot);
  void markRmaSent(uint64_t op_id);
  /// The passive endpoint at `route` has just created its ucp_ep: sends the replies that were
  /// waiting for it (accesses that arrived between the peer's hello and our connect).
  void sendHeldReplies(RouteKey route);
  /// The record completes: replies still to come for its ops are dropped.
  void dropRmaSlots(OpRecord* rec);

  // --- progress ---
  int progress();
  /// True when progress() has deferred work right now (the core must not sleep).
  bool hasDeferredWork() const;
  bool insideUcxProgress() const { return in_ucx_progress_ > 0; }

 private:
  explicit UcxWorker(std::unique_ptr<UcxContext> context) : context_(std::move(context)) {}

  static ucs_status_t onAmMessage(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t onAmHello(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t onAmNotify(void* arg, const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param);
  static void onRndvDone(void* request, ucs_status_t status, size_t length, void* user_data);
  static ucs_status_t onAmPut(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t onAmGet(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t onAmRmaReply(void* arg, const void* header, size_t header_length, void* data,
                                   size_t length, const ucp_am_recv_param_t* param);
  static void onReplySent(void* request, ucs_status_t status, void* user_data);
  /// The common part of every request callback on an OpRecord.
  void requestDone(OpRecord* rec, ucs_status_t status);
  /// Target side: answers op `op_id` of the connection at `route`; a granted get carries `data`
  /// (read out of our memory while `guard` keeps the registration from being revoked under it).
  void sendRmaReply(RouteKey route, uint64_t op_id, AccessRefusal refusal, const uint8_t* data,
                    size_t length, ucp_mem_h memh, AccessGuard guard);
  /// The target refused an access: logged here (rate-limited), answered by sendRmaReply.
  void noteRefusal(const char* what, const RmaHeader& h, AccessRefusal refusal);

  struct ReplySend {  ///< a reply in flight (UCX keeps pointing at its header)
    UcxWorker* worker;
    RmaReplyHeader header;
    AccessGuard guard;
  };

  struct RndvRecv {
    UcxWorker* worker;
    RouteKey key;
    uint64_t seq;
    std::vector<uint8_t> buffer;
  };
  /// A rendezvous receive straight into a buffer the core posted (UcxEndpoint::fetchHeld).
  struct RndvLanding {
    UcxWorker* worker;
    Completion* landed;
  };
  static void onLandingDone(void* request, ucs_status_t status, size_t length, void* user_data);

  UcxEndpoint* find(RouteKey key) const;
  /// Routes a received message; buffers it if the endpoint does not exist yet.
  void deliverMessage(RouteKey key, uint64_t seq, const uint8_t* data, size_t length);
  void deliverOwned(RouteKey key, BufferedMessage message);
  void deliverNotify(RouteKey key, uint32_t value);
  void stashEarly(RouteKey key, BufferedMessage message);
  int drainDeferred();
  void pollClosing();

  std::unique_ptr<UcxContext> context_;

  std::vector<std::unique_ptr<OpRecord>> records_;
  OpRecord* free_ = nullptr;
  std::vector<OpRecord*> attention_;
  std::vector<OpRecord*> attention_spare_;

  std::map<RouteKey, UcxEndpoint*> endpoints_;
  std::set<RouteKey> retired_;
  std::map<RouteKey, std::vector<BufferedMessage>> early_;
  size_t early_bytes_ = 0;
  size_t early_count_ = 0;
  std::vector<RouteKey> deliveries_;
  std::vector<RouteKey> connects_;
  std::vector<std::pair<RouteKey, ucs_status_t>> broken_;
  std::unordered_set<RndvRecv*> rndv_;
  std::unordered_set<RndvLanding*> landings_;
  UcxAccessTable access_;
  std::unordered_map<uint64_t, RmaSlot> rma_ops_;
  uint64_t next_op_id_ = 1;
  std::unordered_set<ReplySend*> replies_;
  struct HeldReply {
    uint64_t op_id;
    AccessRefusal refusal;
    const uint8_t* data;
    size_t length;
    ucp_mem_h memh;
    AccessGuard guard;
  };
  std::map<RouteKey, std::vector<HeldReply>> held_replies_;
  struct Closing {
    void* request;
    std::vector<OrphanRef> orphans;
  };
  std::vector<Closing> closing_;
  uint64_t next_generation_ = 1;
  int in_ucx_progress_ = 0;
};

}  // namespace zcx::transport::ucx

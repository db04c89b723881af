#include "ucx/ucx_endpoint.h"

#include <glog/logging.h>

#include <algorithm>
#include <string>
#include <utility>

#include "ucx/ucx_key_format.h"
#include "ucx/ucx_memory.h"
#include "ucx/ucx_remote_key.h"
#include "ucx/ucx_status.h"
#include "ucx/ucx_wire_sync.h"

namespace zcx::transport::ucx {
namespace {

/// Used when the core passes max_message_size 0.
constexpr size_t kDefaultMaxMessage = size_t{1} << 30;
// Messages held for reordering (a rendezvous message lands after later eager ones). A peer's
// sequence number further ahead than kMaxReorderSpan, or more than these bounds held, breaks the
// connection: a bogus sequence number never makes us hold memory without bound.
constexpr uint64_t kMaxReorderSpan = 1u << 16;
constexpr size_t kMaxReorderCount = 4096;
constexpr size_t kMaxReorderBytes = size_t{256} << 20;
// Checked RMA moves data in eager active messages of at most this size (see postChecked), at
// most kCheckedWindow of them unanswered per endpoint: the rest wait here rather than in UCX's
// pending queues (UCX 1.13 asserted on requests left there when a stalled peer's endpoint was
// force-closed: "stubs.c Assertion `0'" in uct_tcp progress).
constexpr size_t kCheckedChunk = 128 * 1024;
constexpr uint32_t kCheckedWindow = 8;
// How long close() waits for a healthy endpoint's flush before it force-closes it.
constexpr auto kCloseFlushLimit = std::chrono::milliseconds(500);
// Writes per flush group: a full group posts its flush at once, so a long burst of writes
// does not wait for the flushes in flight (nor for all of the burst).
constexpr size_t kMaxGroupWrites = 64;

}  // namespace

UcxEndpoint::UcxEndpoint(std::shared_ptr<UcxWorker> worker, const EndpointSetup& setup)
    : worker_(std::move(worker)),
      key_{setup.token, static_cast<uint8_t>(setup.role == Role::kActive ? 0 : 1)},
      token_(setup.token),
      role_(key_.second),
      max_message_size_(setup.max_message_size == 0 ? kDefaultMaxMessage : setup.max_message_size),
      events_(setup.events) {}

Result<std::unique_ptr<UcxEndpoint>> UcxEndpoint::create(std::shared_ptr<UcxWorker> worker,
                                                         const EndpointSetup& setup) {
  auto peer_address = unframeAddress(setup.peer_address);
  if (!peer_address.ok()) return peer_address.status().withContext("ucx: peer worker address");
  if (setup.events == nullptr) {
    return Status(StatusCode::kInvalidArgument, "ucx: EndpointSetup.events is null");
  }
  std::unique_ptr<UcxEndpoint> self(new UcxEndpoint(std::move(worker), setup));
  Status added = self->worker_->addEndpoint(self->key_, self.get());
  if (!added.ok()) {
    self->closed_ = true;  // nothing to undo; do not unregister the other endpoint's key
    return added;
  }

  self->peer_address_.assign(peer_address->begin(), peer_address->end());
  // Only the active side starts UCX wireup. The passive side creates its ucp_ep when the active
  // side says it is wired up (kAmHello): UCX then matches it with the endpoint it made for that
  // wireup. Both sides creating endpoints to each other at once makes the wireups cross, and
  // UCX 1.13 can be left with a wireup REP in a pending queue that it asserts on when the worker
  // is destroyed ("got REP message").
  if (setup.role == Role::kActive) {
    ZCX_RETURN_IF_ERROR(self->createUcpEp());
    ZCX_RETURN_IF_ERROR(self->startWireup());
  }

  // Messages that arrived before this endpoint existed are delivered from the next progress().
  std::vector<BufferedMessage> early = self->worker_->takeEarly(self->key_);
  if (!early.empty()) {
    for (auto& m : early) {
      if (m.is_hello) {
        self->worker_->scheduleConnect(self->key_);
      } else if (m.is_notify) {
        self->early_notifies_.push_back(static_cast<uint32_t>(m.value));
      } else {
        uint64_t seq = m.value;
        self->reorder_.emplace(seq, std::move(m));
      }
    }
    self->worker_->scheduleDelivery(self->key_);
  }
  return self;
}

Status UcxEndpoint::createUcpEp() {
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.address = reinterpret_cast<const ucp_address_t*>(peer_address_.data());
  p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  p.err_handler.cb = &UcxWorker::onEndpointError;
  p.err_handler.arg = worker_.get();
  ucs_status_t st = ucp_ep_create(worker_->worker(), &p, &ep_);
  if (st != UCS_OK) {
    ep_ = nullptr;
    Status s = statusFromUcs(st, "ucp_ep_create");
    if (s.code() == StatusCode::kConnectionBroken) {
      s = Status(StatusCode::kConnectionRefused, s.message());
    }
    return s.withContext("ucx: cannot reach the peer worker (do both sides use the same ucx.tls?)");
  }
  return Status::Ok();
}

void UcxEndpoint::connectToPeer() {
  if (closed_ || ep_ != nullptr || state_ != EndpointState::kConnecting) return;
  Status s = createUcpEp();
  if (s.ok()) s = startWireup();
  if (!s.ok()) {
    state_ = EndpointState::kBroken;
    error_ = s;
    return;
  }
  worker_->sendHeldReplies(key_);
}

// ucp_ep_create returns before UCX has wired the endpoint up (over tcp: sockets connecting,
// WIREUP REQ/REP/ACK in flight). Closing it or destroying the worker in that window leaves
// wireup messages in UCX's pending queues, which UCX 1.13 asserts on when it purges them
// ("got REP message" in ucp_worker_destroy). A flush completes only after the wireup proxy
// handed its lanes over, so the endpoint is kReady exactly when the flush is done, and the core
// does not hand out the connection before that.
Status UcxEndpoint::startWireup() {
  OpRecord* rec = startRecord(OpRecord::Kind::kWireup, nullptr);
  rec->phase = OpRecord::Phase::kFlush;
  ucp_request_param_t p = requestParam(rec, nullptr);
  bool posted = track(rec, ucp_ep_flush_nbx(ep_, &p), "ucp_ep_flush_nbx(wireup)");
  // Same as any post: an error only if nothing reached UCX; done at once -> next progress().
  return finishPost(rec, posted).withContext("ucx: endpoint wireup");
}

// The hello must not take UCX's inline (short) path. Over transports that connect to an
// interface (tcp, shm) UCX 1.13 reports the endpoint flushed before it has exchanged WIREUP
// REQ/REP with the peer: it sends the REQ lazily, on the first message that needs the remote
// endpoint id, i.e. our first put or send. The peer's REP then competes with user traffic and
// can sit in a transport pending queue when the connection fails, which UCX 1.13 asserts on
// while purging ("got REP message"; fixed upstream by openucx/ucx#8175). Without immediate
// completion the hello needs the remote id, so UCX sends the REQ now and holds the hello until
// the REP arrived: when the passive side sees the hello, its REP has been delivered, and the
// connection is handed out with no wireup message left in flight on either side.
void UcxEndpoint::postHello(OpRecord* rec) {
  rec->header = AmHeader{};
  rec->header.token = token_;
  rec->header.role = role_;
  ucp_request_param_t p = requestParam(rec, nullptr);
  p.op_attr_mask |= UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  wireRelease();
  track(rec, ucp_am_send_nbx(ep_, kAmHello, &rec->header, sizeof(AmHeader), nullptr, 0, &p),
        "ucp_am_send_nbx(hello)");
}

UcxEndpoint::~UcxEndpoint() { close(Status(StatusCode::kCancelled, "ucx endpoint destroyed")); }

Status UcxEndpoint::checkUsable() const {
  if (closed_ || state_ == EndpointState::kBroken) {
    return error_.ok() ? Status(StatusCode::kConnectionBroken, "ucx endpoint is broken") : error_;
  }
  if (ep_ == nullptr) {
    return Status(StatusCode::kUnavailable,
                  "ucx endpoint is still connecting (the active side has not wired up yet)");
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Keys

Result<std::unique_ptr<RemoteKey>> UcxEndpoint::importKey(std::span<const uint8_t> packed_key) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (worker_->checkedRma() != looksLikeCheckedKey(packed_key)) {
    return Status(StatusCode::kProtocolError,
                  std::string("the peer's key is for ") +
                      (worker_->checkedRma() ? "UCX RMA (ucx.rma=native)" : "checked RMA") +
                      " but this engine uses " +
                      (worker_->checkedRma() ? "checked RMA" : "UCX RMA") +
                      "; give both sides the same ucx.rma (or ucx.tls)");
  }
  if (worker_->checkedRma()) {
    auto checked = unframeCheckedKey(packed_key);
    if (!checked.ok()) return checked.status();
    auto key = std::make_unique<UcxRemoteKey>(this, *checked);
    keys_.insert(key.get());
    return std::unique_ptr<RemoteKey>(std::move(key));
  }
  auto body = unframeKey(packed_key);
  if (!body.ok()) return body.status();
  ucp_rkey_h rkey = nullptr;
  ucs_status_t st = ucp_ep_rkey_unpack(ep_, body->data(), &rkey);
  if (st != UCS_OK) {
    return Status(StatusCode::kProtocolError,
                  std::string("ucp_ep_rkey_unpack: ") + ucs_status_string(st) +
                      " (the key does not match this connection's transports)");
  }
  auto key = std::make_unique<UcxRemoteKey>(this, rkey);
  keys_.insert(key.get());
  return std::unique_ptr<RemoteKey>(std::move(key));
}

// ---------------------------------------------------------------------------------------------
// Posting

OpRecord* UcxEndpoint::startRecord(OpRecord::Kind kind, Completion* done) {
  OpRecord* rec = worker_->acquire();
  rec->kind = kind;
  rec->done = done;
  rec->endpoint = this;
  rec->next = head_;
  rec->prev = nullptr;
  if (head_ != nullptr) head_->prev = rec;
  head_ = rec;
  return rec;
}

void UcxEndpoint::unlink(OpRecord* rec) {
  if (rec->prev != nullptr) {
    rec->prev->next = rec->next;
  } else if (head_ == rec) {
    head_ = rec->next;
  }
  if (rec->next != nullptr) rec->next->prev = rec->prev;
  rec->prev = rec->next = nullptr;
}

ucp_request_param_t UcxEndpoint::requestParam(OpRecord* rec, MemoryHandle* local) const {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &UcxWorker::onRequestDone;
  p.user_data = rec;
  setMemh(&p, local);
  return p;
}

bool UcxEndpoint::track(OpRecord* rec, ucs_status_ptr_t ptr, const char* call) {
  if (UCS_PTR_IS_PTR(ptr)) {
    ++rec->pending;
    return true;
  }
  ucs_status_t st = UCS_PTR_STATUS(ptr);
  if (st == UCS_OK) return true;
  if (rec->status.ok()) rec->status = statusFromUcs(st, call);
  return false;
}

Status UcxEndpoint::finishPost(OpRecord* rec, bool posted_any) {
  if (!rec->status.ok() && !posted_any) {
    // Nothing reached UCX: report synchronously, `done` is never called.
    Status s = rec->status;
    unlink(rec);
    rec->user_done = true;
    rec->endpoint = nullptr;
    worker_->releaseIfIdle(rec);
    return s;
  }
  // Completions are never delivered from inside post*(): an op UCX finished at once waits for
  // the next progress().
  if (rec->pending == 0 && rec->awaiting == 0) worker_->schedule(rec);
  return Status::Ok();
}

namespace {

Status checkOps(std::span<const RmaOp> ops, const UcxEndpoint* self, const char* what) {
  for (size_t i = 0; i < ops.size(); ++i) {
    const RmaOp& op = ops[i];
    if (op.length == 0) continue;
    if (op.local == nullptr || op.remote == nullptr) {
      return Status(StatusCode::kInvalidArgument, std::string("ucx ") + what + ": op " +
                                                      std::to_string(i) +
                                                      " has no local memory handle or remote key");
    }
    const auto* key = static_cast<const UcxRemoteKey*>(op.remote);
    if (key->owner() != self || !key->usable()) {
      return Status(StatusCode::kInvalidArgument,
                    std::string("ucx ") + what + ": op " + std::to_string(i) +
                        " uses a remote key imported on another endpoint");
    }
  }
  return Status::Ok();
}

}  // namespace

Status UcxEndpoint::postWrite(std::span<const RmaOp> ops, std::optional<uint32_t> notify,
                              Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (done == nullptr) return Status(StatusCode::kInvalidArgument, "ucx write: no completion");
  ZCX_RETURN_IF_ERROR(checkOps(ops, this, "write"));
  if (worker_->checkedRma()) return postChecked(ops, /*is_read=*/false, notify, done);

  OpRecord* rec = startRecord(OpRecord::Kind::kWrite, done);
  rec->phase = OpRecord::Phase::kFlush;  // the puts in flight, then its or its group's flush
  rec->has_notify = notify.has_value();
  rec->notify_value = notify.value_or(0);
  orderNotify(rec);
  bool posted_any = false;
  for (const RmaOp& op : ops) {
    if (op.length == 0) continue;
    ucp_request_param_t p = requestParam(rec, op.local);
    ucs_status_ptr_t ptr =
        ucp_put_nbx(ep_, reinterpret_cast<const void*>(op.local_addr), op.length, op.remote_addr,
                    static_cast<const UcxRemoteKey*>(op.remote)->rkey(), &p);
    // A put that failed at once: the write fails once its earlier puts called back; no flush.
    if (!track(rec, ptr, "ucp_put_nbx")) return finishPost(rec, posted_any);
    posted_any = true;
  }
  // A write completes once a flush posted after its puts completed (it covers every operation
  // posted on the ep before it). With no flush in flight there is nothing to share one with: the
  // write posts its own now, on its own record, and the writes that come while it is in flight
  // collect in a group (Nagle-like).
  if (flushes_in_flight_ == 0 && open_group_ == nullptr) {
    ucp_request_param_t p = requestParam(rec, nullptr);
    track(rec, ucp_ep_flush_nbx(ep_, &p), "ucp_ep_flush_nbx");  // a failure is rec->status
    rec->own_flush = true;
    ++flushes_in_flight_;
  } else {
    joinGroup(rec);
  }
  return finishPost(rec, /*posted_any=*/true);
}

void UcxEndpoint::joinGroup(OpRecord* rec) {
  if (open_group_ == nullptr) {
    open_group_ = startRecord(OpRecord::Kind::kFlush, nullptr);
    open_group_->phase = OpRecord::Phase::kFlush;
  }
  open_group_->members.push_back({rec, rec->generation});
  rec->awaiting = 1;  // the group's flush
  // A full group does not wait for the flushes in flight: its own covers its members' puts
  // whether or not the earlier flushes completed.
  if (open_group_->members.size() >= kMaxGroupWrites) postGroupFlush();
}

void UcxEndpoint::postGroupFlush() {
  OpRecord* group = std::exchange(open_group_, nullptr);
  if (group == nullptr) return;
  // A flush completes once every operation posted on the ep before it is done at the origin and
  // at the target: the puts of every member.
  ucp_request_param_t p = requestParam(group, nullptr);
  track(group, ucp_ep_flush_nbx(ep_, &p), "ucp_ep_flush_nbx");
  ++flushes_in_flight_;  // until completeGroup
  // Done or failed at once: its members complete from progress() (never inside a post call).
  if (group->pending == 0) worker_->schedule(group);
}

void UcxEndpoint::flushDone() {
  if (flushes_in_flight_ > 0) --flushes_in_flight_;
  // Runs from progress() (advance), never inside a post call; the group's members complete from
  // a later attention round at the earliest.
  if (flushes_in_flight_ == 0) postGroupFlush();
}

void UcxEndpoint::completeGroup(OpRecord* group) {
  for (const OrphanRef& m : group->members) {
    OpRecord* rec = m.rec;
    // Members leave only through failAll, which detaches the group too; checked all the same.
    if (rec->generation != m.generation || rec->user_done || rec->endpoint != this) continue;
    if (!group->status.ok() && rec->status.ok()) rec->status = group->status;
    rec->awaiting = 0;
    if (rec->pending == 0) worker_->schedule(rec);  // in posting order
  }
  unlink(group);
  group->user_done = true;
  group->endpoint = nullptr;
  worker_->releaseIfIdle(group);
  flushDone();
}

void UcxEndpoint::orderNotify(OpRecord* rec) {
  if (rec->has_notify) notify_order_.push_back({rec, rec->generation});
}

void UcxEndpoint::pumpNotifies() {
  while (!notify_order_.empty() && !closed_) {
    OpRecord* rec = notify_order_.front().rec;
    bool stale = rec->generation != notify_order_.front().generation || rec->user_done ||
                 rec->endpoint != this;
    if (!stale && rec->phase != OpRecord::Phase::kVisible) return;  // an earlier one in flight
    notify_order_.pop_front();
    if (stale) continue;  // finished (failed) without a notify
    rec->phase = OpRecord::Phase::kNotify;
    if (state_ == EndpointState::kBroken) {
      // The notify cannot go out: the write fails (from progress(), via advance -> finish).
      if (rec->status.ok()) rec->status = checkUsable();
    } else {
      postNotify(rec);
    }
    if (rec->pending == 0) worker_->schedule(rec);
  }
}

Status UcxEndpoint::postRead(std::span<const RmaOp> ops, Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (done == nullptr) return Status(StatusCode::kInvalidArgument, "ucx read: no completion");
  ZCX_RETURN_IF_ERROR(checkOps(ops, this, "read"));
  if (worker_->checkedRma()) return postChecked(ops, /*is_read=*/true, std::nullopt, done);

  OpRecord* rec = startRecord(OpRecord::Kind::kRead, done);
  bool posted_any = false;
  for (const RmaOp& op : ops) {
    if (op.length == 0) continue;
    ucp_request_param_t p = requestParam(rec, op.local);
    ucs_status_ptr_t ptr =
        ucp_get_nbx(ep_, reinterpret_cast<void*>(op.local_addr), op.length, op.remote_addr,
                    static_cast<const UcxRemoteKey*>(op.remote)->rkey(), &p);
    if (!track(rec, ptr, "ucp_get_nbx")) break;
    posted_any = true;
  }
  // A get's completion means the data is in local memory: no flush needed.
  return finishPost(rec, posted_any);
}

Status UcxEndpoint::postSend(MemoryHandle* local, uint64_t local_addr, size_t length,
                             Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (done == nullptr) return Status(StatusCode::kInvalidArgument, "ucx send: no completion");
  if (length > max_message_size_) {
    return Status(StatusCode::kOutOfRange, "ucx send: message of " + std::to_string(length) +
                                               " bytes exceeds the connection's maximum of " +
                                               std::to_string(max_message_size_));
  }
  if (length > 0 && local == nullptr) {
    return Status(StatusCode::kInvalidArgument, "ucx send: no local memory handle");
  }
  OpRecord* rec = startRecord(OpRecord::Kind::kSend, done);
  rec->header = AmHeader{};
  rec->header.token = token_;
  rec->header.value = next_send_seq_;
  rec->header.role = role_;
  ucp_request_param_t p = requestParam(rec, length > 0 ? local : nullptr);
  wireRelease();
  ucs_status_ptr_t ptr = ucp_am_send_nbx(ep_, kAmMessage, &rec->header, sizeof(AmHeader),
                                         reinterpret_cast<const void*>(local_addr), length, &p);
  bool posted = track(rec, ptr, "ucp_am_send_nbx");
  if (posted) ++next_send_seq_;
  return finishPost(rec, posted);
}

Status UcxEndpoint::postChecked(std::span<const RmaOp> ops, bool is_read,
                                std::optional<uint32_t> notify, Completion* done) {
  OpRecord* rec = startRecord(is_read ? OpRecord::Kind::kRead : OpRecord::Kind::kWrite, done);
  rec->phase = OpRecord::Phase::kFlush;  // requests in flight, replies awaited
  rec->has_notify = notify.has_value();
  rec->notify_value = notify.value_or(0);
  orderNotify(rec);
  // Every op goes in chunks of at most kCheckedChunk bytes, each an eager active message: UCX
  // then hands the target (or, for a read, us) the whole chunk in one callback and nothing is
  // left receiving into user memory after it returns. (A rendezvous receive into user memory
  // cannot be cancelled in UCX 1.13 and, when its sender vanishes, can stay pending past the
  // memory's revocation.)
  size_t chunks = 0;
  for (const RmaOp& op : ops) chunks += (op.length + kCheckedChunk - 1) / kCheckedChunk;
  rec->rma_headers.reserve(chunks);  // UCX points into them until each send completes
  for (const RmaOp& op : ops) {
    const CheckedKey& key =
        op.length == 0 ? CheckedKey{} : static_cast<const UcxRemoteKey*>(op.remote)->checked();
    for (size_t off = 0; off < op.length; off += kCheckedChunk) {
      size_t len = std::min(kCheckedChunk, op.length - off);
      UcxWorker::RmaSlot slot;
      slot.rec = rec;
      slot.generation = rec->generation;
      slot.route = key_;
      slot.local = reinterpret_cast<uint8_t*>(op.local_addr + off);
      slot.length = len;
      slot.is_read = is_read;
      uint64_t op_id = worker_->addRmaSlot(slot);
      if (rec->op_count == 0) rec->first_op = op_id;
      ++rec->op_count;
      RmaHeader& h = rec->rma_headers.emplace_back();
      h.token = token_;
      h.op_id = op_id;
      h.key_id = key.id;
      h.cookie = key.cookie;
      h.remote_addr = op.remote_addr + off;
      h.length = len;
      h.role = role_;
      unsent_.push_back({rec, rec->generation, static_cast<uint32_t>(rec->rma_headers.size() - 1),
                         op.local, reinterpret_cast<const void*>(op.local_addr + off), len,
                         is_read});
      ++rec->awaiting;
    }
  }
  pumpChunks();
  // Chunks not sent yet are this record's too: it is posted unless the first sends failed.
  bool posted_any = chunks > 0 && (rec->awaiting > 0 || rec->pending > 0);
  if (!posted_any && chunks > 0) {
    worker_->dropRmaSlots(rec);
    return finishPost(rec, false);
  }
  return finishPost(rec, posted_any);
}

void UcxEndpoint::pumpChunks() {
  while (chunks_in_flight_ < kCheckedWindow && !unsent_.empty() && ep_ != nullptr && !closed_) {
    UnsentChunk c = unsent_.front();
    unsent_.pop_front();
    OpRecord* rec = c.rec;
    bool ours = rec->generation == c.generation && !rec->user_done && rec->endpoint == this;
    if (!ours) continue;      // completed or failed meanwhile: its slots are gone
    if (!rec->status.ok()) {  // refused or failed: the rest of it is not sent
      if (rec->awaiting > 0) --rec->awaiting;
      if (rec->pending == 0 && rec->awaiting == 0) worker_->schedule(rec);
      continue;
    }
    RmaHeader& h = rec->rma_headers[c.index];
    ucp_request_param_t p = requestParam(rec, c.is_read ? nullptr : c.local);
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    // REPLY: the target learns which of its endpoints the request really came in on, so a
    // grant scoped to one connection cannot be used by naming its token on another.
    p.flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY;
    wireRelease();
    ucs_status_ptr_t ptr = c.is_read
                               ? ucp_am_send_nbx(ep_, kAmGet, &h, sizeof(h), nullptr, 0, &p)
                               : ucp_am_send_nbx(ep_, kAmPut, &h, sizeof(h), c.data, c.length, &p);
    if (!track(rec, ptr, c.is_read ? "ucp_am_send_nbx(get)" : "ucp_am_send_nbx(put)")) {
      if (rec->awaiting > 0) --rec->awaiting;  // no reply will come for it
      if (rec->pending == 0 && rec->awaiting == 0) worker_->schedule(rec);
      continue;
    }
    worker_->markRmaSent(h.op_id);
    ++chunks_in_flight_;
  }
}

void UcxEndpoint::chunkAnswered(bool pump) {
  if (chunks_in_flight_ > 0) --chunks_in_flight_;
  if (pump) pumpChunks();
}

void UcxEndpoint::postNotify(OpRecord* rec) {
  rec->header = AmHeader{};
  rec->header.token = token_;
  rec->header.value = rec->notify_value;
  rec->header.role = role_;
  ucp_request_param_t p = requestParam(rec, nullptr);
  wireRelease();
  track(rec, ucp_am_send_nbx(ep_, kAmNotify, &rec->header, sizeof(AmHeader), nullptr, 0, &p),
        "ucp_am_send_nbx(notify)");
}

// ---------------------------------------------------------------------------------------------
// Completion

void UcxEndpoint::advance(OpRecord* rec) {
  if (rec->kind == OpRecord::Kind::kFlush) {
    completeGroup(rec);
    return;
  }
  if (rec->own_flush) {  // its flush (and its puts) completed
    rec->own_flush = false;
    flushDone();
  }
  if (rec->phase == OpRecord::Phase::kVisible) return;  // pumpNotifies moves it on
  while (rec->pending == 0 && rec->awaiting == 0) {
    if (rec->kind == OpRecord::Kind::kWireup && rec->status.ok() && !closed_ &&
        state_ == EndpointState::kConnecting && role_ == 0 &&
        rec->phase == OpRecord::Phase::kFlush) {
      // Wired up: tell the passive side it may create its endpoint.
      rec->phase = OpRecord::Phase::kNotify;
      postHello(rec);
      continue;
    }
    if (rec->status.ok() && !closed_ && state_ != EndpointState::kBroken &&
        rec->kind == OpRecord::Kind::kWrite && rec->has_notify &&
        rec->phase == OpRecord::Phase::kFlush) {
      // The batch is visible at the target: the peer is told once the earlier notifies went.
      rec->phase = OpRecord::Phase::kVisible;
      pumpNotifies();
      return;
    }
    finish(rec);
    return;
  }
}

void UcxEndpoint::finish(OpRecord* rec) {
  unlink(rec);
  worker_->dropRmaSlots(rec);
  if (rec->kind == OpRecord::Kind::kWireup) {
    if (!closed_ && state_ == EndpointState::kConnecting) {
      if (rec->status.ok()) {
        state_ = EndpointState::kReady;
      } else {
        state_ = EndpointState::kBroken;
        error_ = Status(StatusCode::kConnectionRefused, rec->status.message())
                     .withContext("ucx: endpoint wireup failed");
      }
    }
    rec->user_done = true;
    rec->endpoint = nullptr;
    worker_->releaseIfIdle(rec);
    return;
  }
  Completion* done = rec->done;
  Status status = std::move(rec->status);
  if (!status.ok() && state_ == EndpointState::kBroken && !error_.ok() &&
      error_.code() == StatusCode::kConnectionBroken) {
    status = error_;  // the peer died: report that, not the request's own status
  }
  const bool had_notify = rec->kind == OpRecord::Kind::kWrite && rec->has_notify;
  rec->user_done = true;
  rec->endpoint = nullptr;
  worker_->releaseIfIdle(rec);
  // A write that failed before its notify went out no longer holds back the later ones.
  if (had_notify) pumpNotifies();
  done->complete(std::move(status));
}

std::vector<OrphanRef> UcxEndpoint::failAll(const Status& why) {
  std::vector<OrphanRef> orphans;
  // The group records are in the list below (no user completion; one whose flush is in flight
  // goes back to the pool when UCX calls back); their members fail on their own. No write is
  // posted on the endpoint after this (checkUsable), so the flush count is dropped too.
  open_group_ = nullptr;
  flushes_in_flight_ = 0;
  notify_order_.clear();
  while (head_ != nullptr) {
    OpRecord* rec = head_;
    unlink(rec);
    worker_->dropRmaSlots(rec);  // replies still to come are dropped
    Completion* done = rec->done;
    rec->endpoint = nullptr;
    if (done != nullptr && rec->pending != 0) {
      // UCX still holds requests that may touch the memory: the worker completes the record
      // with `why` once the last of them called back (UcxWorker::drainDeferred).
      rec->status = why;
      orphans.push_back({rec, rec->generation});
      continue;
    }
    rec->user_done = true;
    worker_->releaseIfIdle(rec);
    if (done != nullptr) done->complete(why);  // the wireup flush has no user completion
  }
  return orphans;
}

// ---------------------------------------------------------------------------------------------
// Receiving

void UcxEndpoint::receiveMessage(uint64_t seq, const uint8_t* data, size_t length) {
  if (closed_) return;
  if (seq == next_recv_seq_) {
    ++next_recv_seq_;
    events_->onMessage(data, length);
    if (!reorder_.empty()) drainReorder();
    return;
  }
  if (seq < next_recv_seq_) {
    LOG(WARNING) << "ucx: dropping duplicate message " << seq << " on connection " << token_;
    return;
  }
  BufferedMessage m;
  m.value = seq;
  m.data.assign(data, data + length);
  receiveOwned(std::move(m));
}

bool UcxEndpoint::holdInOrder(uint64_t seq, void* desc, size_t length) {
  if (closed_ || seq != next_recv_seq_) return false;
  ++next_recv_seq_;
  const uint64_t id = next_held_++;
  held_.emplace(id, HeldMessage{desc, length});
  // The core may fetch it at once (fetchHeld erases it again).
  if (!events_->onMessageHeld(id, length)) {
    held_.erase(id);
    --next_recv_seq_;  // nothing else was delivered meanwhile: it goes the buffered way
    return false;
  }
  if (!reorder_.empty()) drainReorder();
  return true;
}

Status UcxEndpoint::fetchHeld(uint64_t held, const ReceiveTarget& target) {
  auto it = held_.find(held);
  if (it == held_.end()) {
    return Status(StatusCode::kInternal, "ucx: no held message " + std::to_string(held));
  }
  HeldMessage m = it->second;
  held_.erase(it);
  if (m.length > target.capacity) {
    ucp_am_data_release(worker_->worker(), m.desc);
    return Status(StatusCode::kInternal, "ucx: a held message is larger than its buffer");
  }
  return worker_->receiveInto(m.desc, m.length, target);
}

void UcxEndpoint::receiveOwned(BufferedMessage message) {
  if (closed_) return;
  if (message.value < next_recv_seq_) {
    LOG(WARNING) << "ucx: dropping duplicate message " << message.value << " on connection "
                 << token_;
    return;
  }
  uint64_t seq = message.value;
  if (seq != next_recv_seq_ &&
      (seq - next_recv_seq_ >= kMaxReorderSpan || reorder_.size() >= kMaxReorderCount ||
       reorder_bytes_ + message.data.size() > kMaxReorderBytes)) {
    protocolViolation("message sequence number " + std::to_string(seq) + " while expecting " +
                      std::to_string(next_recv_seq_) + " with " + std::to_string(reorder_.size()) +
                      " messages held: outside the reorder window");
    return;
  }
  size_t bytes = message.data.size();
  if (reorder_.emplace(seq, std::move(message)).second) reorder_bytes_ += bytes;
  drainReorder();
}

void UcxEndpoint::drainReorder() {
  while (!closed_) {
    auto it = reorder_.find(next_recv_seq_);
    if (it == reorder_.end()) return;
    auto node = reorder_.extract(it);
    reorder_bytes_ -= node.mapped().data.size();
    ++next_recv_seq_;
    if (!node.mapped().hole)
      events_->onMessage(node.mapped().data.data(), node.mapped().data.size());
  }
}

void UcxEndpoint::receiveNotify(uint32_t value) {
  if (closed_) return;
  events_->onNotify(value);
}

void UcxEndpoint::deliverBuffered() {
  std::vector<uint32_t> notifies = std::move(early_notifies_);
  early_notifies_.clear();
  for (uint32_t v : notifies) {
    if (closed_) return;
    events_->onNotify(v);
  }
  drainReorder();
}

// ---------------------------------------------------------------------------------------------
// Failure and close

void UcxEndpoint::markBroken(ucs_status_t status) {
  if (closed_) return;
  state_ = EndpointState::kBroken;
  if (error_.ok()) {
    error_ = Status(StatusCode::kConnectionBroken,
                    std::string("ucx peer failure (err_handler): ") + ucs_status_string(status));
  }
}

void UcxEndpoint::protocolViolation(const std::string& what) {
  failFromCallback(Status(StatusCode::kProtocolError, "peer protocol violation: " + what));
}

void UcxEndpoint::failFromCallback(Status why) {
  if (closed_ || state_ == EndpointState::kBroken) return;
  LOG(WARNING) << "ucx: connection " << token_ << ": " << why.toString();
  state_ = EndpointState::kBroken;
  error_ = std::move(why);
  worker_->scheduleBroken(key_);
}

void UcxEndpoint::reportBroken() {
  if (closed_ || broken_reported_) return;
  broken_reported_ = true;
  Status why = error_;
  std::vector<OrphanRef> held = failAll(why);
  orphans_.insert(orphans_.end(), held.begin(), held.end());  // released when the ep is closed
  if (!closed_) events_->onError(why);
}

void UcxEndpoint::close(Status why) {
  if (closed_) return;
  closed_ = true;
  Status reason = why.ok() ? Status(StatusCode::kCancelled, "ucx endpoint closed") : why;
  if (error_.ok()) error_ = reason;
  // Only a close both sides agree on (kCancelled: local close, or the peer's BYE) can flush: a
  // peer that died, broke or stopped answering would never let a flush-mode close finish.
  bool healthy = state_ == EndpointState::kReady && why.code() == StatusCode::kCancelled;
  state_ = EndpointState::kBroken;
  worker_->removeEndpoint(key_);
  reorder_.clear();
  reorder_bytes_ = 0;
  // Messages the core never fetched: UCX lets the sender's rendezvous go (before the ep closes).
  for (auto& [id, m] : held_) ucp_am_data_release(worker_->worker(), m.desc);
  held_.clear();
  early_notifies_.clear();
  unsent_.clear();

  std::vector<OrphanRef> orphans = failAll(reason);
  orphans.insert(orphans.end(), orphans_.begin(), orphans_.end());
  orphans_.clear();

  if (ep_ != nullptr) {
    // A healthy endpoint is flushed first (bounded): UCX sends what it queued (posted RMA data,
    // wireup replies), so the UCT endpoints are quiet when they are torn down. If the flush
    // finished, the close runs in flush mode (it also tells the peer); if the peer is too slow,
    // or the endpoint is broken (the peer cannot answer), it is force-closed.
    bool flushed = healthy && worker_->flushBounded(ep_, kCloseFlushLimit);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = flushed ? 0 : UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep_, &p);
    ep_ = nullptr;
    if (UCS_PTR_IS_PTR(req)) {
      worker_->finishClose(req, std::move(orphans));
    } else {
      if (UCS_PTR_IS_ERR(req)) {
        LOG(WARNING) << "ucp_ep_close_nbx: " << ucs_status_string(UCS_PTR_STATUS(req));
      }
      worker_->releaseOrphans(orphans);  // closed at once: UCX is done with the ep
    }
  }
  // After the ep is gone: destroy the unpacked keys (the core may destroy its RemoteKey objects
  // later; they are detached and do nothing then).
  for (UcxRemoteKey* key : keys_) key->release();
  keys_.clear();
}

}  // namespace zcx::transport::ucx

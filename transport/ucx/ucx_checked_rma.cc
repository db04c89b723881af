// Checked RMA: remote writes and reads as active messages that the target checks against its own
// access table before touching memory (see ucx_access_table.h for why). The initiator posts one
// kAmPut (header + data) or kAmGet (header) per op and counts the replies; the target answers
// each with kAmRmaReply: a refusal, or done (a put's data is in its memory), with a read's data.
// Data moves in eager messages of at most 128 KiB (UcxEndpoint::postChecked), copied once out of
// UCX's receive buffer inside the callback, so no receive into user memory outlives a callback.
#include <glog/logging.h>

#include <cstring>

#include "ucx/ucx_endpoint.h"
#include "ucx/ucx_status.h"
#include "ucx/ucx_wire_sync.h"
#include "ucx/ucx_worker.h"

namespace zcx::transport::ucx {
namespace {

// Replies held for a passive endpoint that has not created its ucp_ep yet (bounded: a peer
// has no business sending more before the connection is up).
constexpr size_t kMaxHeldReplies = 1024;

template <typename H>
bool parseRma(const void* header, size_t header_length, H* out) {
  if (header == nullptr || header_length != sizeof(H)) return false;
  std::memcpy(out, header, sizeof(H));
  return out->version == kWireVersion && out->role <= 1;
}

std::string hexAddress(uint64_t a) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(a));
  return buf;
}

}  // namespace

void UcxWorker::sendHeldReplies(RouteKey route) {
  auto it = held_replies_.find(route);
  if (it == held_replies_.end()) return;
  std::vector<HeldReply> held = std::move(it->second);
  held_replies_.erase(it);
  for (HeldReply& r : held)
    sendRmaReply(route, r.op_id, r.refusal, r.data, r.length, r.memh, std::move(r.guard));
}

uint64_t UcxWorker::addRmaSlot(const RmaSlot& slot) {
  uint64_t id = next_op_id_++;
  rma_ops_.emplace(id, slot);
  return id;
}

void UcxWorker::markRmaSent(uint64_t op_id) {
  auto it = rma_ops_.find(op_id);
  if (it != rma_ops_.end()) it->second.sent = true;
}

void UcxWorker::dropRmaSlots(OpRecord* rec) {
  for (uint32_t i = 0; i < rec->op_count; ++i) {
    auto it = rma_ops_.find(rec->first_op + i);
    if (it == rma_ops_.end()) continue;
    if (it->second.sent) {
      if (UcxEndpoint* ep = find(it->second.route)) ep->chunkAnswered(/*pump=*/false);
    }
    rma_ops_.erase(it);
  }
  rec->op_count = 0;
  rec->awaiting = 0;
}

void UcxWorker::noteRefusal(const char* what, const RmaHeader& h, AccessRefusal refusal) {
  LOG_EVERY_N(WARNING, 100) << "ucx: refused a remote " << what << " of " << h.length
                            << " bytes at " << hexAddress(h.remote_addr) << " (key " << h.key_id
                            << ") from connection " << h.token << ": " << refusalText(refusal)
                            << " [" << google::COUNTER << " so far]";
}

// --------------------------------------------------------------------------------- target side

namespace {

/// Whether the request came in on `ep`'s own UCP endpoint (the header's token is the peer's
/// claim; UCX's reply endpoint is where the bytes actually arrived).
bool arrivedOn(UcxEndpoint* ep, const ucp_am_recv_param_t* param) {
  return (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) != 0 && ep->ucpEp() != nullptr &&
         param->reply_ep == ep->ucpEp();
}

}  // namespace

ucs_status_t UcxWorker::onAmPut(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) try {
  wireAcquire();
  auto* self = static_cast<UcxWorker*>(arg);
  RmaHeader h;
  if (!parseRma(header, header_length, &h)) {
    LOG(WARNING) << "ucx: dropping a remote write with a malformed header";
    return UCS_OK;  // a rendezvous is released without receiving it
  }
  RouteKey route{h.token, static_cast<uint8_t>(h.role ^ 1)};
  UcxEndpoint* ep = self->find(route);
  if (ep == nullptr) {
    VLOG(1) << "ucx: dropping a remote write for unknown or closed connection " << h.token;
    return UCS_OK;
  }
  // Our writes are eager (whole chunk in this callback); a rendezvous would leave a receive into
  // user memory in flight that UCX 1.13 cannot cancel. Refused, and UCX drops its data.
  if (length != h.length || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    self->noteRefusal("write", h, AccessRefusal::kMalformed);
    self->sendRmaReply(route, h.op_id, AccessRefusal::kMalformed, nullptr, 0, nullptr, {});
    return UCS_OK;
  }
  auto c = self->access_.check(h.key_id, h.cookie, h.remote_addr, h.length, kAccessRemoteWrite,
                               route.first, route.second, arrivedOn(ep, param));
  if (c.refusal != AccessRefusal::kNone) {
    self->noteRefusal("write", h, c.refusal);
    self->sendRmaReply(route, h.op_id, c.refusal, nullptr, 0, nullptr, {});
    return UCS_OK;
  }
  std::memcpy(c.ptr, data, length);  // the guard keeps revocation waiting until this is done
  c.guard.release();
  self->sendRmaReply(route, h.op_id, AccessRefusal::kNone, nullptr, 0, nullptr, {});
  return UCS_OK;
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames; the initiator's op fails at its deadline.
  LOG(ERROR) << "ucx: remote write handler: " << e.what();
  return UCS_OK;
}

ucs_status_t UcxWorker::onAmGet(void* arg, const void* header, size_t header_length, void* /*data*/,
                                size_t length, const ucp_am_recv_param_t* param) try {
  wireAcquire();
  auto* self = static_cast<UcxWorker*>(arg);
  RmaHeader h;
  if (!parseRma(header, header_length, &h)) {
    LOG(WARNING) << "ucx: dropping a remote read with a malformed header";
    return UCS_OK;
  }
  RouteKey route{h.token, static_cast<uint8_t>(h.role ^ 1)};
  UcxEndpoint* ep = self->find(route);
  if (ep == nullptr) {
    VLOG(1) << "ucx: dropping a remote read for unknown or closed connection " << h.token;
    return UCS_OK;
  }
  if (length != 0) {
    self->noteRefusal("read", h, AccessRefusal::kMalformed);
    self->sendRmaReply(route, h.op_id, AccessRefusal::kMalformed, nullptr, 0, nullptr, {});
    return UCS_OK;
  }
  auto c = self->access_.check(h.key_id, h.cookie, h.remote_addr, h.length, kAccessRemoteRead,
                               route.first, route.second, arrivedOn(ep, param));
  if (c.refusal != AccessRefusal::kNone) {
    self->noteRefusal("read", h, c.refusal);
    self->sendRmaReply(route, h.op_id, c.refusal, nullptr, 0, nullptr, {});
    return UCS_OK;
  }
  self->sendRmaReply(route, h.op_id, AccessRefusal::kNone, c.ptr, h.length, c.memh,
                     std::move(c.guard));
  return UCS_OK;
} catch (const std::exception& e) {
  LOG(ERROR) << "ucx: remote read handler: " << e.what();
  return UCS_OK;
}

void UcxWorker::sendRmaReply(RouteKey route, uint64_t op_id, AccessRefusal refusal,
                             const uint8_t* data, size_t length, ucp_mem_h memh,
                             AccessGuard guard) {
  UcxEndpoint* ep = find(route);
  if (ep == nullptr) return;  // closed meanwhile: nobody to answer
  if (ep->ucpEp() == nullptr) {
    // The passive side creates its ucp_ep once the peer's hello is handled (drainDeferred), and
    // the peer's first accesses can be in the same progress round: hold the reply until then.
    auto& held = held_replies_[route];
    if (held.size() >= kMaxHeldReplies) {
      LOG(WARNING) << "ucx: connection " << route.first << " sent " << held.size()
                   << " remote accesses before it was connected; dropping the reply to op "
                   << op_id;
      return;
    }
    held.push_back({op_id, refusal, data, length, memh, std::move(guard)});
    return;
  }
  auto* r = new ReplySend{this, RmaReplyHeader{}, std::move(guard)};
  r->header.token = route.first;
  r->header.op_id = op_id;
  r->header.role = route.second;  // our role on this connection
  r->header.refusal = static_cast<uint8_t>(refusal);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &onReplySent;
  p.user_data = r;
  if (memh != nullptr && length > 0) {
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    p.memh = memh;
  }
  p.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = UCP_AM_SEND_FLAG_EAGER;  // the initiator takes the data in its callback (see put)
  wireRelease();
  ucs_status_ptr_t ptr =
      ucp_am_send_nbx(ep->ucpEp(), kAmRmaReply, &r->header, sizeof(r->header), data, length, &p);
  if (UCS_PTR_IS_PTR(ptr)) {
    replies_.insert(r);
    return;
  }
  if (UCS_PTR_IS_ERR(ptr)) {
    VLOG(1) << "ucx: cannot answer op " << op_id << " of connection " << route.first << ": "
            << ucs_status_string(UCS_PTR_STATUS(ptr));
  }
  delete r;
}

void UcxWorker::onReplySent(void* request, ucs_status_t /*status*/, void* user_data) try {
  auto* r = static_cast<ReplySend*>(user_data);
  ucp_request_free(request);
  r->worker->replies_.erase(r);
  delete r;  // releases the guard: the read's data has left our memory
} catch (const std::exception& e) {
  LOG(ERROR) << "ucx: reply completion: " << e.what();
}

// ------------------------------------------------------------------------------ initiator side

ucs_status_t UcxWorker::onAmRmaReply(void* arg, const void* header, size_t header_length,
                                     void* data, size_t length,
                                     const ucp_am_recv_param_t* param) try {
  wireAcquire();
  auto* self = static_cast<UcxWorker*>(arg);
  RmaReplyHeader h;
  if (!parseRma(header, header_length, &h)) {
    LOG(WARNING) << "ucx: dropping a malformed remote-access reply";
    return UCS_OK;
  }
  auto it = self->rma_ops_.find(h.op_id);
  RouteKey from{h.token, static_cast<uint8_t>(h.role ^ 1)};
  if (it == self->rma_ops_.end()) {
    VLOG(1) << "ucx: dropping a reply for op " << h.op_id << " (completed or failed already)";
    return UCS_OK;
  }
  if (it->second.route != from) {
    // Not the connection the op was posted on: a confused or hostile peer. The op itself goes
    // on waiting for its own target's reply (or its deadline).
    LOG(WARNING) << "ucx: dropping a reply for op " << h.op_id << " from connection " << h.token
                 << ", which did not post it";
    return UCS_OK;
  }
  RmaSlot slot = it->second;
  self->rma_ops_.erase(it);
  // The window: this chunk is answered; more of the waiting ones go once the record is updated.
  UcxEndpoint* from_ep = self->find(from);
  if (from_ep != nullptr && slot.sent) from_ep->chunkAnswered(/*pump=*/false);
  struct Pump {
    UcxEndpoint* ep;
    ~Pump() {
      if (ep != nullptr) ep->pumpAfterReply();
    }
  } pump{slot.sent ? from_ep : nullptr};
  OpRecord* rec = slot.rec;
  if (rec->generation != slot.generation || rec->user_done || rec->awaiting == 0) return UCS_OK;
  --rec->awaiting;
  bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  auto refusal = static_cast<AccessRefusal>(h.refusal);
  if (refusal != AccessRefusal::kNone) {
    if (rec->status.ok()) {
      rec->status = Status(
          StatusCode::kRemoteAccessError,
          std::string("the target refused the remote ") + (slot.is_read ? "read" : "write") +
              " of " + std::to_string(slot.length) + " bytes: " +
              (h.refusal <= static_cast<uint8_t>(AccessRefusal::kInternal) ? refusalText(refusal)
                                                                           : "unknown reason"));
    }
  } else if (slot.is_read) {
    if (length != slot.length) {
      if (rec->status.ok()) {
        rec->status = Status(StatusCode::kProtocolError,
                             "the target answered a read of " + std::to_string(slot.length) +
                                 " bytes with " + std::to_string(length));
      }
    } else if (rndv) {
      if (rec->status.ok()) {
        rec->status = Status(StatusCode::kProtocolError,
                             "the target answered a read with a rendezvous (checked reads are "
                             "eager)");
      }
    } else {
      std::memcpy(slot.local, data, length);
    }
  } else if (length != 0 && rec->status.ok()) {
    rec->status = Status(StatusCode::kProtocolError, "the target answered a write with data");
  }
  if (rec->pending == 0 && rec->awaiting == 0) self->schedule(rec);
  return UCS_OK;
} catch (const std::exception& e) {
  LOG(ERROR) << "ucx: remote-access reply handler: " << e.what();
  return UCS_OK;
}

}  // namespace zcx::transport::ucx

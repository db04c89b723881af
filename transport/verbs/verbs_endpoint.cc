#include "verbs/verbs_endpoint.h"
#include "verbs/verbs_status.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <net/if.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "verbs/verbs_device.h"
#include "verbs/verbs_rails_wire.h"
#include "verbs/verbs_transport.h"

namespace zcx::transport::verbs {
namespace {

// wr_id: [63..32] endpoint serial | [31] recv | recv: [30..0] ring index
//                                             | send: [30] last WR of its op, [28..20] slot
//                                               generation, [19..0] slot
constexpr uint64_t kRecvBit = uint64_t{1} << 31;
constexpr uint64_t kLastBit = uint64_t{1} << 30;
constexpr uint32_t kSlotBits = 20;
constexpr uint32_t kMaxSlots = uint32_t{1} << kSlotBits;
constexpr uint16_t kGenMask = 0x1ff;
constexpr int kResolveTimeoutMs = 5000;
/// Low bits of the drain marker's wr_id: bit 29 is set, which sendWrId() never sets (gen is 9
/// bits, [28..20]), so it matches no op and no receive.
constexpr uint64_t kDrainMarker = (kLastBit - 1);
constexpr auto kDrainLimit = std::chrono::milliseconds(100);

uint64_t sendWrId(uint32_t serial, uint32_t slot, uint16_t gen, bool last) {
  return (uint64_t{serial} << 32) | (last ? kLastBit : 0) |
         (static_cast<uint64_t>(gen & kGenMask) << kSlotBits) | slot;
}

const char* cmEventName(rdma_cm_event_type t) { return rdma_event_str(t); }

}  // namespace

VerbsEndpoint::VerbsEndpoint(VerbsTransport* transport, uint32_t serial, const EndpointSetup& setup,
                             size_t max_message_size)
    : transport_(transport),
      serial_(serial),
      role_(setup.role),
      token_(setup.token),
      max_message_size_(max_message_size),
      events_(setup.events) {}

VerbsEndpoint::~VerbsEndpoint() {
  close(Status(StatusCode::kCancelled, "the endpoint was destroyed"));
  *alive_ = false;
}

void VerbsEndpoint::detach(Status why) {
  close(std::move(why));
  transport_ = nullptr;
}

Status VerbsEndpoint::checkUsable() const {
  if (state_ == EndpointState::kBroken) {
    return Status(error_.code() == StatusCode::kOk ? StatusCode::kConnectionBroken : error_.code(),
                  "verbs endpoint is broken: " + error_.message());
  }
  return Status();
}

Result<std::unique_ptr<RemoteKey>> VerbsEndpoint::importKey(std::span<const uint8_t> packed_key) {
  auto r = unpackKey(firstRail(packed_key));  // a multi-rail peer's key: rail 0's part
  if (!r.ok()) return r.status();
  return std::unique_ptr<RemoteKey>(std::move(*r));
}

// ------------------------------------------------------------------ connection setup

Status VerbsEndpoint::startActive(const CmAddress& peer) {
  rdma_cm_id* raw = nullptr;
  if (rdma_create_id(transport_->eventChannel(), &raw, reinterpret_cast<void*>(uintptr_t{serial_}),
                     RDMA_PS_TCP) != 0) {
    return Status(StatusCode::kUnavailable, "rdma_create_id failed (" + errnoText(errno) + ")");
  }
  id_.reset(raw);
  // From our GID's address when the peer's is of the same family; otherwise rdma_cm picks the
  // source by routing (createQp refuses a route through another device).
  const CmAddress& local = transport_->localIp();
  CmAddress src = local;
  CmAddress dst = peer;
  if (dst.isLinkLocal()) {
    // A peer's link-local address is reached through our netdev; its scope id is ours.
    dst.setScopeId(local.family() == AF_INET6 && local.scopeId() != 0
                       ? local.scopeId()
                       : if_nametoindex(transport_->device().netdev.c_str()));
  }
  const bool same_family = src.family() == dst.family();
  if (!same_family) {
    VLOG(1) << "verbs: peer " << dst.toString() << " is " << dst.familyName()
            << ", this side's GID " << local.familyName() << ": rdma_cm chooses the source address";
  }
  if (rdma_resolve_addr(id_.get(), same_family ? src.get() : nullptr, dst.get(),
                        kResolveTimeoutMs) != 0) {
    const int err = errno;
    id_.reset();
    return Status(StatusCode::kConnectionRefused,
                  "rdma_resolve_addr " + (same_family ? local.host() : std::string("(any)")) +
                      " -> " + dst.toString() + " failed (" + errnoText(err) + ")");
  }
  return Status();
}

Status VerbsEndpoint::createQp(rdma_cm_id* id) {
  const DeviceChoice& dev = transport_->device();
  if (id->verbs != dev.context) {
    return Status(StatusCode::kUnavailable,
                  std::string("the peer is reached through RDMA device ") +
                      (id->verbs ? ibv_get_device_name(id->verbs->device) : "(none)") + ", not " +
                      dev.name + " which this transport uses");
  }
  const auto max_wr = static_cast<uint32_t>(std::max(dev.device_attr.max_qp_wr, 16));
  sq_depth_ = std::min(transport_->options().sq_depth, max_wr);
  slot_size_ = (std::max<size_t>(max_message_size_, 64) + 63) / 64 * 64;
  recv_depth_ = transport_->options().recv_depth;
  if (recv_depth_ == 0) {
    recv_depth_ =
        static_cast<uint32_t>(std::clamp<size_t>((size_t{16} << 20) / slot_size_, 16, 128));
  }
  recv_depth_ = std::min(recv_depth_, max_wr);

  auto ring = VerbsMemory::allocate(transport_->pd(), slot_size_ * recv_depth_, kAccessLocal,
                                    dev.device_attr.max_mr_size);
  if (!ring.ok()) return ring.status().withContext("receive ring");
  recv_ring_ = std::move(*ring);

  ZCX_RETURN_IF_ERROR(transport_->reserveCq(sq_depth_ + recv_depth_));
  cq_entries_ = sq_depth_ + recv_depth_;

  int rc = -1;
  int err = 0;
  ibv_qp_init_attr attr{};
  for (uint32_t inline_try : {uint32_t{128}, uint32_t{64}, uint32_t{0}}) {
    attr = {};
    attr.send_cq = transport_->cq();
    attr.recv_cq = transport_->cq();
    attr.qp_type = IBV_QPT_RC;
    attr.sq_sig_all = 0;
    attr.cap.max_send_wr = sq_depth_;
    attr.cap.max_recv_wr = recv_depth_;
    attr.cap.max_send_sge = 1;
    attr.cap.max_recv_sge = 1;
    attr.cap.max_inline_data = inline_try;
    rc = rdma_create_qp(id, transport_->pd(), &attr);
    if (rc == 0) break;
    err = errno;
  }
  if (rc != 0) {
    return Status(err == ENOMEM ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                  "rdma_create_qp (send " + std::to_string(sq_depth_) + ", recv " +
                      std::to_string(recv_depth_) + ") failed (" + errnoText(err) + ")");
  }
  qp_ = id->qp;
  transport_->registerQp(qp_->qp_num, serial_);
  qp_registered_ = true;
  sq_depth_ = std::min(sq_depth_, attr.cap.max_send_wr);
  max_inline_ = attr.cap.max_inline_data;
  signal_interval_ = std::max<uint32_t>(1, sq_depth_ / 4);
  max_wr_bytes_ = dev.port_attr.max_msg_sz != 0 ? dev.port_attr.max_msg_sz : (uint64_t{1} << 30);
  read_limit_ = std::max<uint32_t>(1, std::min<uint32_t>(dev.device_attr.max_qp_init_rd_atom, 255));
  for (uint32_t i = 0; i < recv_depth_; ++i) ZCX_RETURN_IF_ERROR(postRecv(i));
  return Status();
}

Status VerbsEndpoint::postRecv(uint32_t index) {
  ibv_sge sge{};
  sge.addr = reinterpret_cast<uintptr_t>(recv_ring_->address()) + uint64_t{index} * slot_size_;
  sge.length = static_cast<uint32_t>(slot_size_);
  sge.lkey = recv_ring_->lkey();
  ibv_recv_wr wr{};
  wr.wr_id = (uint64_t{serial_} << 32) | kRecvBit | index;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  if (int rc = ibv_post_recv(qp_, &wr, &bad); rc != 0) {
    return Status(StatusCode::kConnectionBroken, "ibv_post_recv failed (" + errnoText(rc) + ")");
  }
  return Status();
}

void VerbsEndpoint::accept(CmIdPtr id, const ConnectData& data, uint8_t initiator_depth,
                           uint8_t responder_resources) {
  id_ = std::move(id);
  id_->context = reinterpret_cast<void*>(uintptr_t{serial_});
  if (data.max_message_size > max_message_size_) {
    rdma_reject(id_.get(), nullptr, 0);
    breakConnection(Status(StatusCode::kProtocolError,
                           "peer may send messages of " + std::to_string(data.max_message_size) +
                               " bytes, more than this side's max_message_size " +
                               std::to_string(max_message_size_)));
    return;
  }
  if (Status s = createQp(id_.get()); !s.ok()) {
    rdma_reject(id_.get(), nullptr, 0);
    breakConnection(s.withContext("accepting the rdma_cm connection"));
    return;
  }
  const ibv_device_attr& a = transport_->device().device_attr;
  rdma_conn_param param{};
  std::vector<uint8_t> pdata = packConnectData({token_, static_cast<uint32_t>(max_message_size_)});
  param.private_data = pdata.data();
  param.private_data_len = static_cast<uint8_t>(pdata.size());
  param.responder_resources =
      static_cast<uint8_t>(std::min({a.max_qp_rd_atom, int{initiator_depth}, 255}));
  param.initiator_depth =
      static_cast<uint8_t>(std::min({a.max_qp_init_rd_atom, int{responder_resources}, 255}));
  param.retry_count = transport_->options().retry_count;
  param.rnr_retry_count = 7;
  param.flow_control = 1;
  read_limit_ = std::max<uint32_t>(1, param.initiator_depth);
  if (rdma_accept(id_.get(), &param) != 0) {
    breakConnection(
        Status(StatusCode::kConnectionBroken, "rdma_accept failed (" + errnoText(errno) + ")"));
    return;
  }
  qp_connected_ = true;
}

void VerbsEndpoint::onCmEvent(rdma_cm_event_type type, int status,
                              const std::vector<uint8_t>& private_data) {
  if (state_ == EndpointState::kBroken) return;
  switch (type) {
    case RDMA_CM_EVENT_ADDR_RESOLVED:
      if (rdma_resolve_route(id_.get(), kResolveTimeoutMs) != 0) {
        breakConnection(Status(StatusCode::kConnectionRefused,
                               "rdma_resolve_route failed (" + errnoText(errno) + ")"));
      }
      return;
    case RDMA_CM_EVENT_ROUTE_RESOLVED: {
      if (Status s = createQp(id_.get()); !s.ok()) {
        breakConnection(s.withContext("connecting"));
        return;
      }
      const ibv_device_attr& a = transport_->device().device_attr;
      std::vector<uint8_t> pdata =
          packConnectData({token_, static_cast<uint32_t>(max_message_size_)});
      rdma_conn_param param{};
      param.private_data = pdata.data();
      param.private_data_len = static_cast<uint8_t>(pdata.size());
      param.responder_resources = static_cast<uint8_t>(std::min(a.max_qp_rd_atom, 255));
      param.initiator_depth = static_cast<uint8_t>(std::min(a.max_qp_init_rd_atom, 255));
      param.retry_count = transport_->options().retry_count;
      param.rnr_retry_count = 7;
      param.flow_control = 1;
      if (rdma_connect(id_.get(), &param) != 0) {
        breakConnection(Status(StatusCode::kConnectionRefused,
                               "rdma_connect failed (" + errnoText(errno) + ")"));
        return;
      }
      qp_connected_ = true;
      return;
    }
    case RDMA_CM_EVENT_ESTABLISHED: {
      if (role_ == Role::kActive && !private_data.empty()) {
        auto d = unpackConnectData(private_data.data(), private_data.size());
        if (!d.ok() || d->token != token_) {
          breakConnection(d.ok() ? Status(StatusCode::kProtocolError,
                                          "the peer accepted with another connection token")
                                 : d.status());
          return;
        }
        if (d->max_message_size > max_message_size_) {
          breakConnection(Status(StatusCode::kProtocolError,
                                 "peer may send messages of " +
                                     std::to_string(d->max_message_size) +
                                     " bytes, more than this side's max_message_size " +
                                     std::to_string(max_message_size_)));
          return;
        }
      }
      // What the connection really got: the READ depth, and a short RNR timer (the default
      // 0 means 655 ms per RNR NAK when our receive ring runs dry).
      ibv_qp_attr qa{};
      ibv_qp_init_attr qia{};
      if (ibv_query_qp(qp_, &qa, IBV_QP_MAX_QP_RD_ATOMIC, &qia) == 0 && qa.max_rd_atomic > 0) {
        read_limit_ = qa.max_rd_atomic;
      }
      ibv_qp_attr rnr{};
      rnr.min_rnr_timer = 1;  // 0.01 ms
      if (int rc = ibv_modify_qp(qp_, &rnr, IBV_QP_MIN_RNR_TIMER); rc != 0) {
        VLOG(1) << "verbs: cannot shorten min_rnr_timer (" << errnoText(rc) << "); keeping default";
      }
      state_ = EndpointState::kReady;
      qp_used_ = true;
      return;
    }
    case RDMA_CM_EVENT_REJECTED:
      breakConnection(
          Status(StatusCode::kConnectionRefused,
                 "the peer rejected the rdma_cm connection (reason " + std::to_string(status) +
                     (status == 8 ? ": nobody listens at that address and port" : "") + ")"));
      return;
    case RDMA_CM_EVENT_ADDR_ERROR:
    case RDMA_CM_EVENT_ROUTE_ERROR:
    case RDMA_CM_EVENT_UNREACHABLE:
    case RDMA_CM_EVENT_CONNECT_ERROR:
      breakConnection(Status(type == RDMA_CM_EVENT_CONNECT_ERROR ? StatusCode::kConnectionBroken
                                                                 : StatusCode::kConnectionRefused,
                             std::string("rdma_cm ") + cmEventName(type) + " (status " +
                                 std::to_string(status) + ": " + std::strerror(std::abs(status)) +
                                 ")"));
      return;
    case RDMA_CM_EVENT_DISCONNECTED:
      breakConnection(Status(StatusCode::kConnectionBroken, "the peer disconnected"));
      return;
    case RDMA_CM_EVENT_DEVICE_REMOVAL:
    case RDMA_CM_EVENT_ADDR_CHANGE:
      breakConnection(
          Status(StatusCode::kConnectionBroken, std::string("rdma_cm ") + cmEventName(type)));
      return;
    default: VLOG(1) << "verbs: ignoring rdma_cm event " << cmEventName(type); return;
  }
}

// ------------------------------------------------------------------ posting

Result<uint32_t> VerbsEndpoint::allocSlot(Completion* done, const char* kind) {
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    if (slots_.size() >= kMaxSlots) {
      return Status(StatusCode::kResourceExhausted,
                    "too many outstanding operations on one verbs endpoint");
    }
    slot = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  OpSlot& s = slots_[slot];
  s.done = done;
  s.active = true;
  s.kind = kind;
  return slot;
}

void VerbsEndpoint::releaseSlot(uint32_t slot) {
  OpSlot& s = slots_[slot];
  s.active = false;
  s.done = nullptr;
  s.gen = static_cast<uint16_t>((s.gen + 1) & kGenMask);
  free_slots_.push_back(slot);
}

Status VerbsEndpoint::queueRma(std::span<const RmaOp> ops, bool is_read,
                               std::optional<uint32_t> notify, Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (done == nullptr) return Status(StatusCode::kInvalidArgument, "no completion given");
  const char* kind = is_read ? "RDMA READ" : (notify ? "RDMA WRITE with notify" : "RDMA WRITE");
  // Validate everything first: nothing may be queued if we return an error.
  size_t nonzero = 0;
  for (const RmaOp& op : ops) {
    if (op.length == 0) continue;
    if (op.local == nullptr || op.remote == nullptr) {
      return Status(StatusCode::kInvalidArgument, std::string(kind) + ": op without memory or key");
    }
    ++nonzero;
  }
  auto slot_r = allocSlot(done, kind);
  if (!slot_r.ok()) return slot_r.status();
  const uint32_t slot = *slot_r;
  const uint16_t gen = slots_[slot].gen;

  const size_t first_new = pending_.size();
  for (const RmaOp& op : ops) {
    if (op.length == 0) continue;
    auto* mem = static_cast<VerbsMemory*>(op.local);
    auto* key = static_cast<VerbsRemoteKey*>(op.remote);
    for (uint64_t off = 0; off < op.length; off += max_wr_bytes_) {
      const uint64_t len = std::min<uint64_t>(max_wr_bytes_, op.length - off);
      PendingWr p;
      p.sge.addr = op.local_addr + off;
      p.sge.length = static_cast<uint32_t>(len);
      p.sge.lkey = mem->lkey();
      p.wr.opcode = is_read ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE;
      p.wr.num_sge = 1;
      p.wr.wr.rdma.remote_addr = op.remote_addr + off;
      p.wr.wr.rdma.rkey = key->rkey();
      p.wr.wr_id = sendWrId(serial_, slot, gen, false);
      p.slot = slot;
      p.is_read = is_read;
      pending_.push_back(p);
    }
  }
  if (notify) {
    if (nonzero > 0) {
      PendingWr& last = pending_.back();
      last.wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
      last.wr.imm_data = htonl(*notify);
    } else {
      // Nothing to write: a zero-length SEND with immediate carries the notification.
      PendingWr p;
      p.wr.opcode = IBV_WR_SEND_WITH_IMM;
      p.wr.num_sge = 0;
      p.wr.imm_data = htonl(*notify);
      p.slot = slot;
      pending_.push_back(p);
    }
  }
  if (pending_.size() == first_new) {
    // Only zero-length ops: done without touching memory, reported from progress().
    releaseSlot(slot);
    deferred_.emplace_back(done, Status());
    return Status();
  }
  PendingWr& last = pending_.back();
  last.last_of_op = true;
  last.wr.wr_id = sendWrId(serial_, slot, gen, true);
  flushPending();
  return Status();
}

Status VerbsEndpoint::postWrite(std::span<const RmaOp> ops, std::optional<uint32_t> notify,
                                Completion* done) {
  return queueRma(ops, false, notify, done);
}

Status VerbsEndpoint::postRead(std::span<const RmaOp> ops, Completion* done) {
  return queueRma(ops, true, std::nullopt, done);
}

Status VerbsEndpoint::postSend(MemoryHandle* local, uint64_t local_addr, size_t length,
                               Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (done == nullptr) return Status(StatusCode::kInvalidArgument, "no completion given");
  if (length > max_message_size_) {
    return Status(StatusCode::kOutOfRange,
                  "message of " + std::to_string(length) +
                      " bytes is larger than the endpoint's max_message_size (" +
                      std::to_string(max_message_size_) + " bytes)");
  }
  if (length > 0 && local == nullptr) {
    return Status(StatusCode::kInvalidArgument, "send without memory");
  }
  PendingWr p;
  p.wr.opcode = IBV_WR_SEND;
  if (length > 0) {
    p.sge.addr = local_addr;
    p.sge.length = static_cast<uint32_t>(length);
    p.sge.lkey = static_cast<VerbsMemory*>(local)->lkey();
    p.wr.num_sge = 1;
  }
  return queueSingleWr(p, done, "SEND");
}

Status VerbsEndpoint::queueSingleWr(PendingWr p, Completion* done, const char* kind) {
  auto slot_r = allocSlot(done, kind);
  if (!slot_r.ok()) return slot_r.status();
  p.slot = *slot_r;
  p.last_of_op = true;
  p.wr.wr_id = sendWrId(serial_, *slot_r, slots_[*slot_r].gen, true);
  pending_.push_back(p);
  flushPending();
  return Status();
}

Status VerbsEndpoint::bindGrant(RemoteGrant* grant, Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  auto* g = dynamic_cast<VerbsGrant*>(grant);
  if (done == nullptr || g == nullptr || !g->needsBind()) {
    return Status(StatusCode::kInvalidArgument, "bindGrant: not a verbs memory-window grant");
  }
  // Type 2: bound through this QP's send queue, usable by this QP's peer alone; the CQE says
  // it is in place (only then is the peer told the rkey).
  PendingWr p;
  p.wr.opcode = IBV_WR_BIND_MW;
  p.wr.num_sge = 0;
  p.wr.bind_mw.mw = g->window()->get();
  if (p.wr.bind_mw.mw == nullptr) {
    return Status(StatusCode::kCancelled, "bindGrant: the grant was revoked");
  }
  p.wr.bind_mw.rkey = g->rkey();
  p.wr.bind_mw.bind_info.mr = g->mr();
  p.wr.bind_mw.bind_info.addr = g->addr();
  p.wr.bind_mw.bind_info.length = g->length();
  p.wr.bind_mw.bind_info.mw_access_flags =
      static_cast<unsigned>(ibvAccessFlags(g->access()) & ~IBV_ACCESS_LOCAL_WRITE);
  ZCX_RETURN_IF_ERROR(queueSingleWr(p, done, "BIND_MW"));
  std::erase_if(windows_, [](const auto& w) { return w->get() == nullptr; });  // revoked ones
  windows_.push_back(g->window());
  return Status();
}

int VerbsEndpoint::flushPending() {
  if (state_ != EndpointState::kReady || pending_.empty()) return 0;
  post_buf_.clear();
  sge_buf_.clear();
  uint32_t reads = 0;
  while (!pending_.empty() && sq_posted_ + post_buf_.size() < sq_depth_) {
    PendingWr& p = pending_.front();
    if (p.is_read && reads_inflight_ + reads >= read_limit_) break;
    post_buf_.push_back(p.wr);
    sge_buf_.push_back(p.sge);
    ibv_send_wr& wr = post_buf_.back();
    wr.send_flags = 0;
    const bool can_inline = wr.opcode == IBV_WR_SEND || wr.opcode == IBV_WR_RDMA_WRITE ||
                            wr.opcode == IBV_WR_RDMA_WRITE_WITH_IMM;
    if (can_inline && wr.num_sge == 1 && p.sge.length <= max_inline_) {
      wr.send_flags |= IBV_SEND_INLINE;
    }
    ++unsignaled_run_;
    if (p.is_read) {
      ++reads;
      ++unsignaled_reads_;
    }
    if (p.last_of_op || unsignaled_run_ >= signal_interval_) {
      wr.send_flags |= IBV_SEND_SIGNALED;
      groups_.push_back({unsignaled_run_, unsignaled_reads_});
      unsignaled_run_ = 0;
      unsignaled_reads_ = 0;
    }
    pending_.pop_front();
  }
  if (post_buf_.empty()) return 0;
  // Stopped by a limit with the last WR unsignaled: signal it, or nothing would free the slots.
  if (!(post_buf_.back().send_flags & IBV_SEND_SIGNALED)) {
    post_buf_.back().send_flags |= IBV_SEND_SIGNALED;
    groups_.push_back({unsignaled_run_, unsignaled_reads_});
    unsignaled_run_ = 0;
    unsignaled_reads_ = 0;
  }
  for (size_t i = 0; i < post_buf_.size(); ++i) {
    post_buf_[i].sg_list = post_buf_[i].num_sge > 0 ? &sge_buf_[i] : nullptr;
    post_buf_[i].next = i + 1 < post_buf_.size() ? &post_buf_[i + 1] : nullptr;
  }
  sq_posted_ += static_cast<uint32_t>(post_buf_.size());
  reads_inflight_ += reads;
  ibv_send_wr* bad = nullptr;
  if (int rc = ibv_post_send(qp_, post_buf_.data(), &bad); rc != 0) {
    breakConnection(
        Status(StatusCode::kConnectionBroken, "ibv_post_send failed (" + errnoText(rc) + ")"));
    return 1;
  }
  return static_cast<int>(post_buf_.size());
}

// ------------------------------------------------------------------ completions

Status VerbsEndpoint::wcError(const ibv_wc& wc, const char* kind) const {
  std::string msg = std::string(kind) + " failed: " + ibv_wc_status_str(wc.status) + " (status " +
                    std::to_string(wc.status) + ", vendor_err " + std::to_string(wc.vendor_err) +
                    ")";
  switch (wc.status) {
    case IBV_WC_REM_ACCESS_ERR:
      return Status(StatusCode::kRemoteAccessError,
                    msg + ": remote key revoked or wrong, or range outside the remote region");
    case IBV_WC_RETRY_EXC_ERR:
      return Status(StatusCode::kConnectionBroken,
                    msg + ": the peer stopped answering (dead peer or link down)");
    case IBV_WC_RNR_RETRY_EXC_ERR:
      return Status(StatusCode::kConnectionBroken, msg + ": the peer posted no receive buffer");
    case IBV_WC_WR_FLUSH_ERR:
      return Status(StatusCode::kConnectionBroken, msg + ": the connection was already broken");
    case IBV_WC_LOC_PROT_ERR:
    case IBV_WC_LOC_ACCESS_ERR:
      return Status(StatusCode::kInternal, msg + ": local memory key or range is wrong");
    case IBV_WC_REM_INV_REQ_ERR:
    case IBV_WC_REM_OP_ERR:
      return Status(StatusCode::kRemoteAccessError, msg + ": the peer rejected the request");
    case IBV_WC_LOC_LEN_ERR:
      return Status(StatusCode::kProtocolError,
                    msg + ": a message was larger than the receive buffer");
    default: return Status(StatusCode::kConnectionBroken, msg);
  }
}

void VerbsEndpoint::onWc(const ibv_wc& wc) {
  if (closed_) return;
  auto alive = alive_;
  if (wc.wr_id & kRecvBit) {
    if (state_ == EndpointState::kBroken) return;  // flushed receives after the break
    if (wc.status != IBV_WC_SUCCESS) {
      breakConnection(wcError(wc, "RECV"));
      return;
    }
    const auto index = static_cast<uint32_t>(wc.wr_id & (kRecvBit - 1));
    if (wc.opcode == IBV_WC_RECV_RDMA_WITH_IMM ||
        (wc.opcode == IBV_WC_RECV && (wc.wc_flags & IBV_WC_WITH_IMM))) {
      events_->onNotify(ntohl(wc.imm_data));
    } else {
      const uint8_t* data =
          static_cast<const uint8_t*>(recv_ring_->address()) + uint64_t{index} * slot_size_;
      events_->onMessage(data, wc.byte_len);
    }
    if (!*alive || state_ == EndpointState::kBroken || closed_) return;
    if (Status s = postRecv(index); !s.ok()) breakConnection(s);
    return;
  }

  const auto slot = static_cast<uint32_t>(wc.wr_id & (kMaxSlots - 1));
  const auto gen = static_cast<uint16_t>((wc.wr_id >> kSlotBits) & kGenMask);
  const bool last = (wc.wr_id & kLastBit) != 0;
  const bool slot_live = slot < slots_.size() && slots_[slot].active && slots_[slot].gen == gen;
  if (state_ == EndpointState::kBroken) return;  // everything already failed once
  if (wc.status != IBV_WC_SUCCESS) {
    const char* kind = slot_live ? slots_[slot].kind : "operation";
    Status op_status = wcError(wc, kind);
    breakConnection(op_status, slot_live ? int64_t{slot} : -1, op_status);
    return;
  }
  // A successful send CQE is always a signaled WR: it retires its group of WRs.
  if (!groups_.empty()) {
    sq_posted_ -= std::min(sq_posted_, groups_.front().wrs);
    reads_inflight_ -= std::min(reads_inflight_, groups_.front().reads);
    groups_.pop_front();
  }
  if (last && slot_live) {
    Completion* done = slots_[slot].done;
    releaseSlot(slot);
    flushPending();  // slots freed: keep the queue moving before user code runs
    done->complete(Status());
  }
}

int VerbsEndpoint::drive() {
  int n = 0;
  if (!deferred_.empty()) {
    Deferred ready;
    ready.swap(deferred_);
    n += static_cast<int>(ready.size());
    auto alive = alive_;
    for (auto& [done, status] : ready) done->complete(std::move(status));
    if (!*alive) return n;
  }
  if (error_pending_ && !closed_) {
    error_pending_ = false;
    ++n;
    if (events_ != nullptr) events_->onError(error_);
    return n;
  }
  n += flushPending();
  return n;
}

bool VerbsEndpoint::hasWork() const {
  if (!deferred_.empty() || (error_pending_ && !closed_)) return true;
  if (state_ != EndpointState::kReady || pending_.empty()) return false;
  return sq_posted_ < sq_depth_ && !(pending_.front().is_read && reads_inflight_ >= read_limit_);
}

// ------------------------------------------------------------------ breaking and closing

VerbsEndpoint::Deferred VerbsEndpoint::takeOutstanding(const Status& why, int64_t failed_slot,
                                                       const Status& op_status) {
  Deferred out;
  out.swap(deferred_);
  for (uint32_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].active) continue;
    out.emplace_back(slots_[i].done, int64_t{i} == failed_slot ? op_status : why);
    releaseSlot(i);
  }
  pending_.clear();
  groups_.clear();
  sq_posted_ = reads_inflight_ = unsignaled_run_ = unsignaled_reads_ = 0;
  return out;
}

void VerbsEndpoint::breakConnection(Status why, int64_t failed_slot, Status op_status) {
  if (state_ == EndpointState::kBroken) return;
  state_ = EndpointState::kBroken;
  error_ = why;
  LOG(WARNING) << "verbs endpoint " << serial_ << " broken: " << why.toString();
  if (qp_ != nullptr) {
    moveQpToError();
  }
  Status others(
      why.code() == StatusCode::kRemoteAccessError ? StatusCode::kConnectionBroken : why.code(),
      "the connection broke: " + why.message());
  // Reported from drive() (inside progress()): breaking can happen inside a post*() call.
  deferred_ = takeOutstanding(others, failed_slot, op_status);
  error_pending_ = true;
}

// QP to ERR (flushing every outstanding WR); through rdma_disconnect once connected, so the
// peer learns of it too.
void VerbsEndpoint::moveQpToError() {
  if (qp_connected_) {
    rdma_disconnect(id_.get());  // QP to ERR and tell the peer
    qp_connected_ = false;
  } else {
    ibv_qp_attr attr{};
    attr.qp_state = IBV_QPS_ERR;
    ibv_modify_qp(qp_, &attr, IBV_QP_STATE);
  }
}

void VerbsEndpoint::drainQp() {
  // rdma-pitfalls: never destroy a QP with WRs in flight. ERR flushes every outstanding WR; a
  // signaled marker WR posted after them completes (flushed) last on the send queue. Our ops were
  // already completed by close()/breakConnection(): the flushed CQEs are consumed and dropped.
  moveQpToError();
  if (!qp_used_ || transport_ == nullptr) return;  // never reached RTS: nothing was posted
  const uint64_t marker = (uint64_t{serial_} << 32) | kDrainMarker;
  ibv_send_wr wr{};
  wr.wr_id = marker;
  wr.opcode = IBV_WR_SEND;
  wr.num_sge = 0;
  wr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  if (int rc = ibv_post_send(qp_, &wr, &bad); rc != 0) {
    // Send queue full: no marker; take what is in the CQ now, the rest is dropped by serial.
    VLOG(1) << "verbs endpoint " << serial_ << ": cannot post the drain marker (" << errnoText(rc)
            << ")";
    transport_->drainFlushed(serial_, marker, std::chrono::milliseconds(0));
    return;
  }
  if (!transport_->drainFlushed(serial_, marker, kDrainLimit)) {
    LOG(WARNING) << "verbs endpoint " << serial_ << ": the QP's flushed completions did not all "
                 << "arrive within " << kDrainLimit.count() << " ms; destroying it anyway";
  }
}

void VerbsEndpoint::destroyConnection() {
  if (id_) {
    if (qp_ != nullptr) {
      drainQp();
      if (qp_registered_ && transport_ != nullptr) transport_->unregisterQp(qp_->qp_num);
      qp_registered_ = false;
    }
    if (qp_connected_) rdma_disconnect(id_.get());
    qp_connected_ = false;
    // Windows bound through the QP hold it (rxe waits for them in ibv_destroy_qp): they die
    // with the connection they were scoped to.
    for (auto& w : windows_) w->invalidate();
    windows_.clear();
    id_.reset();  // destroys the QP, then the id
    qp_ = nullptr;
  }
  if (transport_ != nullptr) {
    if (cq_entries_ > 0) transport_->releaseCq(cq_entries_);
    transport_->forget(serial_, role_ == Role::kPassive ? token_ : 0);
  }
  cq_entries_ = 0;
  recv_ring_.reset();  // after the QP: the device no longer writes into it
}

void VerbsEndpoint::close(Status why) {
  if (closed_) return;
  closed_ = true;
  if (why.ok()) why = Status(StatusCode::kCancelled, "the endpoint was closed");
  Deferred failed = takeOutstanding(why, -1, why);
  if (state_ != EndpointState::kBroken) {
    state_ = EndpointState::kBroken;
    error_ = why;
  }
  destroyConnection();
  for (auto& [done, status] : failed) done->complete(std::move(status));
}

}  // namespace zcx::transport::verbs

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
//                                             | send: VerbsSendQueue's layout
constexpr uint64_t kRecvBit = uint64_t{1} << 31;
constexpr int kResolveTimeoutMs = 5000;
/// Low bits of the drain marker's wr_id: it matches no op and no receive.
constexpr uint64_t kDrainMarker = VerbsSendQueue::kNoOpLowBits;
static_assert((kDrainMarker & kRecvBit) == 0);
constexpr auto kDrainLimit = std::chrono::milliseconds(100);

const char* cmEventName(rdma_cm_event_type t) { return rdma_event_str(t); }

}  // namespace

VerbsEndpoint::VerbsEndpoint(VerbsTransport* transport, uint32_t serial, const EndpointSetup& setup,
                             size_t max_message_size)
    : transport_(transport),
      serial_(serial),
      role_(setup.role),
      token_(setup.token),
      max_message_size_(max_message_size),
      events_(setup.events),
      sq_(serial, [this](ibv_send_wr* first) {
        ibv_send_wr* bad = nullptr;
        if (int rc = ibv_post_send(qp_, first, &bad); rc != 0) {
          return Status(StatusCode::kConnectionBroken,
                        "ibv_post_send failed (" + errnoText(rc) + ")");
        }
        return Status();
      }) {}

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
  max_wr_bytes_ = dev.port_attr.max_msg_sz != 0 ? dev.port_attr.max_msg_sz : (uint64_t{1} << 30);
  read_limit_ = std::max<uint32_t>(1, std::min<uint32_t>(dev.device_attr.max_qp_init_rd_atom, 255));
  for (uint32_t i = 0; i < recv_depth_; ++i) ZCX_RETURN_IF_ERROR(postRecv(i));
  return Status();
}

Status VerbsEndpoint::setAckTimeout(rdma_cm_id* id) {
  // Set on the cm id before connect/accept: rdma_cm applies it when it moves the QP to RTS
  // (the timeout cannot be changed on an RTS QP).
  uint8_t t = static_cast<uint8_t>(transport_->options().ack_timeout);
  if (t == 0) return Status();
  if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, sizeof(t)) != 0) {
    // Asked for explicitly: a connection with another timeout than the one asked for would
    // only look like it works.
    return Status(StatusCode::kUnavailable,
                  "rdma_set_option(ACK_TIMEOUT " + std::to_string(t) + ") failed (" +
                      errnoText(errno) +
                      "); this kernel's rdma_cm cannot set it: drop the verbs.ack_timeout "
                      "transport parameter to use its default");
  }
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
  if (Status s = setAckTimeout(id_.get()); !s.ok()) {
    rdma_reject(id_.get(), nullptr, 0);
    breakConnection(s.withContext("accepting the rdma_cm connection"));
    return;
  }
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
      if (Status s = setAckTimeout(id_.get()); !s.ok()) {
        breakConnection(s.withContext("connecting"));
        return;
      }
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
      if (ibv_query_qp(qp_, &qa, IBV_QP_MAX_QP_RD_ATOMIC | IBV_QP_TIMEOUT, &qia) == 0) {
        if (qa.max_rd_atomic > 0) read_limit_ = qa.max_rd_atomic;
        VLOG(1) << "verbs: QP " << qp_->qp_num << " connected, local ACK timeout "
                << static_cast<int>(qa.timeout) << " (4.096 us x 2^" << static_cast<int>(qa.timeout)
                << "), read depth " << read_limit_;
      }
      ibv_qp_attr rnr{};
      rnr.min_rnr_timer = 1;  // 0.01 ms
      if (int rc = ibv_modify_qp(qp_, &rnr, IBV_QP_MIN_RNR_TIMER); rc != 0) {
        VLOG(1) << "verbs: cannot shorten min_rnr_timer (" << errnoText(rc) << "); keeping default";
      }
      sq_.configure(sq_depth_, max_inline_, read_limit_);
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
  op_wrs_.clear();
  for (const RmaOp& op : ops) {
    if (op.length == 0) continue;
    auto* mem = static_cast<VerbsMemory*>(op.local);
    auto* key = static_cast<VerbsRemoteKey*>(op.remote);
    for (uint64_t off = 0; off < op.length; off += max_wr_bytes_) {
      const uint64_t len = std::min<uint64_t>(max_wr_bytes_, op.length - off);
      VerbsSendQueue::Wr& w = op_wrs_.emplace_back();
      w.sge.addr = op.local_addr + off;
      w.sge.length = static_cast<uint32_t>(len);
      w.sge.lkey = mem->lkey();
      w.wr.opcode = is_read ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE;
      w.wr.num_sge = 1;
      w.wr.wr.rdma.remote_addr = op.remote_addr + off;
      w.wr.wr.rdma.rkey = key->rkey();
      w.is_read = is_read;
    }
  }
  if (notify) {
    if (nonzero > 0) {
      VerbsSendQueue::Wr& last = op_wrs_.back();
      last.wr.opcode = IBV_WR_RDMA_WRITE_WITH_IMM;
      last.wr.imm_data = htonl(*notify);
    } else {
      // Nothing to write: a zero-length SEND with immediate carries the notification.
      VerbsSendQueue::Wr& w = op_wrs_.emplace_back();
      w.wr.opcode = IBV_WR_SEND_WITH_IMM;
      w.wr.num_sge = 0;
      w.wr.imm_data = htonl(*notify);
    }
  }
  if (op_wrs_.empty()) {
    // Only zero-length ops: done without touching memory, reported from progress().
    deferred_.emplace_back(done, Status());
    return Status();
  }
  ZCX_RETURN_IF_ERROR(sq_.enqueue(op_wrs_, done, kind));
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
  VerbsSendQueue::Wr w;
  w.wr.opcode = IBV_WR_SEND;
  if (length > 0) {
    w.sge.addr = local_addr;
    w.sge.length = static_cast<uint32_t>(length);
    w.sge.lkey = static_cast<VerbsMemory*>(local)->lkey();
    w.wr.num_sge = 1;
  }
  return queueSingleWr(w, done, "SEND");
}

Status VerbsEndpoint::queueSingleWr(const VerbsSendQueue::Wr& w, Completion* done,
                                    const char* kind) {
  ZCX_RETURN_IF_ERROR(sq_.enqueue({&w, 1}, done, kind));
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
  VerbsSendQueue::Wr w;
  w.wr.opcode = IBV_WR_BIND_MW;
  w.wr.num_sge = 0;
  w.wr.bind_mw.mw = g->window()->get();
  if (w.wr.bind_mw.mw == nullptr) {
    return Status(StatusCode::kCancelled, "bindGrant: the grant was revoked");
  }
  w.wr.bind_mw.rkey = g->rkey();
  w.wr.bind_mw.bind_info.mr = g->mr();
  w.wr.bind_mw.bind_info.addr = g->addr();
  w.wr.bind_mw.bind_info.length = g->length();
  w.wr.bind_mw.bind_info.mw_access_flags =
      static_cast<unsigned>(ibvAccessFlags(g->access()) & ~IBV_ACCESS_LOCAL_WRITE);
  ZCX_RETURN_IF_ERROR(queueSingleWr(w, done, "BIND_MW"));
  std::erase_if(windows_, [](const auto& w) { return w->get() == nullptr; });  // revoked ones
  windows_.push_back(g->window());
  return Status();
}

int VerbsEndpoint::flushPending() {
  if (state_ != EndpointState::kReady) return 0;
  auto posted = sq_.flush();
  if (!posted.ok()) {
    breakConnection(posted.status());
    return 1;
  }
  return *posted;
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

  if (state_ == EndpointState::kBroken) return;  // everything already failed once
  if (wc.status != IBV_WC_SUCCESS) {
    const char* kind = sq_.liveKind(wc.wr_id);
    Status op_status = wcError(wc, kind != nullptr ? kind : "operation");
    breakConnection(op_status, wc.wr_id, op_status);
    return;
  }
  if (Completion* done = sq_.onSuccess(wc.wr_id)) {
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
  return state_ == EndpointState::kReady && sq_.canPost();
}

// ------------------------------------------------------------------ breaking and closing

VerbsEndpoint::Deferred VerbsEndpoint::takeOutstanding(const Status& why,
                                                       std::optional<uint64_t> failed_wr_id,
                                                       const Status& op_status) {
  Deferred out;
  out.swap(deferred_);
  sq_.failAll(why, failed_wr_id, op_status, &out);
  return out;
}

void VerbsEndpoint::breakConnection(Status why, std::optional<uint64_t> failed_wr_id,
                                    Status op_status) {
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
  deferred_ = takeOutstanding(others, failed_wr_id, op_status);
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
  Deferred failed = takeOutstanding(why, std::nullopt, why);
  if (state_ != EndpointState::kBroken) {
    state_ = EndpointState::kBroken;
    error_ = why;
  }
  destroyConnection();
  for (auto& [done, status] : failed) done->complete(std::move(status));
}

}  // namespace zcx::transport::verbs

#include "verbs/verbs_transport.h"
#include "verbs/verbs_status.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <glog/logging.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "verbs/verbs_async.h"
#include "verbs/verbs_endpoint.h"
#include "verbs/verbs_memory.h"
#include "verbs/verbs_rails_wire.h"

namespace zcx::transport::verbs {
namespace {

constexpr auto kStashLifetime = std::chrono::seconds(60);
// Connect requests that wait for their TCP handshake to create the passive endpoint.
constexpr size_t kMaxStashed = 256;
constexpr int kPollBatch = 32;

Status setNonBlocking(int fd, const char* what) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return Status(StatusCode::kInternal, std::string("cannot make the ") + what +
                                             " non-blocking (" + errnoText(errno) + ")");
  }
  return Status();
}

}  // namespace

Result<std::unique_ptr<VerbsTransport>> VerbsTransport::create(const TransportConfig& config) {
  auto options = parseOptions(config);
  if (!options.ok()) return options.status();

  auto dev = chooseDevice(config);
  if (!dev.ok()) return dev.status();

  std::unique_ptr<VerbsTransport> t(new VerbsTransport());
  t->device_ = *dev;
  t->options_ = *options;
  const DeviceChoice& d = t->device_;

  errno = 0;
  t->channel_.reset(rdma_create_event_channel());
  if (!t->channel_) {
    return Status(StatusCode::kUnavailable, "rdma_create_event_channel failed (" +
                                                errnoText(errno) +
                                                "); is the rdma_ucm module loaded?");
  }
  ZCX_RETURN_IF_ERROR(setNonBlocking(t->channel_->fd, "rdma_cm event channel"));

  t->pd_.reset(ibv_alloc_pd(d.context));
  if (!t->pd_) {
    return Status(StatusCode::kUnavailable,
                  "ibv_alloc_pd on " + d.name + " failed (" + errnoText(errno) + ")");
  }
  t->comp_channel_.reset(ibv_create_comp_channel(d.context));
  if (!t->comp_channel_) {
    return Status(StatusCode::kUnavailable,
                  "ibv_create_comp_channel on " + d.name + " failed (" + errnoText(errno) + ")");
  }
  ZCX_RETURN_IF_ERROR(setNonBlocking(t->comp_channel_->fd, "completion channel"));
  t->cq_capacity_ = static_cast<uint32_t>(std::min(d.device_attr.max_cqe, 4096));
  t->cq_.reset(ibv_create_cq(d.context, static_cast<int>(t->cq_capacity_), nullptr,
                             t->comp_channel_.get(), 0));
  if (!t->cq_) {
    const int err = errno;
    return Status(err == ENOMEM ? StatusCode::kResourceExhausted : StatusCode::kUnavailable,
                  "ibv_create_cq(" + std::to_string(t->cq_capacity_) + ") on " + d.name +
                      " failed (" + errnoText(err) + ")");
  }
  t->cq_capacity_ = static_cast<uint32_t>(t->cq_->cqe);
  if (int rc = ibv_req_notify_cq(t->cq_.get(), 0); rc != 0) {
    return Status(StatusCode::kInternal, "ibv_req_notify_cq failed (" + errnoText(rc) + ")");
  }

  // The listener: bound to the device's IP, ephemeral port.
  rdma_cm_id* raw = nullptr;
  if (rdma_create_id(t->channel_.get(), &raw, nullptr, RDMA_PS_TCP) != 0) {
    return Status(StatusCode::kUnavailable, "rdma_create_id failed (" + errnoText(errno) + ")");
  }
  t->listen_id_.reset(raw);
  CmAddress addr = d.address;
  addr.setPort(0);
  if (rdma_bind_addr(raw, addr.get()) != 0) {
    return Status(StatusCode::kUnavailable,
                  "rdma_bind_addr(" + addr.host() + ") failed (" + errnoText(errno) + ") on " +
                      d.name + " (" + d.gid_type + " gid " + std::to_string(d.gid_index) + ")");
  }
  if (raw->verbs != nullptr && raw->verbs != d.context) {
    return Status(StatusCode::kUnavailable, "address " + addr.host() + " belongs to RDMA device " +
                                                ibv_get_device_name(raw->verbs->device) + ", not " +
                                                d.name);
  }
  if (rdma_listen(raw, 128) != 0) {
    return Status(StatusCode::kUnavailable, "rdma_listen failed (" + errnoText(errno) + ")");
  }
  t->listen_addr_ = CmAddress::fromSockaddr(rdma_get_local_addr(raw));
  if (t->listen_addr_.empty()) {
    return Status(StatusCode::kInternal, "the rdma_cm listener on " + addr.host() +
                                             " reports no local address of a known family");
  }

  // One fd for the core to sleep on: the completion channel, the cm channel, the device's async
  // event fd (shared with other transports on this context: see verbs_async.h) and our wake fd.
  t->epoll_fd_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  if (t->epoll_fd_.get() < 0) {
    return Status(StatusCode::kInternal, "epoll_create1 failed (" + errnoText(errno) + ")");
  }
  t->wake_fd_ = UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (t->wake_fd_.get() < 0) {
    return Status(StatusCode::kInternal, "eventfd failed (" + errnoText(errno) + ")");
  }
  ZCX_RETURN_IF_ERROR(
      AsyncEventHub::subscribe(d.context, t.get(), d.port, t->cq_.get(), t->wake_fd_.get()));
  t->async_subscribed_ = true;
  for (int fd : {t->comp_channel_->fd, t->channel_->fd, d.context->async_fd, t->wake_fd_.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (epoll_ctl(t->epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return Status(StatusCode::kInternal, "epoll_ctl failed (" + errnoText(errno) + ")");
    }
  }
  LOG(INFO) << "verbs transport: " << t->description();
  return t;
}

VerbsTransport::~VerbsTransport() {
  // Endpoints should be gone already; if not, close them now and cut them loose.
  while (!endpoints_.empty()) {
    VerbsEndpoint* ep = endpoints_.begin()->second;
    endpoints_.erase(endpoints_.begin());
    ep->detach(Status(StatusCode::kCancelled, "the verbs transport was destroyed"));
  }
  if (async_subscribed_) AsyncEventHub::unsubscribe(device_.context, this);
  async_subscribed_ = false;
  for (auto& [token, s] : stash_) rdma_reject(s.id.get(), nullptr, 0);
  stash_.clear();
  listen_id_.reset();
  if (cq_) {
    drainCompChannel();
    if (unacked_cq_events_ > 0) ibv_ack_cq_events(cq_.get(), unacked_cq_events_);
    unacked_cq_events_ = 0;
  }
  cq_.reset();
  comp_channel_.reset();
  pd_.reset();  // fails (logged) if memory handles outlive the transport
  channel_.reset();
}

Capabilities VerbsTransport::capabilities() const {
  Capabilities c;
  c.rma = true;
  c.send_recv = true;
  c.notify = true;
  c.allocate = false;
  c.max_message_size = kMaxMessageSize;
  // A peer list is bound to the peer's QP only through type-2 memory windows.
  c.enforces_grants = memoryWindows();
  // The epoll set holds the completion channel and rdma_cm's channel; arm() re-arms the CQ and
  // reports completions and endpoint work still waiting.
  c.event_fd_covers_completions = true;
  return c;
}

std::string VerbsTransport::description() const {
  std::ostringstream s;
  s << "verbs " << device_.name << " port " << int{device_.port} << " gid " << device_.gid_index
    << " (" << device_.gid_type << " " << device_.address.familyName();
  if (!device_.netdev.empty()) s << " on " << device_.netdev;
  s << ") " << listen_addr_.toString() << " mtu " << (128 << device_.port_attr.active_mtu)
    << (memoryWindows() ? " mw=type2" : " mw=none");  // how peer lists are enforced
  return s.str();
}

Result<std::unique_ptr<MemoryHandle>> VerbsTransport::registerMemory(void* address, size_t length,
                                                                     uint32_t access) {
  auto r = VerbsMemory::create(pd_.get(), address, length, access, device_.device_attr.max_mr_size,
                               memoryWindows());
  if (!r.ok()) return r.status();
  return std::unique_ptr<MemoryHandle>(std::move(*r));
}

Result<std::unique_ptr<MemoryHandle>> VerbsTransport::allocateMemory(size_t length,
                                                                     uint32_t access) {
  auto r = VerbsMemory::allocate(pd_.get(), length, access, device_.device_attr.max_mr_size,
                                 memoryWindows());
  if (!r.ok()) return r.status();
  return std::unique_ptr<MemoryHandle>(std::move(*r));
}

std::vector<uint8_t> VerbsTransport::localAddress() const { return packAddress(listen_addr_); }

Result<std::unique_ptr<Endpoint>> VerbsTransport::createEndpoint(const EndpointSetup& setup) {
  if (setup.events == nullptr) {
    return Status(StatusCode::kInvalidArgument, "createEndpoint without events");
  }
  size_t max_msg = setup.max_message_size == 0 ? kDefaultMessageSize : setup.max_message_size;
  if (max_msg > kMaxMessageSize) {
    return Status(StatusCode::kOutOfRange, "max_message_size " + std::to_string(max_msg) +
                                               " is larger than the verbs transport's limit " +
                                               std::to_string(kMaxMessageSize));
  }
  const uint32_t serial = next_serial_++;
  if (serial == 0) next_serial_ = 1;  // 0 means "no endpoint" in cm id contexts
  auto ep = std::make_unique<VerbsEndpoint>(this, serial, setup, max_msg);
  if (setup.role == Role::kActive) {
    // A multi-rail peer's address holds one per rail: a single rail pairs with its first.
    auto peer = unpackAddress(firstRail(setup.peer_address));
    if (!peer.ok()) return peer.status();
    endpoints_[serial] = ep.get();
    if (Status s = ep->startActive(*peer); !s.ok()) {
      endpoints_.erase(serial);
      return s;
    }
  } else {
    if (waiting_passive_.count(setup.token) != 0) {
      return Status(
          StatusCode::kInvalidArgument,
          "a passive endpoint for token " + std::to_string(setup.token) + " already exists");
    }
    endpoints_[serial] = ep.get();
    auto it = stash_.find(setup.token);
    if (it != stash_.end()) {
      Stashed s = std::move(it->second);
      stash_.erase(it);
      ep->accept(std::move(s.id), s.data, s.initiator_depth, s.responder_resources);
    } else {
      waiting_passive_[setup.token] = serial;
    }
  }
  return std::unique_ptr<Endpoint>(std::move(ep));
}

void VerbsTransport::forget(uint32_t serial, uint64_t passive_token) {
  endpoints_.erase(serial);
  auto it = waiting_passive_.find(passive_token);
  if (it != waiting_passive_.end() && it->second == serial) waiting_passive_.erase(it);
}

Status VerbsTransport::reserveCq(uint32_t entries) {
  const uint64_t need = uint64_t{cq_reserved_} + entries;
  if (need > cq_capacity_) {
    const auto max_cqe = static_cast<uint64_t>(device_.device_attr.max_cqe);
    const uint64_t want = std::min(max_cqe, std::max(need, uint64_t{cq_capacity_} * 2));
    if (want < need || ibv_resize_cq(cq_.get(), static_cast<int>(want)) != 0) {
      return Status(StatusCode::kResourceExhausted,
                    "the completion queue cannot grow to " + std::to_string(need) +
                        " entries (device max_cqe " + std::to_string(max_cqe) +
                        "): too many connections on one verbs transport");
    }
    cq_capacity_ = static_cast<uint32_t>(cq_->cqe);
  }
  cq_reserved_ += entries;
  return Status();
}

void VerbsTransport::releaseCq(uint32_t entries) {
  cq_reserved_ -= std::min(cq_reserved_, entries);
}

// ------------------------------------------------------------------ progress

void VerbsTransport::registerQp(uint32_t qp_num, uint32_t serial) {
  AsyncEventHub::addQp(device_.context, this, qp_num, serial);
}

void VerbsTransport::unregisterQp(uint32_t qp_num) {
  AsyncEventHub::removeQp(device_.context, qp_num);
}

bool VerbsTransport::drainFlushed(uint32_t serial, uint64_t marker_wr_id,
                                  std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  ibv_wc wcs[kPollBatch];
  for (;;) {
    const int got = ibv_poll_cq(cq_.get(), kPollBatch, wcs);
    if (got < 0) {
      LOG(ERROR) << "ibv_poll_cq failed (" << got << ")";
      return false;
    }
    bool marker = false;
    for (int i = 0; i < got; ++i) {
      if (static_cast<uint32_t>(wcs[i].wr_id >> 32) != serial) {
        wc_stash_.push_back(wcs[i]);  // another endpoint's: handled by the next progress()
      } else if (wcs[i].wr_id == marker_wr_id) {
        marker = true;
      }  // else: a flushed WR of an op that close()/breakConnection() already completed
    }
    if (marker) return true;
    if (got == 0 && std::chrono::steady_clock::now() >= deadline) return false;
  }
}

bool VerbsTransport::fdsDue() {
  const auto now = std::chrono::steady_clock::now();
  if (!check_fds_next_ && now - last_fd_check_ < kFdCheckPeriod) return false;
  check_fds_next_ = false;
  last_fd_check_ = now;
  return true;
}

int VerbsTransport::progress() {
  int n = 0;
  if (fdsDue()) {
    n += processAsyncEvents();
    n += processCmEvents();
    drainCompChannel();
  }
  n += pollCq();
  expireStash();
  // Endpoints may be created or destroyed by callbacks: walk a snapshot of serials.
  std::vector<uint32_t> serials;
  serials.reserve(endpoints_.size());
  for (const auto& [serial, ep] : endpoints_) serials.push_back(serial);
  for (uint32_t serial : serials) {
    auto it = endpoints_.find(serial);
    if (it != endpoints_.end()) n += it->second->drive();
  }
  return n;
}

int VerbsTransport::processAsyncEvents() {
  uint64_t count = 0;
  while (::read(wake_fd_.get(), &count, sizeof(count)) > 0) {
  }
  std::vector<AsyncEvent> events = AsyncEventHub::poll(device_.context, this);
  for (const AsyncEvent& ev : events) {
    const char* name = ibv_event_type_str(ev.type);
    switch (ev.type) {
      case IBV_EVENT_QP_FATAL:
      case IBV_EVENT_QP_REQ_ERR:
      case IBV_EVENT_QP_ACCESS_ERR: {
        auto it = endpoints_.find(ev.serial);
        if (it == endpoints_.end()) break;  // already closed
        it->second->breakFromAsyncEvent(
            Status(StatusCode::kConnectionBroken, std::string("the device reported ") + name +
                                                      " (async event " + std::to_string(ev.type) +
                                                      ") for the connection's QP " +
                                                      std::to_string(ev.qp_num)));
        break;
      }
      case IBV_EVENT_PORT_ERR:
      case IBV_EVENT_DEVICE_FATAL:
      case IBV_EVENT_CQ_ERR: {
        std::string what;
        if (ev.type == IBV_EVENT_PORT_ERR) {
          what = std::string("the device reported ") + name + ": port " + std::to_string(ev.port) +
                 " of " + device_.name + " went down" +
                 (device_.netdev.empty() ? "" : " (is " + device_.netdev + " down?)");
        } else if (ev.type == IBV_EVENT_DEVICE_FATAL) {
          what = std::string("the device reported ") + name + ": " + device_.name +
                 " failed and must be reopened";
        } else {
          what = std::string("the device reported ") + name +
                 ": the transport's completion queue overflowed or failed";
        }
        LOG(ERROR) << "verbs " << device_.name << ": " << what << "; breaking " << endpoints_.size()
                   << " endpoint(s)";
        std::vector<uint32_t> serials;
        for (const auto& [serial, ep] : endpoints_) serials.push_back(serial);
        for (uint32_t serial : serials) {
          auto it = endpoints_.find(serial);
          if (it != endpoints_.end()) {
            it->second->breakFromAsyncEvent(Status(StatusCode::kConnectionBroken, what));
          }
        }
        break;
      }
      case IBV_EVENT_PORT_ACTIVE:
      case IBV_EVENT_LID_CHANGE:
      case IBV_EVENT_GID_CHANGE:
      case IBV_EVENT_PKEY_CHANGE:
      case IBV_EVENT_SM_CHANGE:
      case IBV_EVENT_CLIENT_REREGISTER:
        LOG(INFO) << "verbs " << device_.name << ": async event " << name << " on port "
                  << int{ev.port} << "; ignored";
        break;
      default:
        VLOG(1) << "verbs " << device_.name << ": async event " << name << " (QP " << ev.qp_num
                << "); ignored";
        break;
    }
  }
  return static_cast<int>(events.size());
}

int VerbsTransport::processCmEvents() {
  int n = 0;
  for (int i = 0; i < 64; ++i) {
    rdma_cm_event* event = nullptr;
    if (rdma_get_cm_event(channel_.get(), &event) != 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        LOG(WARNING) << "rdma_get_cm_event: " << errnoText(errno);
      }
      break;
    }
    ++n;
    // Copy what we need and ack at once (rdma_destroy_id waits for acks).
    const rdma_cm_event_type type = event->event;
    const int status = event->status;
    rdma_cm_id* id = event->id;
    const rdma_conn_param conn = event->param.conn;
    std::vector<uint8_t> pdata;
    if (conn.private_data != nullptr && conn.private_data_len > 0) {
      const auto* p = static_cast<const uint8_t*>(conn.private_data);
      pdata.assign(p, p + conn.private_data_len);
    }
    rdma_ack_cm_event(event);

    if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
      onConnectRequest(id, pdata.data(), pdata.size(), conn.initiator_depth,
                       conn.responder_resources);
      continue;
    }
    const auto serial = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(id->context));
    if (type == RDMA_CM_EVENT_DISCONNECTED) {
      // Completions already in the CQ happened before the peer disconnected (its last SEND
      // arrived, our last SEND was acknowledged): deliver them before breaking the connection,
      // or a message that did arrive is reported lost. Seen between two guests: a client's final
      // message reported failed though the server had received it and closed.
      n += pollCq();
    }
    auto it = serial != 0 ? endpoints_.find(serial) : endpoints_.end();
    if (it != endpoints_.end()) {
      it->second->onCmEvent(type, status, pdata);
      continue;
    }
    // An id nobody claimed yet (stashed request) that went away: drop it.
    for (auto s = stash_.begin(); s != stash_.end(); ++s) {
      if (s->second.id.get() == id) {
        VLOG(1) << "verbs: stashed connect request token " << s->first << " got "
                << rdma_event_str(type) << "; dropping it";
        stash_.erase(s);
        break;
      }
    }
  }
  return n;
}

void VerbsTransport::onConnectRequest(rdma_cm_id* id, const void* private_data, size_t private_len,
                                      uint8_t initiator_depth, uint8_t responder_resources) {
  CmIdPtr owned(id);
  owned->context = nullptr;
  auto data = unpackConnectData(private_data, private_len);
  if (!data.ok()) {
    LOG(WARNING) << "verbs: rejecting an rdma_cm connection: " << data.status().toString();
    rdma_reject(id, nullptr, 0);
    return;
  }
  if (id->verbs != device_.context) {
    LOG(WARNING) << "verbs: rejecting a connection that arrived on another device";
    rdma_reject(id, nullptr, 0);
    return;
  }
  auto w = waiting_passive_.find(data->token);
  if (w != waiting_passive_.end()) {
    const uint32_t serial = w->second;
    waiting_passive_.erase(w);
    auto it = endpoints_.find(serial);
    if (it != endpoints_.end()) {
      it->second->accept(std::move(owned), *data, initiator_depth, responder_resources);
      return;
    }
  }
  // Not claimed yet: createEndpoint(kPassive) may come later (the core's handshake races us).
  auto old = stash_.find(data->token);
  if (old != stash_.end()) {
    LOG(WARNING) << "verbs: a second connect request for token " << data->token
                 << " replaces the first";
    rdma_reject(old->second.id.get(), nullptr, 0);
    stash_.erase(old);
  }
  if (stash_.size() >= kMaxStashed) {
    // Anyone who reaches the port can send connect requests: their number is bounded.
    LOG(WARNING) << "verbs: rejecting a connect request for token " << data->token << ": "
                 << kMaxStashed << " requests already wait for their handshake";
    rdma_reject(id, nullptr, 0);
    return;
  }
  Stashed s;
  s.id = std::move(owned);
  s.data = *data;
  s.initiator_depth = initiator_depth;
  s.responder_resources = responder_resources;
  s.deadline = std::chrono::steady_clock::now() + kStashLifetime;
  stash_.emplace(data->token, std::move(s));
}

void VerbsTransport::expireStash() {
  if (stash_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  for (auto it = stash_.begin(); it != stash_.end();) {
    if (it->second.deadline <= now) {
      LOG(WARNING) << "verbs: no endpoint claimed the connect request with token " << it->first
                   << " within " << kStashLifetime.count() << " s; rejecting it";
      rdma_reject(it->second.id.get(), nullptr, 0);
      it = stash_.erase(it);
    } else {
      ++it;
    }
  }
}

void VerbsTransport::drainCompChannel() {
  for (;;) {
    ibv_cq* cq = nullptr;
    void* ctx = nullptr;
    if (ibv_get_cq_event(comp_channel_.get(), &cq, &ctx) != 0) break;  // EAGAIN: empty
    ++unacked_cq_events_;
  }
  if (unacked_cq_events_ >= 64) {
    ibv_ack_cq_events(cq_.get(), unacked_cq_events_);
    unacked_cq_events_ = 0;
  }
}

int VerbsTransport::pollCq() {
  int n = 0;
  if (!wc_stash_.empty()) {
    std::vector<ibv_wc> stashed;
    stashed.swap(wc_stash_);
    for (const ibv_wc& wc : stashed) handleWc(wc);
    n += static_cast<int>(stashed.size());
  }
  ibv_wc wcs[kPollBatch];
  for (int round = 0; round < 16; ++round) {
    const int got = ibv_poll_cq(cq_.get(), kPollBatch, wcs);
    if (got < 0) {
      LOG(ERROR) << "ibv_poll_cq failed (" << got << ")";
      break;
    }
    for (int i = 0; i < got; ++i) handleWc(wcs[i]);
    n += got;
    // A callback closed an endpoint whose drain stashed newer CQEs: handle those first (next
    // progress) so no endpoint sees its completions out of order.
    if (got < kPollBatch || !wc_stash_.empty()) break;
  }
  return n;
}

void VerbsTransport::handleWc(const ibv_wc& wc) {
  const auto serial = static_cast<uint32_t>(wc.wr_id >> 32);
  auto it = endpoints_.find(serial);
  if (it == endpoints_.end()) return;  // a closed endpoint's flushed WR
  it->second->onWc(wc);
}

bool VerbsTransport::arm() {
  check_fds_next_ = true;  // the caller may sleep: whatever wakes it is read by the next progress
  drainCompChannel();
  if (int rc = ibv_req_notify_cq(cq_.get(), 0); rc != 0) {
    LOG(WARNING) << "ibv_req_notify_cq: " << errnoText(rc);
    return false;
  }
  // CQEs that arrived before the request raise no event: look once more.
  ibv_wc wcs[kPollBatch];
  const int got = ibv_poll_cq(cq_.get(), kPollBatch, wcs);
  if (got > 0) {
    wc_stash_.insert(wc_stash_.end(), wcs, wcs + got);
    return false;
  }
  if (!wc_stash_.empty()) return false;
  for (const auto& [serial, ep] : endpoints_) {
    if (ep->hasWork()) return false;
  }
  return true;
}

}  // namespace zcx::transport::verbs

#include "ucx/ucx_worker.h"

#include <glog/logging.h>

#include <chrono>
#include <cstring>

#include "ucx/ucx_endpoint.h"
#include "ucx/ucx_memory.h"
#include "ucx/ucx_status.h"
#include "ucx/ucx_wire_sync.h"

namespace zcx::transport::ucx {
namespace {

// Bounds for messages that arrive before their endpoint exists.
constexpr size_t kMaxEarlyBytes = 64u << 20;
constexpr size_t kMaxEarlyCount = 4096;
// Largest message buffered for a connection whose endpoint does not exist yet.
constexpr size_t kMaxEarlyMessage = size_t{1} << 20;
// ucp_worker_progress calls per progress() (keeps one progress() call bounded).
constexpr int kMaxProgressRounds = 64;

bool parseHeader(const void* header, size_t header_length, AmHeader* out) {
  if (header == nullptr || header_length != sizeof(AmHeader)) return false;
  std::memcpy(out, header, sizeof(AmHeader));
  if (out->version != kWireVersion || out->role > 1) return false;
  return true;
}

/// The receiver's route key: the sender's token and the opposite role.
RouteKey receiverKey(const AmHeader& h) { return {h.token, static_cast<uint8_t>(h.role ^ 1)}; }

struct InProgressScope {
  explicit InProgressScope(int& counter) : counter_(counter) { ++counter_; }
  ~InProgressScope() { --counter_; }
  int& counter_;
};

}  // namespace

Result<std::shared_ptr<UcxWorker>> UcxWorker::create(std::unique_ptr<UcxContext> context) {
  std::shared_ptr<UcxWorker> self(new UcxWorker(std::move(context)));
  std::vector<std::pair<unsigned, ucp_am_recv_callback_t>> handlers = {
      {kAmMessage, &onAmMessage}, {kAmNotify, &onAmNotify}, {kAmHello, &onAmHello}};
  if (self->checkedRma()) {
    handlers.insert(handlers.end(),
                    {{kAmPut, &onAmPut}, {kAmGet, &onAmGet}, {kAmRmaReply, &onAmRmaReply}});
  }
  for (auto [id, cb] : handlers) {
    ucp_am_handler_param_t p{};
    p.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                   UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    p.id = id;
    p.cb = cb;
    p.arg = self.get();
    p.flags = UCP_AM_FLAG_WHOLE_MSG;
    ucs_status_t st = ucp_worker_set_am_recv_handler(self->worker(), &p);
    if (st != UCS_OK) return statusFromUcs(st, "ucp_worker_set_am_recv_handler");
  }
  return self;
}

UcxWorker::~UcxWorker() {
  // Every endpoint is gone (they own a reference). Release what UCX still holds.
  for (Closing& c : closing_) {
    ucs_status_t st = ucp_request_check_status(c.request);
    if (st == UCS_INPROGRESS) LOG(WARNING) << "ucx: endpoint close still in progress at shutdown";
    ucp_request_free(c.request);
  }
  closing_.clear();
  // No ucp_worker_progress here: with shm, progressing a worker whose peer worker is already
  // destroyed can run a late wireup and crash UCX 1.13 (keepalive on a failed mm ep).
  // Rendezvous receives still in flight keep their buffers until the worker is destroyed.
  if (!rndv_.empty()) {
    VLOG(1) << "ucx: " << rndv_.size() << " rendezvous receives outstanding at shutdown";
  }
  context_.reset();  // destroys the worker, then the context
  for (RndvRecv* r : rndv_) delete r;
  // Receives into posted buffers UCX never finished: the worker is gone, so nothing writes there
  // any more; their completions cannot run now (the core is tearing down), the buffers' holds
  // stay with the core's records.
  if (!landings_.empty()) {
    LOG(WARNING) << "ucx: " << landings_.size()
                 << " receive(s) into posted buffers still in flight at shutdown";
  }
  for (RndvLanding* l : landings_) delete l;
  for (ReplySend* r : replies_) delete r;
}

// ---------------------------------------------------------------------------------------------
// Operation records

OpRecord* UcxWorker::acquire() {
  OpRecord* rec = free_;
  if (rec != nullptr) {
    free_ = rec->next_free;
  } else {
    records_.push_back(std::make_unique<OpRecord>());
    rec = records_.back().get();
  }
  // A flush group's member list keeps its capacity across reuses of the record.
  std::vector<OrphanRef> members = std::move(rec->members);
  members.clear();
  *rec = OpRecord{};
  rec->members = std::move(members);
  rec->worker = this;
  rec->generation = next_generation_++;
  return rec;
}

void UcxWorker::releaseIfIdle(OpRecord* rec) {
  if (!rec->user_done || rec->pending != 0 || rec->queued) return;
  rec->status = Status::Ok();
  rec->done = nullptr;
  rec->endpoint = nullptr;
  rec->next_free = free_;
  free_ = rec;
}

void UcxWorker::schedule(OpRecord* rec) {
  if (rec->queued) return;
  rec->queued = true;
  attention_.push_back(rec);
}

void UcxWorker::onRequestDone(void* request, ucs_status_t status, void* user_data) try {
  auto* rec = static_cast<OpRecord*>(user_data);
  ucp_request_free(request);
  rec->worker->requestDone(rec, status);
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames.
  LOG(ERROR) << "ucx: request callback: " << e.what();
}

void UcxWorker::requestDone(OpRecord* rec, ucs_status_t status) {
  if (rec->pending > 0) --rec->pending;
  if (status != UCS_OK && rec->status.ok() && !rec->user_done && rec->endpoint != nullptr) {
    rec->status = statusFromUcs(status, rec->callName());
  }
  if (rec->pending != 0) return;
  if (rec->user_done) {
    releaseIfIdle(rec);
  } else {
    schedule(rec);
  }
}

// ---------------------------------------------------------------------------------------------
// Endpoints and routing

Status UcxWorker::addEndpoint(RouteKey key, UcxEndpoint* endpoint) {
  auto [it, inserted] = endpoints_.emplace(key, endpoint);
  if (!inserted) {
    return Status(StatusCode::kInvalidArgument,
                  "ucx: an endpoint with token " + std::to_string(key.first) +
                      " and this role already exists on this transport");
  }
  retired_.erase(key);
  return Status::Ok();
}

void UcxWorker::removeEndpoint(RouteKey key) {
  if (endpoints_.erase(key) != 0) retired_.insert(key);
  held_replies_.erase(key);
  auto it = early_.find(key);
  if (it != early_.end()) {
    for (const auto& m : it->second) early_bytes_ -= m.data.size();
    early_count_ -= it->second.size();
    early_.erase(it);
  }
}

std::vector<BufferedMessage> UcxWorker::takeEarly(RouteKey key) {
  auto it = early_.find(key);
  if (it == early_.end()) return {};
  std::vector<BufferedMessage> out = std::move(it->second);
  early_.erase(it);
  for (const auto& m : out) early_bytes_ -= m.data.size();
  early_count_ -= out.size();
  return out;
}

void UcxWorker::scheduleDelivery(RouteKey key) { deliveries_.push_back(key); }

void UcxWorker::scheduleConnect(RouteKey key) { connects_.push_back(key); }

UcxEndpoint* UcxWorker::find(RouteKey key) const {
  auto it = endpoints_.find(key);
  return it == endpoints_.end() ? nullptr : it->second;
}

void UcxWorker::onEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) try {
  auto* self = static_cast<UcxWorker*>(arg);
  for (auto& [key, endpoint] : self->endpoints_) {
    if (endpoint->ucpEp() == ep) {
      endpoint->markBroken(status);
      self->broken_.emplace_back(key, status);
      return;
    }
  }
  VLOG(1) << "ucx: error on an endpoint that is already closed: " << ucs_status_string(status);
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames.
  LOG(ERROR) << "ucx: endpoint error callback: " << e.what();
}

bool UcxWorker::flushBounded(ucp_ep_h ep, std::chrono::milliseconds limit) {
  if (insideUcxProgress()) return false;
  ucp_request_param_t p{};
  ucs_status_ptr_t req = ucp_ep_flush_nbx(ep, &p);
  if (!UCS_PTR_IS_PTR(req)) return UCS_PTR_STATUS(req) == UCS_OK;
  InProgressScope scope(in_ucx_progress_);
  auto deadline = std::chrono::steady_clock::now() + limit;
  ucs_status_t st;
  while ((st = ucp_request_check_status(req)) == UCS_INPROGRESS &&
         std::chrono::steady_clock::now() < deadline) {
    ucp_worker_progress(worker());
  }
  if (st == UCS_INPROGRESS) {
    // The force close that follows completes it (cancelled); UCX frees it then.
    ucp_request_free(req);
    return false;
  }
  ucp_request_free(req);
  return st == UCS_OK;
}

void UcxWorker::finishClose(void* request, std::vector<OrphanRef> orphans) {
  if (!insideUcxProgress()) {
    InProgressScope scope(in_ucx_progress_);
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (ucp_request_check_status(request) == UCS_INPROGRESS &&
           std::chrono::steady_clock::now() < deadline) {
      ucp_worker_progress(worker());
    }
  }
  ucs_status_t st = ucp_request_check_status(request);
  if (st == UCS_INPROGRESS) {
    closing_.push_back({request, std::move(orphans)});  // progress() finishes it
    return;
  }
  releaseOrphans(orphans);
  if (st != UCS_OK && st != UCS_ERR_CANCELED && st != UCS_ERR_CONNECTION_RESET &&
      st != UCS_ERR_ENDPOINT_TIMEOUT) {
    LOG(WARNING) << "ucp_ep_close_nbx: " << ucs_status_string(st);
  }
  ucp_request_free(request);
}

void UcxWorker::pollClosing() {
  for (size_t i = 0; i < closing_.size();) {
    if (ucp_request_check_status(closing_[i].request) == UCS_INPROGRESS) {
      ++i;
      continue;
    }
    ucp_request_free(closing_[i].request);
    std::vector<OrphanRef> orphans = std::move(closing_[i].orphans);
    closing_[i] = std::move(closing_.back());
    closing_.pop_back();
    releaseOrphans(orphans);
  }
}

void UcxWorker::releaseOrphans(const std::vector<OrphanRef>& orphans) {
  for (const OrphanRef& o : orphans) {
    OpRecord* rec = o.rec;
    if (rec->generation != o.generation || rec->user_done || rec->done == nullptr) continue;
    // The ep is destroyed: UCX no longer touches this operation's memory. The record itself
    // stays out of the pool until its requests call back (if they ever do), so a late callback
    // cannot land on a reused record.
    Completion* done = rec->done;
    Status status = rec->status;
    rec->user_done = true;
    releaseIfIdle(rec);
    done->complete(std::move(status));
  }
}

// ---------------------------------------------------------------------------------------------
// Receiving

ucs_status_t UcxWorker::onAmMessage(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param) try {
  wireAcquire();
  auto* self = static_cast<UcxWorker*>(arg);
  AmHeader h;
  if (!parseHeader(header, header_length, &h)) {
    LOG(WARNING) << "ucx: dropping a message with a malformed header (" << header_length
                 << " bytes)";
    return UCS_OK;
  }
  RouteKey key = receiverKey(h);
  if (self->retired_.count(key) != 0) {
    VLOG(1) << "ucx: dropping a message for closed connection " << h.token;
    return UCS_OK;
  }
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    UcxEndpoint* ep = self->find(key);
    if (ep != nullptr && length > ep->maxMessageSize()) {
      ep->protocolViolation("a message of " + std::to_string(length) +
                            " bytes exceeds the connection's max_message_size of " +
                            std::to_string(ep->maxMessageSize()));
      return UCS_OK;
    }
    self->deliverMessage(key, h.value, static_cast<const uint8_t*>(data), length);
    return UCS_OK;
  }
  // Rendezvous: straight into the posted receive buffer when the core has one for it; else into
  // a buffer of our own, delivered (in order) when it lands. The length is the peer's word:
  // nothing beyond the connection's max_message_size is received or allocated.
  UcxEndpoint* ep = self->find(key);
  size_t limit = ep != nullptr ? ep->maxMessageSize() : kMaxEarlyMessage;
  if (length > limit) {
    if (ep != nullptr) {
      ep->protocolViolation("a message of " + std::to_string(length) +
                            " bytes exceeds the connection's max_message_size of " +
                            std::to_string(limit));
    } else {
      LOG(WARNING) << "ucx: dropping a " << length << "-byte message for unknown connection "
                   << h.token;
    }
    return UCS_OK;  // UCX releases the rendezvous without receiving it
  }
  if (ep != nullptr && ep->holdInOrder(h.value, data, length)) return UCS_INPROGRESS;
  auto* r = new RndvRecv{self, key, h.value, std::vector<uint8_t>(length)};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = &onRndvDone;
  p.user_data = r;
  ucs_status_ptr_t ptr = ucp_am_recv_data_nbx(self->worker(), data, r->buffer.data(), length, &p);
  if (UCS_PTR_IS_PTR(ptr)) {
    self->rndv_.insert(r);
    return UCS_INPROGRESS;
  }
  ucs_status_t st = UCS_PTR_STATUS(ptr);
  BufferedMessage m;
  m.value = r->seq;
  if (st == UCS_OK) {
    m.data = std::move(r->buffer);
  } else {
    LOG(ERROR) << "ucp_am_recv_data_nbx: " << ucs_status_string(st) << "; message " << r->seq
               << " of connection " << h.token << " is lost";
    m.hole = true;
  }
  delete r;
  self->deliverOwned(key, std::move(m));
  return UCS_INPROGRESS;
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames; the message is dropped (and its connection,
  // which the handler could not finish delivering to, fails: see failFromCallback).
  LOG(ERROR) << "ucx: message handler: " << e.what();
  AmHeader h;
  if (parseHeader(header, header_length, &h)) {
    if (UcxEndpoint* ep = static_cast<UcxWorker*>(arg)->find(receiverKey(h))) {
      ep->failFromCallback(
          Status(StatusCode::kResourceExhausted,
                 std::string("a received message could not be kept: ") + e.what()));
    }
  }
  return UCS_OK;
}

void UcxWorker::onRndvDone(void* request, ucs_status_t status, size_t /*length*/,
                           void* user_data) try {
  auto* r = static_cast<RndvRecv*>(user_data);
  ucp_request_free(request);
  UcxWorker* self = r->worker;
  self->rndv_.erase(r);
  BufferedMessage m;
  m.value = r->seq;
  if (status == UCS_OK) {
    m.data = std::move(r->buffer);
  } else {
    if (status != UCS_ERR_CANCELED) {
      LOG(ERROR) << "ucp_am_recv_data_nbx: " << ucs_status_string(status) << "; message " << r->seq
                 << " of connection " << r->key.first << " is lost";
    }
    m.hole = true;
  }
  RouteKey key = r->key;
  delete r;
  self->deliverOwned(key, std::move(m));
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames.
  LOG(ERROR) << "ucx: rendezvous completion: " << e.what();
}

Status UcxWorker::receiveInto(void* desc, size_t length, const ReceiveTarget& target) {
  auto* l = new RndvLanding{this, target.landed};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = &onLandingDone;
  p.user_data = l;
  setMemh(&p, target.local);
  ucs_status_ptr_t ptr = ucp_am_recv_data_nbx(worker(), desc, target.buffer, length, &p);
  if (UCS_PTR_IS_PTR(ptr)) {
    landings_.insert(l);
    return Status::Ok();
  }
  delete l;
  ucs_status_t st = UCS_PTR_STATUS(ptr);
  if (st != UCS_OK) return statusFromUcs(st, "ucp_am_recv_data_nbx");
  target.landed->complete(Status::Ok());
  return Status::Ok();
}

void UcxWorker::onLandingDone(void* request, ucs_status_t status, size_t /*length*/,
                              void* user_data) try {
  auto* l = static_cast<RndvLanding*>(user_data);
  ucp_request_free(request);
  l->worker->landings_.erase(l);
  Completion* landed = l->landed;
  delete l;
  landed->complete(status == UCS_OK ? Status::Ok() : statusFromUcs(status, "ucp_am_recv_data_nbx"));
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames.
  LOG(ERROR) << "ucx: in-place rendezvous completion: " << e.what();
}

ucs_status_t UcxWorker::onAmNotify(void* arg, const void* header, size_t header_length,
                                   void* /*data*/, size_t /*length*/,
                                   const ucp_am_recv_param_t* /*param*/) try {
  wireAcquire();
  auto* self = static_cast<UcxWorker*>(arg);
  AmHeader h;
  if (!parseHeader(header, header_length, &h)) {
    LOG(WARNING) << "ucx: dropping a notify with a malformed header";
    return UCS_OK;
  }
  self->deliverNotify(receiverKey(h), static_cast<uint32_t>(h.value));
  return UCS_OK;
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames (this one only allocates a log line).
  LOG(ERROR) << "ucx: notify handler: " << e.what();
  return UCS_OK;
}

ucs_status_t UcxWorker::onAmHello(void* arg, const void* header, size_t header_length,
                                  void* /*data*/, size_t /*length*/,
                                  const ucp_am_recv_param_t* /*param*/) try {
  wireAcquire();
  auto* self = static_cast<UcxWorker*>(arg);
  AmHeader h;
  if (!parseHeader(header, header_length, &h) || h.role != 0) {
    LOG(WARNING) << "ucx: dropping a malformed hello";
    return UCS_OK;
  }
  RouteKey key = receiverKey(h);
  if (self->find(key) != nullptr) {
    self->scheduleConnect(key);
  } else {
    BufferedMessage m;
    m.is_hello = true;
    self->stashEarly(key, std::move(m));
  }
  return UCS_OK;
} catch (const std::exception& e) {
  // An exception must not cross UCX's C frames (this one only allocates a log line).
  LOG(ERROR) << "ucx: hello handler: " << e.what();
  return UCS_OK;
}

void UcxWorker::deliverMessage(RouteKey key, uint64_t seq, const uint8_t* data, size_t length) {
  if (UcxEndpoint* ep = find(key)) {
    ep->receiveMessage(seq, data, length);
    return;
  }
  BufferedMessage m;
  m.value = seq;
  m.data.assign(data, data + length);
  stashEarly(key, std::move(m));
}

void UcxWorker::deliverOwned(RouteKey key, BufferedMessage message) {
  if (UcxEndpoint* ep = find(key)) {
    ep->receiveOwned(std::move(message));
    return;
  }
  stashEarly(key, std::move(message));
}

void UcxWorker::deliverNotify(RouteKey key, uint32_t value) {
  if (UcxEndpoint* ep = find(key)) {
    ep->receiveNotify(value);
    return;
  }
  BufferedMessage m;
  m.is_notify = true;
  m.value = value;
  stashEarly(key, std::move(m));
}

void UcxWorker::stashEarly(RouteKey key, BufferedMessage message) {
  if (retired_.count(key) != 0) {
    VLOG(1) << "ucx: dropping a message for closed connection " << key.first;
    return;
  }
  if (early_count_ >= kMaxEarlyCount || early_bytes_ + message.data.size() > kMaxEarlyBytes) {
    LOG(WARNING) << "ucx: dropping a message for unknown connection " << key.first
                 << " (early-message buffer full)";
    return;
  }
  VLOG(1) << "ucx: buffering a message for connection " << key.first
          << " until its endpoint exists";
  early_bytes_ += message.data.size();
  ++early_count_;
  early_[key].push_back(std::move(message));
}

// ---------------------------------------------------------------------------------------------
// Progress

int UcxWorker::progress() {
  int events = 0;
  {
    InProgressScope scope(in_ucx_progress_);
    for (int i = 0; i < kMaxProgressRounds; ++i) {
      unsigned n = ucp_worker_progress(worker());
      if (n == 0) break;
      events += static_cast<int>(n);
    }
  }
  if (!closing_.empty()) pollClosing();
  events += drainDeferred();
  return events;
}

int UcxWorker::drainDeferred() {
  int events = 0;
  // Peer failures first: their ops complete with kConnectionBroken, not with UCX's statuses.
  while (!broken_.empty()) {
    auto broken = std::move(broken_);
    broken_.clear();
    for (auto& [key, status] : broken) {
      if (UcxEndpoint* ep = find(key)) {
        ep->reportBroken();
        ++events;
      }
    }
  }
  while (!connects_.empty()) {
    auto keys = std::move(connects_);
    connects_.clear();
    for (RouteKey key : keys) {
      if (UcxEndpoint* ep = find(key)) {
        ep->connectToPeer();
        ++events;
      }
    }
  }
  while (!deliveries_.empty()) {
    auto keys = std::move(deliveries_);
    deliveries_.clear();
    for (RouteKey key : keys) {
      if (UcxEndpoint* ep = find(key)) {
        ep->deliverBuffered();
        ++events;
      }
    }
  }
  // Records can be re-queued by what advance() posts and by user completions: loop, bounded.
  for (int round = 0; round < 16 && !attention_.empty(); ++round) {
    attention_spare_.clear();
    std::swap(attention_, attention_spare_);
    for (OpRecord* rec : attention_spare_) {
      rec->queued = false;
      if (!rec->user_done && rec->endpoint == nullptr && rec->pending == 0) {
        // Orphaned by its endpoint's close while UCX still held it: released now.
        Completion* done = rec->done;
        Status status = rec->status;
        rec->user_done = true;
        releaseIfIdle(rec);
        if (done != nullptr) done->complete(std::move(status));
        ++events;
        continue;
      }
      if (rec->user_done || rec->endpoint == nullptr) {
        releaseIfIdle(rec);
        continue;
      }
      if (rec->pending == 0 && rec->awaiting == 0) {
        rec->endpoint->advance(rec);
        ++events;
      }
    }
  }
  return events;
}

bool UcxWorker::hasDeferredWork() const {
  return !attention_.empty() || !broken_.empty() || !deliveries_.empty() || !connects_.empty() ||
         !closing_.empty();
}

}  // namespace zcx::transport::ucx

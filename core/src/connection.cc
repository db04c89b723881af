#include "zcx/connection.h"

#include <glog/logging.h>

#include <cstring>

#include "connection_impl.h"
#include "control_protocol.h"
#include "request_pool.h"
#include "zcx/engine.h"

namespace zcx {
namespace detail {
namespace {

// Users hold this through Connection: when the last copy goes, the connection closes.
struct ConnectionHandle {
  explicit ConnectionHandle(std::shared_ptr<ConnectionImpl> c) : impl(std::move(c)) {}
  ConnectionHandle(const ConnectionHandle&) = delete;
  ConnectionHandle& operator=(const ConnectionHandle&) = delete;
  ~ConnectionHandle() {
    impl->close(Status(StatusCode::kCancelled, "connection closed locally"), true);
  }
  std::shared_ptr<ConnectionImpl> impl;
};

Connection wrap(std::shared_ptr<ConnectionImpl> impl) {
  auto handle = std::make_shared<ConnectionHandle>(std::move(impl));
  ConnectionImpl* raw = handle->impl.get();
  return Connection(std::shared_ptr<ConnectionImpl>(handle, raw));
}

bool rangeOk(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

std::string rangeText(uint64_t offset, uint64_t length, uint64_t size) {
  // Appended, not "[" + std::string&&: at -O3 GCC 12 warns a bogus -Wrestrict on the inlined
  // insert-at-front (GCC PR105329/PR105651).
  std::string text = "[";
  text += std::to_string(offset) + ", " + std::to_string(offset) + "+" + std::to_string(length);
  return text + ") of a " + std::to_string(size) + "-byte region";
}

thread_local std::vector<transport::RmaOp> scratch_ops;

}  // namespace

ConnectionImpl::ConnectionImpl(std::shared_ptr<EngineImpl> engine, uint64_t conn_id, Fd control,
                               std::string peer)
    : id(conn_id),
      peer_name(std::move(peer)),
      engine_(std::move(engine)),
      metrics_(engine_->metrics.add(id, peer_name)),
      control_(std::move(control)) {}

ConnectionImpl::~ConnectionImpl() {
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    breakLocked(Status(StatusCode::kCancelled, "connection destroyed"));
  }
  engine_->revokeConnectionGrants(*this);  // after the endpoint: no bind completes later
}

Status ConnectionImpl::createEndpoint(const transport::EndpointSetup& setup) {
  std::lock_guard<std::mutex> lock(engine_->mu);
  auto ep = engine_->transport->createEndpoint(setup);
  if (!ep.ok()) return ep.status().withContext("creating the transport endpoint");
  endpoint_ = std::move(*ep);
  scope_ = transport::ConnectionScope{setup.token, setup.role};
  engine_->live.push_back(this);
  return Status::Ok();
}

Status ConnectionImpl::bindGrant(transport::RemoteGrant* grant, transport::Completion* done) {
  std::lock_guard<std::mutex> lock(engine_->mu);
  if (!endpoint_ || closed_) {
    return broken_.ok() ? Status(StatusCode::kConnectionBroken, "the connection is closed")
                        : broken_;
  }
  return endpoint_->bindGrant(grant, done);
}

Status ConnectionImpl::waitReady(Clock::time_point deadline) {
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(engine_->mu);
      if (!endpoint_) return broken_;
      engine_->progressTransportLocked();
      auto state = endpoint_->state();
      if (state == transport::EndpointState::kReady) return Status::Ok();
      if (state == transport::EndpointState::kBroken) return endpoint_->error();
    }
    if (Clock::now() >= deadline) {
      return Status(StatusCode::kTimedOut,
                    "the transport connection did not come up within connect_timeout");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

std::optional<Status> ConnectionImpl::pollReady() {
  std::lock_guard<std::mutex> lock(engine_->mu);
  if (!endpoint_)
    return broken_.ok() ? Status(StatusCode::kCancelled, "connection closed") : broken_;
  auto state = endpoint_->state();
  if (state == transport::EndpointState::kReady) return Status::Ok();
  if (state == transport::EndpointState::kBroken) return endpoint_->error();
  return std::nullopt;
}

void ConnectionImpl::setPeerRegions(std::map<std::string, std::vector<uint8_t>> regions) {
  std::lock_guard<std::mutex> lock(lookup_mu_);
  peer_regions_ = std::move(regions);
}

// ---------------------------------------------------------------- lifecycle

void ConnectionImpl::breakLocked(Status why, bool peer_left) {
  if (closed_) return;
  closed_ = true;
  metrics_->markClosed();
  // Held access errors become the peer's departure only on a connection the transport reported
  // failing (verbs: a refusal breaks the QP); a refusal on one that survives is the op's own.
  const bool transport_failing = !broken_.ok();
  broken_ = why.ok() ? Status(StatusCode::kCancelled, "connection closed") : why;
  releaseAccessErrorsLocked(peer_left && transport_failing, broken_);
  // Sends still waiting for the peer's grant never reached the transport.
  while (!blocked_sends_.empty()) {
    RequestState* r = blocked_sends_.front().request;
    blocked_sends_.pop_front();
    abandonLocked(r, broken_);
  }
  failUnsignaledLocked();
  failLandingsLocked();  // before the endpoint's close completes what it was still writing
  if (endpoint_) endpoint_->close(broken_);  // completes what the transport could release
  // What the transport still holds completes for the user now; the transport completes it
  // (releasing its memory) once it no longer touches it. `self` keeps each alive until then.
  while (head_ != nullptr) {
    RequestState* r = head_;
    unlink(r);
    r->finish(broken_);
  }
  for (auto& [bytes, ref] : keys_) ref->key.reset();  // keys go before their endpoint
  keys_.clear();
  endpoint_.reset();
  for (auto& p : posted_) finishRecv(p, broken_, 0);
  posted_.clear();
  // After the peer's BYE, what arrived in full stays for later receives, as data before a TCP
  // FIN does; the stream ends at the first message that did not (the endpoint's close released
  // the held ones).
  auto arrived = unexpected_.begin();
  if (keep_arrived_) {
    while (arrived != unexpected_.end() && !arrived->held &&
           (!arrived->spill || (arrived->spill->landed && arrived->spill->status.ok())))
      ++arrived;
  }
  for (auto it = arrived; it != unexpected_.end(); ++it) unholdLocked(*it);
  unexpected_.erase(arrived, unexpected_.end());
  auto& live = engine_->live;
  live.erase(std::remove(live.begin(), live.end(), this), live.end());
  engine_->event.notify_all();
  engine_->wakeSleepingWaiters();  // waitNotification in manual mode
}

void ConnectionImpl::close(Status why, bool tell_peer) {
  // BYE first, so the peer hears it before our endpoint goes away (it then reports kCancelled,
  // "closed the connection"). Once it closes its side, our transport reports the closed
  // endpoint; that report waits kTransportErrorGrace, so this close's own reason wins.
  // BYE goes out if the socket takes it now; otherwise the peer learns from the EOF.
  if (tell_peer && !bye_sent_.exchange(true)) (void)queueControlFrame(FrameType::kBye, {});
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    breakLocked(std::move(why));
  }
  engine_->kick();  // callbacks run on the progress thread, never inside close()
  engine_->forgetConnection(this);
  engine_->revokeConnectionGrants(*this);
  {
    std::lock_guard<std::mutex> lock(lookup_mu_);
    control_closed_ = true;
  }
  lookup_cv_.notify_all();
}

Status ConnectionImpl::status() const {
  std::lock_guard<std::mutex> lock(engine_->mu);
  return closed_ ? broken_ : Status::Ok();
}

bool ConnectionImpl::holdAccessErrorLocked(std::shared_ptr<RequestState> r, Status status) {
  if (closed_ || r == nullptr || r->done()) return false;
  held_access_errors_.push_back({std::move(r), std::move(status)});
  ++engine_->held_access_errors;
  return true;
}

void ConnectionImpl::settleAccessErrorsLocked(Clock::time_point now) {
  if (held_access_errors_.empty()) return;
  // Not failing: the error is the operation's own (a check of ours, or a key the peer revoked
  // on a transport whose connection survives it). Failing: breakLocked settles them, within
  // EngineImpl's grace for access errors, unless a deadline comes first.
  releaseAccessErrorsLocked(false, broken_, broken_.ok() ? Clock::time_point::max() : now);
}

void ConnectionImpl::releaseAccessErrorsLocked(bool peer_left, const Status& why,
                                               Clock::time_point due) {
  size_t kept = 0;
  for (auto& h : held_access_errors_) {
    if (due != Clock::time_point::max() && h.request->deadline > due) {
      if (&held_access_errors_[kept] != &h) held_access_errors_[kept] = std::move(h);
      ++kept;  // (a self-move would empty the status's message)
      continue;
    }
    if (peer_left) {
      h.request->finish(Status(
          why.code(), why.message() + " while the operation ran (it was " +
                          "refused as the peer's memory went first: " + h.status.message() + ")"));
    } else {
      h.request->finish(std::move(h.status));
    }
  }
  engine_->held_access_errors -= held_access_errors_.size() - kept;
  held_access_errors_.resize(kept);
}

void ConnectionImpl::onError(Status why) {
  LOG(WARNING) << "zcx: connection to " << peer_name << " failed: " << why.toString();
  if (!closed_ && broken_.ok()) {
    broken_ = why;
    // Owned, not `this`: the queue may outlive every other owner (a failed handshake).
    if (auto self = weak_from_this().lock()) engine_->scheduleClose(std::move(self));
  }
}

bool ConnectionImpl::onControlReadable() {
  // A few frames per wake-up, then the other sockets get their turn (level-triggered: the
  // rest is read on the next round). A partial frame just waits in control_in_.
  for (int i = 0; i < 8; ++i) {
    auto f = control_in_.read(control_.get());
    Status end;
    if (!f.ok()) {
      const StatusCode code = f.status().code();
      if (code == StatusCode::kProtocolError || code == StatusCode::kPermissionDenied) {
        // A frame that breaks the protocol or fails its MAC: someone else is on the channel.
        end = f.status().withContext("control channel of " + peer_name);
        LOG(WARNING) << "zcx: closing the connection to " << peer_name << ": " << end.toString();
      } else {
        end = Status(StatusCode::kConnectionBroken,
                     "peer " + peer_name + " is gone (" + f.status().message() + ")");
      }
    } else if (!f->has_value()) {
      return true;
    } else {
      handleControlFrame(std::move(**f), &end);
    }
    if (!end.ok()) {
      endControl(std::move(end));
      return false;
    }
  }
  return true;
}

void ConnectionImpl::handleControlFrame(Frame f, Status* end) {
  if (f.type == FrameType::kBye) {
    // The peer sent everything before its BYE, and its close flushed it to our transport:
    // deliver what already arrived (posted receives complete) before the connection ends, and
    // keep what no receive took yet for receives posted later.
    {
      std::lock_guard<std::mutex> lock(engine_->mu);
      for (int i = 0; i < 64 && !closed_ && engine_->progressTransportLocked() > 0; ++i) {
      }
    }
    keepArrivedOnBye();
    // kCancelled, like a local close: the peer is alive and closing its side too (the transport
    // may close gracefully); kConnectionBroken is for a peer that died or a link that failed.
    *end = Status(StatusCode::kCancelled, "peer " + peer_name + " closed the connection");
  } else if (f.type == FrameType::kLookup) {
    auto l = decodeLookup(f.body);
    if (!l.ok()) {
      *end = l.status();
      return;
    }
    const uint64_t lookup_id = l->id;
    std::weak_ptr<ConnectionImpl> weak = weak_from_this();
    auto answer = engine_->lookupExposure(
        l->name, *this, [weak, lookup_id](std::optional<std::vector<uint8_t>> d) {
          // A bound grant's answer, from a progress thread; a closed connection takes none.
          auto self = weak.lock();
          if (!self) return;
          LookupReply reply{lookup_id, d.has_value(), d.value_or(std::vector<uint8_t>{})};
          (void)self->queueControlFrame(FrameType::kLookupReply, encode(reply));
        });
    if (answer.pending) return;
    LookupReply reply{lookup_id, answer.descriptor.has_value(),
                      answer.descriptor.value_or(std::vector<uint8_t>{})};
    Status queued = queueControlFrame(FrameType::kLookupReply, encode(reply));
    if (!queued.ok()) *end = queued.withContext("answering a lookup of " + peer_name);
  } else if (f.type == FrameType::kLookupReply) {
    auto l = decodeLookupReply(f.body);
    if (!l.ok()) {
      *end = l.status();
      return;
    }
    std::lock_guard<std::mutex> lock(lookup_mu_);
    auto it = lookups_.find(l->id);
    if (it != lookups_.end()) it->second = std::make_pair(l->found, std::move(l->descriptor));
    lookup_cv_.notify_all();
  } else if (f.type == FrameType::kUnexpose) {
    // The body is the name (its size was checked on the header); lookups now ask the peer.
    std::string name(f.body.begin(), f.body.end());
    std::lock_guard<std::mutex> lock(lookup_mu_);
    peer_regions_.erase(name);
  } else if (f.type == FrameType::kCredit) {
    auto limit = decodeCredit(f.body);
    if (!limit.ok()) {
      *end = limit.status();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(engine_->mu);
      if (*limit > send_limit_) {
        send_limit_ = *limit;
        postBlockedLocked();
      }
    }
    engine_->notePosted();
  } else {
    *end = Status(StatusCode::kProtocolError, std::string("unexpected ") +
                                                  frameTypeName(static_cast<uint8_t>(f.type)) +
                                                  " control frame from " + peer_name);
  }
}

bool ConnectionImpl::onControlWritable(bool* pending) {
  Status sent;
  {
    std::lock_guard<std::mutex> lock(control_write_mu_);
    sent = control_out_.flush(control_.get());
    *pending = !control_out_.empty();
  }
  if (sent.ok()) return true;
  endControl(Status(StatusCode::kConnectionBroken,
                    "peer " + peer_name + " is gone (" + sent.message() + ")"));
  return false;
}

bool ConnectionImpl::controlWritePending() {
  std::lock_guard<std::mutex> lock(control_write_mu_);
  return !control_out_.empty();
}

void ConnectionImpl::adoptControlOutput(FrameWriter out) {
  std::lock_guard<std::mutex> lock(control_write_mu_);
  control_out_ = std::move(out);
}

void ConnectionImpl::authenticateControl(ChannelMacs macs) {
  {
    std::lock_guard<std::mutex> lock(control_write_mu_);
    control_out_.authenticate(std::move(macs.send));
  }
  control_in_.authenticate(std::move(macs.receive));  // before the control loop watches it
}

Status ConnectionImpl::queueControlFrame(FrameType type, const std::vector<uint8_t>& body) {
  bool pending;
  {
    std::lock_guard<std::mutex> lock(control_write_mu_);
    ZCX_RETURN_IF_ERROR(control_out_.queue(type, body));
    ZCX_RETURN_IF_ERROR(control_out_.flush(control_.get()));
    pending = !control_out_.empty();
  }
  if (pending) engine_->wantControlWrite(id);
  return Status::Ok();
}

void ConnectionImpl::endControl(Status why) {
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    // EOF or BYE; not a channel someone else broke into (kProtocolError, kPermissionDenied).
    const bool peer_left =
        why.code() == StatusCode::kConnectionBroken || why.code() == StatusCode::kCancelled;
    breakLocked(std::move(why), peer_left);
  }
  engine_->kick();
  engine_->revokeConnectionGrants(*this);
  {
    std::lock_guard<std::mutex> lock(lookup_mu_);
    control_closed_ = true;
  }
  lookup_cv_.notify_all();
}

// ---------------------------------------------------------------- regions

Result<RemoteRegion> ConnectionImpl::remoteRegion(std::string_view region_name,
                                                  std::chrono::milliseconds timeout) {
  std::string key(region_name);
  std::vector<uint8_t> bytes;
  {
    std::unique_lock<std::mutex> lock(lookup_mu_);
    auto it = peer_regions_.find(key);
    if (it != peer_regions_.end()) {
      bytes = it->second;
    } else {
      if (control_closed_)
        return Status(StatusCode::kConnectionBroken, "connection to " + peer_name + " is closed");
      uint64_t lid = next_lookup_++;
      lookups_[lid];
      lock.unlock();
      Status sent = queueControlFrame(FrameType::kLookup, encode(Lookup{lid, key}));
      lock.lock();
      bool got = sent.ok() && lookup_cv_.wait_for(lock, timeout, [&] {
        return lookups_[lid].has_value() || control_closed_;
      });
      // Taken out of the optional in place: moving the optional out made GCC 12 -O3 report its
      // vector maybe-uninitialized (std::optional false positive, GCC PR80635).
      auto& answer = lookups_[lid];
      const bool answered = answer.has_value(), found = answered && answer->first;
      if (found) bytes = std::move(answer->second);
      lookups_.erase(lid);
      if (!sent.ok()) return sent;
      if (!got)
        return Status(StatusCode::kTimedOut,
                      "peer " + peer_name + " did not answer the lookup of '" + key + "'");
      if (!answered)
        return Status(StatusCode::kConnectionBroken,
                      "connection to " + peer_name + " closed during lookup");
      if (!found) {
        return Status(StatusCode::kNotFound,
                      "peer " + peer_name + " exposes no region named '" + key +
                          "' to us; call Engine::expose(\"" + key +
                          "\", region) there first (with ExposeOptions::peers, our name " +
                          engine_->name + " must be in the list)");
      }
      peer_regions_[key] = bytes;
    }
  }
  auto d = RegionDescriptor::decode(bytes);
  if (!d.ok()) return d.status().withContext("region '" + key + "'");
  return importRegion(*d);
}

Result<RemoteRegion> ConnectionImpl::importRegion(const RegionDescriptor& d) {
  std::lock_guard<std::mutex> lock(engine_->mu);
  if (closed_) return broken_;
  if (d.transport != engine_->transport->name()) {
    return Status(StatusCode::kInvalidArgument, "descriptor is for transport '" + d.transport +
                                                    "' but this connection uses '" +
                                                    std::string(engine_->transport->name()) + "'");
  }
  if (d.access == kLocalOnly) {
    return Status(StatusCode::kPermissionDenied,
                  "the peer registered this region for local use only; register it with "
                  "kRemoteRead/kRemoteWrite");
  }
  RemoteRegion r;
  r.descriptor_ = d;
  auto it = keys_.find(d.key);
  if (it != keys_.end()) {
    r.key_ = it->second;
    return r;
  }
  auto k = endpoint_->importKey(d.key);
  if (!k.ok()) return k.status().withContext("importing the region's remote key");
  auto ref = std::make_shared<RemoteKeyRef>();
  ref->key = std::move(*k);
  ref->connection_id = id;
  keys_[d.key] = ref;
  r.key_ = std::move(ref);
  return r;
}

// ---------------------------------------------------------------- operations

void ConnectionImpl::trackLocked(const std::shared_ptr<RequestState>& r) {
  r->deadline = EngineImpl::coarseNow() + engine_->options.operation_timeout;
  r->self = r;
  r->connection = this;
  r->prev = tail_;
  r->next = nullptr;
  (tail_ ? tail_->next : head_) = r.get();
  tail_ = r.get();
}

void ConnectionImpl::unlink(RequestState* r) {
  if (r->connection != this) return;
  (r->prev ? r->prev->next : head_) = r->next;
  (r->next ? r->next->prev : tail_) = r->prev;
  r->prev = r->next = nullptr;
  r->connection = nullptr;
}

std::shared_ptr<RequestState> ConnectionImpl::newRequest(OpKind kind) {
  static_assert(sizeof(RequestState) + 64 <= RequestBlockCache::kBlockBytes,
                "a RequestState with its shared_ptr control block must fit a pool block");
  auto r = std::allocate_shared<RequestState>(PoolAllocator<RequestState>(), engine_);
  r->metrics = metrics_;
  r->op_kind = kind;
  r->posted = Clock::now();  // the exact clock: latencies are in microseconds
  return r;
}

Request ConnectionImpl::failed(OpKind kind, Status s) {
  auto r = newRequest(kind);
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    r->finish(std::move(s));
  }
  return Request(std::move(r));
}

// The one way an operation reaches the transport: under the engine lock, linked into the
// outstanding list with its deadline before posting, unlinked and failed if the post fails.
template <class PostFn>
Request ConnectionImpl::post(OpKind kind, size_t bytes, PostFn&& post_to_transport) {
  auto r = newRequest(kind);
  r->setBytes(bytes);
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    if (closed_) {
      r->finish(broken_);
    } else {
      trackLocked(r);
      Status st = post_to_transport(r.get());
      if (!st.ok()) abandonLocked(r.get(), st);  // nothing was posted: no complete() comes
    }
  }
  engine_->notePosted();
  return Request(std::move(r));
}

Status ConnectionImpl::checkRmaOp(bool write, size_t i, const RmaOp& op) const {
  const char* what = write ? "write" : "read";
  const uint32_t need = write ? kRemoteWrite : kRemoteRead;
  auto where = [&] { return std::string(what) + " op " + std::to_string(i) + ": "; };
  if (!op.local || !op.local->valid() || !op.remote || !op.remote->key_) {
    return Status(StatusCode::kInvalidArgument,
                  where() + "needs a registered local region and an imported remote region");
  }
  if (op.local->state()->engine != engine_) {
    return Status(StatusCode::kInvalidArgument, where() + "local region belongs to another engine");
  }
  if (op.remote->key_->connection_id != id) {
    return Status(StatusCode::kInvalidArgument,
                  where() +
                      "remote region was imported on another connection (or an earlier "
                      "connection to this peer); import it on this one with "
                      "remoteRegion() or importRegion()");
  }
  if (!rangeOk(op.local_offset, op.length, op.local->size())) {
    return Status(
        StatusCode::kOutOfRange,
        where() + "local range " + rangeText(op.local_offset, op.length, op.local->size()));
  }
  const RegionDescriptor& d = op.remote->descriptor();
  if (!rangeOk(op.remote_offset, op.length, d.length)) {
    return Status(StatusCode::kOutOfRange, where() + "remote range " +
                                               rangeText(op.remote_offset, op.length, d.length) +
                                               "; nothing was posted");
  }
  if (!(d.access & need)) {
    return Status(StatusCode::kPermissionDenied,
                  where() + "the peer's region does not allow remote " + what +
                      "s (registered with access " + std::to_string(d.access) + ")");
  }
  return Status::Ok();
}

Request ConnectionImpl::postRma(bool write, std::span<const RmaOp> ops,
                                std::optional<uint32_t> notify) {
  const char* what = write ? "write" : "read";
  const OpKind kind = write ? OpKind::kWrite : OpKind::kRead;
  auto& tops = scratch_ops;
  tops.clear();
  size_t total = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    const RmaOp& op = ops[i];
    if (Status st = checkRmaOp(write, i, op); !st.ok()) return failed(kind, std::move(st));
    tops.push_back({op.local->state()->handle.get(),
                    reinterpret_cast<uint64_t>(op.local->data()) + op.local_offset, nullptr,
                    op.remote->descriptor().address + op.remote_offset, op.length});
    total += op.length;
  }
  return post(kind, total, [&](RequestState* r) {
    for (size_t i = 0; i < ops.size(); ++i) {
      const auto& key = ops[i].remote->key_;
      if (!key->key) {  // its connection closed (checked under the lock that resets it)
        return Status(StatusCode::kConnectionBroken,
                      std::string(what) + " op " + std::to_string(i) +
                          ": the remote region's connection is closed; import it again on a "
                          "new connection");
      }
      tops[i].remote = key->key.get();
      r->pin(ops[i].local->state(), key);
    }
    return write ? endpoint_->postWrite(tops, notify, r) : endpoint_->postRead(tops, r);
  });
}

Request ConnectionImpl::send(const MemoryRegion& local, size_t offset, size_t length) {
  if (!local.valid() || local.state()->engine != engine_) {
    return failed(OpKind::kSend, Status(StatusCode::kInvalidArgument,
                                        "send needs a region registered by this engine"));
  }
  if (!rangeOk(offset, length, local.size())) {
    return failed(OpKind::kSend, Status(StatusCode::kOutOfRange,
                                        "send range " + rangeText(offset, length, local.size())));
  }
  if (length > max_message_size) {
    return failed(OpKind::kSend,
                  Status(StatusCode::kOutOfRange,
                         "message of " + std::to_string(length) + " bytes exceeds the " +
                             std::to_string(max_message_size) +
                             "-byte limit of this connection (max_message_size of both sides); "
                             "split it or use write()"));
  }
  return post(OpKind::kSend, length, [&](RequestState* r) {
    r->pin(local.state(), nullptr);
    transport::MemoryHandle* handle = local.state()->handle.get();
    uint64_t addr = reinterpret_cast<uint64_t>(local.data()) + offset;
    if (sent_ < send_limit_ && blocked_sends_.empty()) {
      Status st = endpoint_->postSend(handle, addr, length, r);
      if (st.ok()) ++sent_;
      return st;
    }
    // Past the peer's grant: waits (with its deadline running) for a CREDIT frame.
    blocked_sends_.push_back({r, handle, addr, length});
    return Status::Ok();
  });
}

Request ConnectionImpl::recv(const MemoryRegion& local, size_t offset, size_t capacity) {
  if (!local.valid() || local.state()->engine != engine_) {
    return failed(OpKind::kRecv, Status(StatusCode::kInvalidArgument,
                                        "recv needs a region registered by this engine"));
  }
  if (!rangeOk(offset, capacity, local.size())) {
    return failed(OpKind::kRecv,
                  Status(StatusCode::kOutOfRange,
                         "recv buffer " + rangeText(offset, capacity, local.size())));
  }
  auto r = newRequest(OpKind::kRecv);
  {
    std::lock_guard<std::mutex> lock(engine_->mu);
    if (closed_) {
      deliverArrivedLocked({r, RegionPin(local.state()), local.data() + offset, capacity});
    } else {
      posted_.push_back({r, RegionPin(local.state()), local.data() + offset, capacity});
      deliverMessages();
    }
  }
  engine_->kick();  // a queued message may have completed it: its callback runs on progress
  return Request(std::move(r));
}

void ConnectionImpl::postBlockedLocked() {
  while (!blocked_sends_.empty() && sent_ < send_limit_ && endpoint_ && !closed_) {
    BlockedSend b = blocked_sends_.front();
    blocked_sends_.pop_front();
    Status st = endpoint_->postSend(b.handle, b.addr, b.length, b.request);
    if (st.ok()) {
      ++sent_;
    } else {
      abandonLocked(b.request, st);
    }
  }
}

void ConnectionImpl::abandonLocked(RequestState* r, Status why) {
  std::shared_ptr<RequestState> keep = std::move(r->self);
  unlink(r);
  r->releasePins();
  r->finish(std::move(why));
}

bool ConnectionImpl::cancelUsesLocked(const RegionState* region) {
  for (auto it = posted_.begin(); it != posted_.end();) {
    if (it->region.get() != region) {
      ++it;
      continue;
    }
    finishRecv(*it,
               Status(StatusCode::kCancelled,
                      "the receive buffer's MemoryRegion was destroyed before a message came"),
               0);
    it = posted_.erase(it);
  }
  dropUnsignaledFromLocked(region);
  if (landingUses(region)) {
    breakLocked(Status(StatusCode::kCancelled,
                       "the MemoryRegion of a receive the transport was still filling was "
                       "destroyed; the connection to " +
                           peer_name + " is closed because the transfer cannot be recalled"));
    return true;
  }
  for (RequestState* r = head_; r != nullptr; r = r->next) {
    if (!r->uses(region)) continue;
    breakLocked(Status(StatusCode::kCancelled,
                       "a MemoryRegion used by an operation in flight was destroyed; the "
                       "connection to " +
                           peer_name +
                           " is closed because a posted RDMA operation cannot be "
                           "recalled"));
    return true;
  }
  return false;
}

void ConnectionImpl::onNotify(uint32_t value) {
  notifications_.push_back(value);
  engine_->event.notify_all();
  engine_->wakeSleepingWaiters();  // waitNotification in manual mode
}

std::optional<uint32_t> ConnectionImpl::pollNotification() {
  if (engine_->manualProgress()) engine_->progressOnce();
  std::lock_guard<std::mutex> lock(engine_->mu);
  if (notifications_.empty()) return std::nullopt;
  uint32_t v = notifications_.front();
  notifications_.pop_front();
  return v;
}

Result<uint32_t> ConnectionImpl::waitNotification(std::chrono::milliseconds timeout) {
  auto until = Clock::now() + timeout;
  for (;;) {
    if (engine_->manualProgress()) {
      engine_->progressUntil(
          [&] {
            std::lock_guard<std::mutex> lock(engine_->mu);
            return !notifications_.empty() || closed_;
          },
          until);
    }
    std::unique_lock<std::mutex> lock(engine_->mu);
    if (!notifications_.empty()) {
      uint32_t v = notifications_.front();
      notifications_.pop_front();
      return v;
    }
    if (closed_) return broken_;
    if (Clock::now() >= until) {
      return Status(StatusCode::kTimedOut, "no notification from " + peer_name + " within " +
                                               std::to_string(timeout.count()) + " ms");
    }
    if (!engine_->manualProgress()) engine_->event.wait_until(lock, until);
  }
}

}  // namespace detail

// ---------------------------------------------------------------- public API

Result<Connection> Engine::connect(std::string_view host_port) {
  auto c = impl_->connect(std::string(host_port));
  if (!c.ok()) return c.status();
  return detail::wrap(std::move(*c));
}

Result<Connection> Engine::accept(std::chrono::milliseconds timeout) {
  auto c = impl_->accept(timeout);
  if (!c.ok()) return c.status();
  return detail::wrap(std::move(*c));
}

namespace {
Status noConnection() {
  return Status(StatusCode::kInvalidArgument, "empty Connection (not connected)");
}
Request failedRequest() {
  // An empty Request reports kInvalidArgument from wait()/test().
  return Request();
}
}  // namespace

Result<RemoteRegion> Connection::remoteRegion(std::string_view name,
                                              std::chrono::milliseconds timeout) {
  if (!impl_) return noConnection();
  return impl_->remoteRegion(name, timeout);
}

Result<RemoteRegion> Connection::importRegion(const RegionDescriptor& descriptor) {
  if (!impl_) return noConnection();
  return impl_->importRegion(descriptor);
}

Request Connection::write(const MemoryRegion& local, size_t local_offset,
                          const RemoteRegion& remote, size_t remote_offset, size_t length) {
  RmaOp op{&local, local_offset, &remote, remote_offset, length};
  return impl_ ? impl_->postRma(true, {&op, 1}, std::nullopt) : failedRequest();
}

Status Connection::writeUnsignaled(const MemoryRegion& local, size_t local_offset,
                                   const RemoteRegion& remote, size_t remote_offset,
                                   size_t length) {
  if (!impl_)
    return Status(StatusCode::kInvalidArgument, "writeUnsignaled() on an empty Connection");
  return impl_->writeUnsignaled(RmaOp{&local, local_offset, &remote, remote_offset, length});
}

Request Connection::flush() { return impl_ ? impl_->flush() : failedRequest(); }

Request Connection::read(const MemoryRegion& local, size_t local_offset, const RemoteRegion& remote,
                         size_t remote_offset, size_t length) {
  RmaOp op{&local, local_offset, &remote, remote_offset, length};
  return impl_ ? impl_->postRma(false, {&op, 1}, std::nullopt) : failedRequest();
}

Request Connection::writeBatch(std::span<const RmaOp> ops) {
  return impl_ ? impl_->postRma(true, ops, std::nullopt) : failedRequest();
}
Request Connection::readBatch(std::span<const RmaOp> ops) {
  return impl_ ? impl_->postRma(false, ops, std::nullopt) : failedRequest();
}
Request Connection::writeWithNotify(std::span<const RmaOp> ops, uint32_t value) {
  return impl_ ? impl_->postRma(true, ops, value) : failedRequest();
}
Request Connection::send(const MemoryRegion& local, size_t offset, size_t length) {
  return impl_ ? impl_->send(local, offset, length) : failedRequest();
}
Request Connection::recv(const MemoryRegion& local, size_t offset, size_t capacity) {
  return impl_ ? impl_->recv(local, offset, capacity) : failedRequest();
}
std::optional<uint32_t> Connection::pollNotification() {
  return impl_ ? impl_->pollNotification() : std::nullopt;
}
Result<uint32_t> Connection::waitNotification(std::chrono::milliseconds timeout) {
  if (!impl_) return noConnection();
  return impl_->waitNotification(timeout);
}
void Connection::close() {
  if (impl_) impl_->close(Status(StatusCode::kCancelled, "connection closed locally"), true);
}
Status Connection::status() const { return impl_ ? impl_->status() : noConnection(); }
std::string Connection::peerName() const { return impl_ ? impl_->peer_name : std::string(); }
size_t Connection::maxMessageSize() const { return impl_ ? impl_->max_message_size : 0; }

}  // namespace zcx

#include "verbs/verbs_rails_endpoint.h"

#include <glog/logging.h>

#include <algorithm>
#include <string>

#include "verbs/verbs_rails.h"
#include "verbs/verbs_rails_wire.h"

namespace zcx::transport::verbs {
namespace {

// Lanes other than 0 carry no two-sided messages: a small receive ring is enough (both sides
// derive the same value, so their connect data agree).
constexpr size_t kSideLaneMessageSize = 4096;
// How long a connection whose lane 0 is up waits for its other lanes before it is ready.
constexpr auto kSideLaneGrace = std::chrono::seconds(2);

}  // namespace

// ------------------------------------------------------------------ lanes' events

// Messages and notifications ride lane 0 only (their order and the notify-after-data promise
// hold there): one on another lane comes from a peer that breaks the protocol. It is dropped and
// that lane is no longer used.
void RailsEndpoint::LaneEvents::onMessage(const uint8_t* data, size_t length) {
  if (owner_->closed_) return;
  if (lane_ != 0) {
    return owner_->laneFailed(lane_, Status(StatusCode::kProtocolError,
                                            "the peer sent a message on a rail other than 0"));
  }
  owner_->events_->onMessage(data, length);
}

void RailsEndpoint::LaneEvents::onNotify(uint32_t value) {
  if (owner_->closed_) return;
  if (lane_ != 0) {
    return owner_->laneFailed(lane_, Status(StatusCode::kProtocolError,
                                            "the peer sent a notification on a rail other than 0"));
  }
  owner_->events_->onNotify(value);
}

void RailsEndpoint::LaneEvents::onError(Status why) {
  if (owner_->closed_) return;
  if (lane_ == 0) {
    owner_->events_->onError(std::move(why));  // messages ride lane 0: the connection is gone
    return;
  }
  owner_->laneFailed(lane_, why);
}

void RailsEndpoint::laneFailed(size_t lane, const Status& why) {
  if (lane_failed_[lane]) return;
  lane_failed_[lane] = true;
  LOG(WARNING) << "verbs rail " << transport_->rail(lane)->device().name
               << " failed for connection " << token_ << " (" << why.message()
               << "); its operations continue on the other rails";
}

// ------------------------------------------------------------------ setup

RailsEndpoint::RailsEndpoint(RailsTransport* transport, const EndpointSetup& setup)
    : transport_(transport), token_(setup.token), events_(setup.events) {}

Result<std::unique_ptr<RailsEndpoint>> RailsEndpoint::create(
    RailsTransport* transport, const EndpointSetup& setup,
    const std::vector<std::vector<uint8_t>>& peer_rails) {
  std::unique_ptr<RailsEndpoint> ep(new RailsEndpoint(transport, setup));
  const size_t lanes = std::min(transport->rails(), peer_rails.size());
  for (size_t k = 0; k < lanes; ++k) {
    ep->lane_events_.push_back(std::make_unique<LaneEvents>(ep.get(), k));
    EndpointSetup s = setup;
    s.peer_address = peer_rails[k];
    s.events = ep->lane_events_[k].get();
    if (k > 0) s.max_message_size = kSideLaneMessageSize;
    auto r = transport->rail(k)->createEndpoint(s);
    if (!r.ok() && k == 0) return r.status();
    if (!r.ok()) {
      LOG(WARNING) << "verbs rail " << transport->rail(k)->device().name
                   << " cannot reach the peer (" << r.status().message() << "); connection "
                   << setup.token << " uses the other rails";
    }
    ep->lanes_.push_back(r.ok() ? std::move(*r) : nullptr);
    ep->lane_failed_.push_back(!r.ok());
  }
  // Spread connections over the rails: the token is random and the same on both sides.
  ep->home_lane_ = static_cast<size_t>(setup.token % lanes);
  return ep;
}

RailsEndpoint::~RailsEndpoint() {
  close(Status(StatusCode::kCancelled, "the endpoint was closed"));
}

EndpointState RailsEndpoint::state() const {
  if (closed_ || lanes_[0]->state() == EndpointState::kBroken) return EndpointState::kBroken;
  const EndpointState first = lanes_[0]->state();
  if (first != EndpointState::kReady) return first;
  // Lane 0 is up. Give the other lanes a moment so that the first operations already use every
  // rail, but no more: a rail that cannot reach the peer (its link down, another fabric) must not
  // hold the connection back. A lane that connects later joins then.
  const auto now = std::chrono::steady_clock::now();
  if (!first_ready_at_) first_ready_at_ = now;
  if (now - *first_ready_at_ < kSideLaneGrace) {
    for (size_t k = 1; k < lanes_.size(); ++k) {
      if (lanes_[k] != nullptr && !lane_failed_[k] &&
          lanes_[k]->state() == EndpointState::kConnecting) {
        return EndpointState::kConnecting;
      }
    }
  }
  return EndpointState::kReady;
}

Status RailsEndpoint::error() const {
  if (closed_) return close_why_;
  return lanes_[0]->error();
}

Status RailsEndpoint::checkUsable() const {
  if (closed_) {
    return Status(StatusCode::kConnectionBroken,
                  "verbs endpoint is closed: " + close_why_.message());
  }
  if (lanes_[0]->state() == EndpointState::kBroken) {
    const Status e = lanes_[0]->error();
    return Status(e.ok() ? StatusCode::kConnectionBroken : e.code(),
                  "verbs endpoint is broken: " + e.message());
  }
  return Status();
}

bool RailsEndpoint::laneUsable(size_t k) const {
  if (k >= lanes_.size() || lanes_[k] == nullptr || lane_failed_[k]) return false;
  // Lane 0 queues work while it connects (like a single-rail endpoint); the others take slices
  // only once connected.
  const EndpointState s = lanes_[k]->state();
  return k == 0 ? s != EndpointState::kBroken : s == EndpointState::kReady;
}

std::vector<size_t> RailsEndpoint::lanesFor(const RemoteKey* remote) const {
  std::vector<size_t> out;
  const auto* key = static_cast<const RailsRemoteKey*>(remote);
  for (size_t k = 0; k < lanes_.size(); ++k) {
    if (laneUsable(k) && key->lane(k) != nullptr) out.push_back(k);
  }
  return out;
}

Result<std::unique_ptr<RemoteKey>> RailsEndpoint::importKey(std::span<const uint8_t> packed_key) {
  std::vector<std::span<const uint8_t>> entries{packed_key};  // a single-rail peer's key
  if (isRailsBlob(packed_key)) {
    auto r = unpackRails(packed_key);
    if (!r.ok()) return r.status();
    entries = std::move(*r);
  }
  std::vector<std::unique_ptr<RemoteKey>> keys(lanes_.size());
  for (size_t k = 0; k < std::min(lanes_.size(), entries.size()); ++k) {
    if (lanes_[k] == nullptr) continue;
    auto r = lanes_[k]->importKey(entries[k]);
    if (!r.ok()) return r.status();
    keys[k] = std::move(*r);
  }
  return std::unique_ptr<RemoteKey>(new RailsRemoteKey(std::move(keys)));
}

// ------------------------------------------------------------------ posting

RailsEndpoint::Op& RailsEndpoint::newOp(Completion* done) {
  auto op = std::make_unique<Op>();
  op->id = next_op_++;
  op->done = done;
  Op& ref = *op;
  ops_.emplace(ref.id, std::move(op));
  return ref;
}

void RailsEndpoint::scheduleOp(Op& op) {
  scheduled_ops_.push_back(op.id);
  transport_->schedule(this);
}

Status RailsEndpoint::postPart(Op& op, size_t lane, std::vector<Slice>& slices,
                               std::optional<uint32_t> notify) {
  std::vector<RmaOp> rma;
  rma.reserve(slices.size());
  auto part = std::make_unique<Part>();
  part->owner = this;
  part->op = &op;
  part->lane = lane;
  for (const Slice& s : slices) {
    rma.push_back(RmaOp{s.local->rail(lane), s.local_addr,
                        static_cast<RailsRemoteKey*>(s.remote)->lane(lane), s.remote_addr,
                        s.length});
    part->bytes += s.length;
  }
  Endpoint& ep = *lanes_[lane];
  const Status st =
      op.is_read ? ep.postRead(rma, part.get()) : ep.postWrite(rma, notify, part.get());
  if (!st.ok()) return st;
  part->slices = std::move(slices);
  op.parts.push_back(std::move(part));
  return Status();
}

Status RailsEndpoint::postSlices(Op& op, std::vector<Slice> slices, bool first_post) {
  std::vector<std::vector<Slice>> by_lane(lanes_.size());
  for (Slice& s : slices) by_lane[s.lane].push_back(s);
  const size_t used = static_cast<size_t>(
      std::count_if(by_lane.begin(), by_lane.end(), [](const auto& v) { return !v.empty(); }));
  // Only lane 0 carries data, and no other part is in flight (a retry's would be): it can carry
  // the notification too, behind the data (no extra round trip). Otherwise the notification
  // follows once every part completed (settle()).
  std::optional<uint32_t> notify;
  if (used == 1 && !by_lane[0].empty() && op.notify && op.parts.empty()) {
    notify = op.notify;
    op.notify.reset();
  }
  for (size_t k = 0; k < by_lane.size(); ++k) {
    if (by_lane[k].empty()) continue;
    Status st = postPart(op, k, by_lane[k], notify);
    if (st.ok()) continue;
    if (first_post && op.parts.empty()) return st;  // nothing posted: the caller's error
    // Part of the op is in flight: the refused slices wait for another lane.
    op.to_retry.insert(op.to_retry.end(), by_lane[k].begin(), by_lane[k].end());
    op.retry_cause = st;
    if (notify) op.notify = notify;
    scheduleOp(op);
  }
  return Status();
}

Status RailsEndpoint::postRma(std::span<const RmaOp> ops, bool is_read,
                              std::optional<uint32_t> notify, Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (done == nullptr) return Status(StatusCode::kInvalidArgument, "no completion given");
  const size_t slice = transport_->sliceSize();
  std::vector<Slice> slices;
  for (const RmaOp& o : ops) {
    if (o.length == 0) continue;
    if (o.local == nullptr || o.remote == nullptr) {
      return Status(StatusCode::kInvalidArgument, "RDMA op without memory or key");
    }
    const std::vector<size_t> lanes = lanesFor(o.remote);
    if (lanes.empty()) {
      return Status(StatusCode::kConnectionBroken, "no rail of this connection reaches the key");
    }
    auto* local = static_cast<RailsMemory*>(o.local);
    if (o.length <= slice || lanes.size() == 1) {
      // Small: the connection's own lane (or the first that works).
      const bool home = std::find(lanes.begin(), lanes.end(), home_lane_) != lanes.end();
      slices.push_back(
          {local, o.local_addr, o.remote, o.remote_addr, o.length, home ? home_lane_ : lanes[0]});
      continue;
    }
    for (uint64_t off = 0; off < o.length; off += slice) {
      slices.push_back({local, o.local_addr + off, o.remote, o.remote_addr + off,
                        std::min<uint64_t>(slice, o.length - off),
                        lanes[next_lane_++ % lanes.size()]});
    }
  }
  Op& op = newOp(done);
  op.is_read = is_read;
  op.notify = notify;
  if (slices.empty()) {
    // Zero-length ops only (maybe a notification): lane 0 completes them from progress().
    std::vector<Slice> none;
    Status st = postPart(op, 0, none, notify);
    if (!st.ok())
      ops_.erase(op.id);
    else
      op.notify.reset();
    return st;
  }
  Status st = postSlices(op, std::move(slices), true);
  if (!st.ok()) ops_.erase(op.id);
  return st;
}

Status RailsEndpoint::postWrite(std::span<const RmaOp> ops, std::optional<uint32_t> notify,
                                Completion* done) {
  return postRma(ops, false, notify, done);
}

Status RailsEndpoint::postRead(std::span<const RmaOp> ops, Completion* done) {
  return postRma(ops, true, std::nullopt, done);
}

Status RailsEndpoint::postSend(MemoryHandle* local, uint64_t local_addr, size_t length,
                               Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  if (done == nullptr) return Status(StatusCode::kInvalidArgument, "no completion given");
  Op& op = newOp(done);
  auto part = std::make_unique<Part>();
  part->owner = this;
  part->op = &op;
  part->bytes = length;
  MemoryHandle* mem = local != nullptr ? static_cast<RailsMemory*>(local)->rail(0) : nullptr;
  const Status st = lanes_[0]->postSend(mem, local_addr, length, part.get());
  if (!st.ok()) {
    ops_.erase(op.id);
    return st;
  }
  op.parts.push_back(std::move(part));
  return Status();
}

Status RailsEndpoint::bindGrant(RemoteGrant* grant, Completion* done) {
  ZCX_RETURN_IF_ERROR(checkUsable());
  auto* g = dynamic_cast<RailsGrant*>(grant);
  if (done == nullptr || g == nullptr || !g->needsBind()) {
    return Status(StatusCode::kInvalidArgument, "bindGrant: not a multi-rail window grant");
  }
  Op& op = newOp(done);
  op.bind = true;
  // Each lane binds its rail's window through its own QP: the peer's lane k uses rail k's key.
  for (size_t k = 0; k < lanes_.size(); ++k) {
    if (!laneUsable(k) || !g->rail(k)->needsBind()) continue;
    auto part = std::make_unique<Part>();
    part->owner = this;
    part->op = &op;
    part->lane = k;
    const Status st = lanes_[k]->bindGrant(g->rail(k), part.get());
    if (st.ok()) {
      op.parts.push_back(std::move(part));
      continue;
    }
    // The grant's key names every rail's window: one left unbound would fail the peer's
    // accesses on that rail, so the bind fails as a whole.
    if (op.parts.empty()) {
      ops_.erase(op.id);
      return st;
    }
    op.error = st;
    break;
  }
  if (op.parts.empty()) {
    // Nothing could be bound (no usable lane whose rail needs it): an error, from progress().
    op.error = Status(StatusCode::kConnectionBroken,
                      "bindGrant: no rail of this connection can bind the grant's windows");
    scheduleOp(op);
  }
  return Status();
}

// ------------------------------------------------------------------ completion

void RailsEndpoint::Part::complete(Status status) { owner->onPartDone(this, std::move(status)); }

void RailsEndpoint::onPartDone(Part* part, Status status) {
  Op& op = *part->op;
  const size_t lane = part->lane;
  if (status.ok()) {
    transport_->countBytes(lane, part->bytes);
  } else if (lane != 0 && !closed_) {
    // Any error breaks a lane's QP: the rail is gone for this connection, and its slices move to
    // the other lanes. Even a remote access error: a dying peer's kernel deregisters its memory
    // before it destroys the QPs, so a killed peer shows up as one now and then (measured: 1 run
    // in 15 of PeerKilledMidTransfer on two rails). A real one (a revoked key) fails again on
    // lane 0 and ends the connection there, as it does on a single rail.
    laneFailed(lane, status);
    if (!part->slices.empty()) {
      op.to_retry.insert(op.to_retry.end(), part->slices.begin(), part->slices.end());
      op.retry_cause = status;
      scheduleOp(op);
    } else if (!op.bind && op.error.ok()) {
      op.error = status;  // a bind on a dead rail does not matter: nobody uses its key
    }
  } else if (op.error.ok()) {
    op.error = status;
  }
  std::erase_if(op.parts, [part](const auto& p) { return p.get() == part; });  // `part` is gone
  settle(op);
}

void RailsEndpoint::settle(Op& op) {
  if (!op.parts.empty()) return;
  if (closed_) return finish(op, op.error.ok() ? close_why_ : op.error);
  if (!op.error.ok()) return finish(op, op.error);
  if (!op.to_retry.empty()) return;      // scheduled when queued: drive() reposts them
  if (op.notify) return scheduleOp(op);  // the data is there: drive() sends the notification
  finish(op, Status());
}

void RailsEndpoint::finish(Op& op, Status status) {
  Completion* done = op.done;
  ops_.erase(op.id);
  done->complete(std::move(status));
}

Status RailsEndpoint::noRailLeft(const Op& op) const {
  // No lane can take the slices: lane 0 is gone as well, so the connection is, and that is the
  // operation's error (a dying peer's first symptom on a side rail may have been anything).
  const Status conn = lanes_[0]->error();
  const Status& base = conn.ok() ? op.retry_cause : conn;
  return Status(base.code() == StatusCode::kOk ? StatusCode::kConnectionBroken : base.code(),
                base.message() + " (a failed rail's slices found no other rail: " +
                    op.retry_cause.message() + ")");
}

int RailsEndpoint::drive() {
  if (scheduled_ops_.empty()) return 0;
  std::vector<uint64_t> ids;
  ids.swap(scheduled_ops_);
  int n = 0;
  for (uint64_t id : ids) {
    auto it = ops_.find(id);
    if (it == ops_.end()) continue;
    Op& op = *it->second;
    ++n;
    if (!op.to_retry.empty() && op.error.ok()) {
      std::vector<Slice> slices;
      slices.swap(op.to_retry);
      // Each retry needs another rail to have failed: more rounds than rails is a bug.
      if (++op.retries > 2 * lanes_.size()) {
        op.error = noRailLeft(op);
      } else {
        for (Slice& s : slices) {
          const std::vector<size_t> lanes = lanesFor(s.remote);
          if (lanes.empty()) {
            op.error = noRailLeft(op);
            break;
          }
          s.lane = lanes[next_lane_++ % lanes.size()];
        }
        if (op.error.ok()) {
          VLOG(1) << "verbs rails: " << slices.size() << " slices of connection " << token_
                  << " move to the surviving rails";
          (void)postSlices(op, std::move(slices), false);
        }
      }
    }
    if (op.parts.empty() && op.to_retry.empty() && op.error.ok() && op.notify) {
      // Every slice is at the target: now the notification, behind them, on lane 0.
      const std::optional<uint32_t> notify = op.notify;
      op.notify.reset();
      std::vector<Slice> none;
      if (Status st = postPart(op, 0, none, notify); !st.ok()) op.error = st;
    }
    if (op.to_retry.empty() || !op.error.ok()) settle(op);
  }
  return n;
}

void RailsEndpoint::close(Status why) {
  if (closed_) return;
  closed_ = true;
  close_why_ = why.ok() ? Status(StatusCode::kCancelled, "the endpoint was closed") : why;
  // Every lane fails its parts inside close() (the verbs endpoint's contract); their ops finish
  // as the last part does (settle() sees closed_).
  for (size_t k = lanes_.size(); k-- > 0;) {
    if (lanes_[k] != nullptr) lanes_[k]->close(close_why_);
  }
  // Ops that waited for drive() (retries, notifications, binds with nothing to bind).
  while (!ops_.empty()) {
    Op& op = *ops_.begin()->second;
    finish(op, op.error.ok() ? close_why_ : op.error);
  }
  scheduled_ops_.clear();
  transport_->forget(this);
}

}  // namespace zcx::transport::verbs

// The receive side of send/recv: messages matched with posted buffers in the order the peer sent
// them, credits granted back, and messages the transport holds (rendezvous) fetched straight into
// their posted buffer (zero copy), completing in that same order.
#include <glog/logging.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "connection_impl.h"

namespace zcx::detail {

void ConnectionImpl::consumedLocked() {
  ++consumed_;
  const uint64_t window = engine_->options.recv_window;
  // Grant in batches: one CREDIT frame per half window of messages taken.
  if (consumed_ + window - granted_ >= std::max<uint64_t>(1, window / 2)) {
    granted_ = consumed_ + window;
    (void)queueControlFrame(FrameType::kCredit, encodeCredit(granted_));
  }
}

void ConnectionImpl::finishRecv(PostedRecv& p, Status status, size_t bytes) {
  p.request->setBytes(bytes);
  engine_->dropLater(p.region.release());
  p.request->finish(std::move(status));
}

void ConnectionImpl::settleLocked(PostedRecv p, Status status, size_t bytes, bool consumes) {
  if (landings_.empty()) {
    finishRecv(p, std::move(status), bytes);
    if (consumes) consumedLocked();
    return;
  }
  // An earlier message is still being written into its buffer by the transport: this receive
  // completes after it, so completions keep the order the messages were sent in.
  auto l = std::make_shared<Landing>();
  l->recv = std::move(p);
  // The data is in: the buffer's registration need not wait for the earlier receive (destroying
  // its region must not block behind a transfer into another one).
  engine_->dropLater(l->recv.region.release());
  l->bytes = bytes;
  l->consumes = consumes;
  l->landed = true;
  l->status = std::move(status);
  landings_.push_back(std::move(l));
}

void ConnectionImpl::drainLandingsLocked() {
  while (!landings_.empty() && landings_.front()->landed) {
    std::shared_ptr<Landing> l = std::move(landings_.front());
    landings_.pop_front();
    l->queued = false;
    const bool lost = l->claimed && !l->status.ok();
    finishRecv(l->recv, l->status, l->status.ok() ? l->bytes : 0);
    if (lost) {
      loseStreamLocked(l->status);
      return;
    }
    if (l->claimed) metrics_->countZeroCopyRecv();
    if (l->consumes) consumedLocked();
  }
}

void ConnectionImpl::loseStreamLocked(const Status& why) {
  // The transport could not fetch a message it had announced: the stream has a hole, so the
  // connection cannot go on (the next receive would silently get the message after).
  stream_lost_ = true;
  if (broken_.ok()) {
    broken_ = Status(StatusCode::kConnectionBroken,
                     "a message from " + peer_name + " could not be received: " + why.toString());
    LOG(WARNING) << "zcx: " << broken_.toString();
  }
  if (auto self = weak_from_this().lock()) engine_->scheduleClose(std::move(self));
}

void ConnectionImpl::Landing::complete(Status s) {
  std::shared_ptr<Landing> keep = std::move(self);  // the transport's hold ends here
  if (queued) {
    if (auto c = connection.lock()) {
      landed = true;
      status = std::move(s);
      recv.request->engine()->dropLater(recv.region.release());  // the transport is done with it
      c->drainLandingsLocked();
      return;
    }
  }
  // The connection broke while the transport still wrote here: the receive already failed for
  // the user (breakLocked); only the buffer's hold is left to end.
  recv.request->engine()->dropLater(recv.region.release());
  recv.request->finish(std::move(s));
}

void ConnectionImpl::fetchHeldLocked(PostedRecv p, uint64_t held, size_t length) {
  auto l = std::make_shared<Landing>();
  l->connection = weak_from_this();
  l->recv = std::move(p);
  l->bytes = length;
  l->claimed = true;
  l->self = l;
  transport::ReceiveTarget target;
  target.local = l->recv.region.get()->handle.get();
  target.buffer = l->recv.buffer;
  target.capacity = l->recv.capacity;
  target.landed = l.get();
  Landing* raw = l.get();
  landings_.push_back(std::move(l));
  Status st = endpoint_ ? endpoint_->fetchHeld(held, target)
                        : Status(StatusCode::kConnectionBroken, "no endpoint");
  if (!st.ok()) raw->complete(std::move(st));  // the transport never will: a lost message
}

void ConnectionImpl::failLandingsLocked() {
  for (auto& l : landings_) {
    l->queued = false;
    if (l->landed) {
      finishRecv(l->recv, l->status, l->status.ok() ? l->bytes : 0);
    } else {
      // The transport still writes into the buffer: the user learns now, the hold ends when the
      // transport completes it (Landing::complete).
      l->recv.request->finish(broken_);
    }
  }
  landings_.clear();
}

bool ConnectionImpl::landingUses(const RegionState* region) const {
  for (const auto& l : landings_)
    if (!l->landed && l->recv.region.get() == region) return true;
  return false;
}

void ConnectionImpl::unholdLocked(Unexpected& u) {
  if (!u.held) return;
  u.held.reset();
  --engine_->held_messages;
}

int ConnectionImpl::spillHeldLocked(uint64_t round) {
  // Marked first, fetched after: a fetch may complete inside the call and deliver (pop) queued
  // messages, which must not happen while this loop walks the queue.
  std::vector<std::pair<uint64_t, std::shared_ptr<Spill>>> fetches;
  for (Unexpected& u : unexpected_) {
    if (closed_ || stream_lost_) break;
    if (!u.held || u.round >= round) continue;
    const uint64_t held = *u.held;
    unholdLocked(u);
    auto s = std::make_shared<Spill>();
    s->connection = weak_from_this();
    // Uninitialised: the transport writes all of it. At most max_message_size bytes, and at most
    // recv_window messages are ever unmatched (credits).
    s->data.reset(new uint8_t[std::max<size_t>(u.length, 1)]);
    s->length = u.length;
    s->self = s;
    u.spill = s;
    fetches.emplace_back(held, std::move(s));
  }
  for (auto& [held, s] : fetches) {
    transport::ReceiveTarget target;
    target.buffer = s->data.get();
    target.capacity = s->length;
    target.landed = s.get();
    Status st = endpoint_ ? endpoint_->fetchHeld(held, target)
                          : Status(StatusCode::kConnectionBroken, "no endpoint");
    if (!st.ok()) s->complete(std::move(st));
  }
  return static_cast<int>(fetches.size());
}

void ConnectionImpl::Spill::complete(Status s) {
  std::shared_ptr<Spill> keep = std::move(self);
  landed = true;
  status = std::move(s);
  if (auto c = connection.lock()) c->deliverMessages();  // it may be at the head of the queue
}

void ConnectionImpl::keepArrivedOnBye() {
  // A message the transport still holds (rendezvous: its data is at the peer) would be released
  // by our endpoint's close: start fetching it into our memory now, while the peer's close still
  // waits for it (its endpoint flush), and give the fetches a bounded number of progress rounds.
  // No waiting beyond that: this runs on the control thread, which must never block (a peer that
  // sends a large message and closes must not stall everyone else's handshakes); a message still
  // landing after those rounds is lost with the connection.
  std::lock_guard<std::mutex> lock(engine_->mu);
  if (closed_) return;
  keep_arrived_ = true;
  spillHeldLocked(std::numeric_limits<uint64_t>::max());
  auto landing = [&] {
    return !landings_.empty() ||
           std::any_of(unexpected_.begin(), unexpected_.end(),
                       [](const Unexpected& u) { return u.spill && !u.spill->landed; });
  };
  for (int i = 0; i < 256 && !closed_ && landing(); ++i) engine_->progressTransportLocked();
  if (!closed_ && landing()) {
    LOG(WARNING) << "zcx: " << peer_name
                 << " closed the connection while messages it sent were still being fetched; "
                    "those are lost";
  }
}

void ConnectionImpl::deliverArrivedLocked(PostedRecv p) {
  if (unexpected_.empty()) {
    finishRecv(p, broken_, 0);
    return;
  }
  Unexpected& msg = unexpected_.front();
  if (msg.length > p.capacity) {
    finishRecv(
        p,
        Status(StatusCode::kOutOfRange, "a message of " + std::to_string(msg.length) +
                                            " bytes does not fit the posted receive buffer of " +
                                            std::to_string(p.capacity) +
                                            " bytes; it stays queued for the next, larger buffer"),
        0);
    return;
  }
  const size_t n = msg.length;
  if (n != 0) std::memcpy(p.buffer, msg.spill ? msg.spill->data.get() : msg.data.data(), n);
  unexpected_.pop_front();
  finishRecv(p, Status::Ok(), n);  // no credit to grant: the connection is closed
}

// Matches queued messages with posted buffers, in order (engine lock held).
void ConnectionImpl::deliverMessages() {
  while (!unexpected_.empty() && !closed_ && !stream_lost_) {
    Unexpected& msg = unexpected_.front();
    if (msg.spill && msg.spill->landed && !msg.spill->status.ok()) {
      loseStreamLocked(msg.spill->status);
      return;
    }
    if (posted_.empty()) return;
    if (msg.spill && !msg.spill->landed) return;  // in order: wait until it is in
    PostedRecv p = std::move(posted_.front());
    posted_.pop_front();
    if (msg.length > p.capacity) {
      Status too_small(StatusCode::kOutOfRange,
                       "a message of " + std::to_string(msg.length) +
                           " bytes does not fit the posted receive buffer of " +
                           std::to_string(p.capacity) +
                           " bytes; it stays queued for the next, larger buffer");
      settleLocked(std::move(p), std::move(too_small), 0, false);
      continue;
    }
    const size_t n = msg.length;
    if (msg.held) {
      const uint64_t held = *msg.held;
      unholdLocked(msg);
      unexpected_.pop_front();
      fetchHeldLocked(std::move(p), held, n);
      continue;
    }
    if (n != 0) std::memcpy(p.buffer, msg.spill ? msg.spill->data.get() : msg.data.data(), n);
    unexpected_.pop_front();
    settleLocked(std::move(p), Status::Ok(), n, true);
  }
}

bool ConnectionImpl::countArrivalLocked() {
  if (++received_ > granted_) {
    // The peer ignored our grant: it could make us hold memory without bound.
    if (broken_.ok()) {
      broken_ = Status(StatusCode::kProtocolError,
                       "peer " + peer_name + " sent message " + std::to_string(received_) +
                           " but was granted " + std::to_string(granted_) +
                           " (recv_window); the connection is closed");
      LOG(WARNING) << "zcx: " << broken_.toString();
      if (auto self = weak_from_this().lock()) engine_->scheduleClose(std::move(self));
    }
    return false;
  }
  return true;
}

bool ConnectionImpl::onMessageHeld(uint64_t held, size_t length) {
  // A connection that is ending never fetches it: the endpoint's close releases it.
  if (closed_ || stream_lost_ || !countArrivalLocked()) return true;
  if (unexpected_.empty() && !posted_.empty() && length <= posted_.front().capacity) {
    PostedRecv p = std::move(posted_.front());  // zero copy: fetched into the posted buffer
    posted_.pop_front();
    fetchHeldLocked(std::move(p), held, length);
    return true;
  }
  unexpected_.push_back(Unexpected{{}, held, length, engine_->progress_round, nullptr});
  ++engine_->held_messages;
  deliverMessages();
  engine_->event.notify_all();
  return true;
}

void ConnectionImpl::onMessage(const uint8_t* data, size_t length) {
  if (closed_ || stream_lost_ || !countArrivalLocked()) return;
  if (unexpected_.empty() && !posted_.empty() && length <= posted_.front().capacity) {
    PostedRecv p = std::move(posted_.front());  // fast path: straight into the posted buffer
    posted_.pop_front();
    if (length) std::memcpy(p.buffer, data, length);
    settleLocked(std::move(p), Status::Ok(), length, true);
    return;
  }
  unexpected_.push_back(
      Unexpected{std::vector<uint8_t>(data, data + length), std::nullopt, length, 0, nullptr});
  deliverMessages();
  engine_->event.notify_all();
}

}  // namespace zcx::detail

// Internal state of a Connection: its endpoint, control socket, outstanding operations,
// posted receives, unexpected messages and notifications.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "control_protocol.h"
#include "engine_impl.h"
#include "frame_buffer.h"
#include "metrics.h"
#include "request_state.h"
#include "socket.h"
#include "zcx/connection.h"
#include "zcx/transport/transport.h"

namespace zcx::detail {

struct RemoteKeyRef {
  /// Reset (under the engine lock) when the connection closes.
  std::unique_ptr<transport::RemoteKey> key;
  /// ConnectionImpl::id of the connection that imported it. Ids are never reused in a process,
  /// so a region from a closed connection never passes for one of a later connection that
  /// happens to live at the same address.
  uint64_t connection_id = 0;
};

/// Orders packed remote keys by length, then bytes. Not std::less<std::vector<uint8_t>>: at -O3
/// GCC 12 warns a bogus -Wstringop-overread ("specified bound [2^63, 2^64-1]") on the memcmp of
/// its inlined lexicographical_compare_three_way, whose length it cannot bound.
struct KeyBytesLess {
  bool operator()(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) const noexcept {
    if (a.size() != b.size()) return a.size() < b.size();
    return !a.empty() && std::memcmp(a.data(), b.data(), a.size()) < 0;
  }
};

class ConnectionImpl final : public transport::EndpointEvents,
                             public std::enable_shared_from_this<ConnectionImpl> {
 public:
  ConnectionImpl(std::shared_ptr<EngineImpl> engine, uint64_t id, Fd control,
                 std::string peer_name);
  ~ConnectionImpl();

  // ---- setup (handshake) ----
  Status createEndpoint(const transport::EndpointSetup& setup);  ///< takes the engine lock
  Status waitReady(Clock::time_point deadline);
  /// The endpoint's state without waiting: nullopt while it is still connecting.
  std::optional<Status> pollReady();
  void setPeerRegions(std::map<std::string, std::vector<uint8_t>> regions);
  /// Has the endpoint bind a grant made for this connection (Endpoint::bindGrant).
  Status bindGrant(transport::RemoteGrant* grant, transport::Completion* done);

  // ---- the public API ----
  Result<RemoteRegion> remoteRegion(std::string_view name, std::chrono::milliseconds timeout);
  Result<RemoteRegion> importRegion(const RegionDescriptor& d);
  Request postRma(bool write, std::span<const RmaOp> ops, std::optional<uint32_t> notify);
  /// The checks every one-sided op passes before anything is posted (op `i` of a batch).
  Status checkRmaOp(bool write, size_t i, const RmaOp& op) const;
  Status writeUnsignaled(const RmaOp& op);
  Request flush();
  Request send(const MemoryRegion& local, size_t offset, size_t length);
  Request recv(const MemoryRegion& local, size_t offset, size_t capacity);
  std::optional<uint32_t> pollNotification();
  Result<uint32_t> waitNotification(std::chrono::milliseconds timeout);
  void close(Status why, bool tell_peer);
  Status status() const;

  // ---- transport events (engine lock held, inside progress) ----
  void onMessage(const uint8_t* data, size_t length) override;
  bool onMessageHeld(uint64_t held, size_t length) override;
  void onNotify(uint32_t value) override;
  void onError(Status why) override;

  // ---- engine internals (engine lock held) ----
  /// Fails everything and releases the endpoint: the one way a connection ends. `peer_left`:
  /// the control channel ended (the peer closed or died), which also explains held access
  /// errors (holdAccessErrorLocked).
  void breakLocked(Status why, bool peer_left = false);
  void unlink(RequestState* r);
  /// The last MemoryRegion of `region` is going away: posted receives into it complete
  /// kCancelled; if an operation in flight uses it, the connection breaks (returns true: it left
  /// the engine's live list).
  bool cancelUsesLocked(const RegionState* region);
  /// Why the transport reported this connection broken (set by onError).
  const Status& pendingErrorLocked() const { return broken_; }
  RequestState* oldestOutstanding() const { return head_; }
  /// The transport completed unsignaled batch `seq` (RequestState::complete).
  void unsignaledDoneLocked(uint64_t seq, const Status& status);
  /// Held messages that waited a whole progress round without a receive: fetched into memory
  /// of our own. Returns how many it started.
  int spillHeldLocked(uint64_t round);
  /// An operation the transport failed with kRemoteAccessError (complete(), engine lock held).
  /// A dying peer's kernel releases its memory before its QPs, so its last operations are
  /// refused as if a key were revoked. Such an error is held while the transport reports the
  /// connection failing: if the control channel then ends, the operation fails with the peer's
  /// departure instead. False: not held (finish it now).
  bool holdAccessErrorLocked(std::shared_ptr<RequestState> r, Status status);
  /// Once a progress round: held errors of a connection the transport does not report failing,
  /// and those at their deadline, are the operations' own: they finish now.
  void settleAccessErrorsLocked(Clock::time_point now);

  // ---- control channel (control loop; never blocks) ----
  int controlFd() const { return control_.get(); }
  /// Handles the frames the peer has sent; false if the control channel is finished.
  bool onControlReadable();
  /// Sends queued frames; false if the channel broke. *pending: output still queued.
  bool onControlWritable(bool* pending);
  bool controlWritePending();
  /// Frames the handshake queued but the socket had no room for yet.
  void adoptControlOutput(FrameWriter out);
  /// The handshake's reader (between frames), with the MAC state of an authenticated channel.
  void adoptControlInput(FrameReader in) { control_in_ = std::move(in); }
  /// The active side's authenticated channel: every later control frame is sealed and checked.
  void authenticateControl(ChannelMacs macs);

  const uint64_t id;
  const std::string peer_name;
  /// This connection as its transport endpoint knows it (for grants scoped to it).
  transport::ConnectionScope scope() const { return scope_; }
  /// Set once the connection ended and its grants were revoked (EngineImpl).
  std::atomic<bool> grants_revoked{false};
  size_t max_message_size = 0;

  /// Queues a frame and sends what the socket takes; the control loop sends the rest. Any thread.
  Status queueControlFrame(FrameType type, const std::vector<uint8_t>& body);

 private:
  Request failed(OpKind kind, Status s);
  /// A new request counted in this connection's metrics as `kind`, posted now.
  std::shared_ptr<RequestState> newRequest(OpKind kind);
  template <class PostFn>
  Request post(OpKind kind, size_t bytes, PostFn&& post_to_transport);
  /// Makes `r` outstanding until the transport completes it: its deadline starts now, `self`
  /// keeps it alive, and it joins the outstanding list (engine lock held).
  void trackLocked(const std::shared_ptr<RequestState>& r);
  void deliverMessages();
  /// On the peer's BYE: fetches the messages the transport holds before the endpoint goes.
  void keepArrivedOnBye();
  void handleControlFrame(Frame f, Status* end);
  void endControl(Status why);

  std::shared_ptr<EngineImpl> engine_;
  std::shared_ptr<ConnMetrics> metrics_;  ///< in the engine's registry; counted without a lock
  Fd control_;
  FrameReader control_in_;       ///< control loop only
  std::mutex control_write_mu_;  ///< guards control_out_
  FrameWriter control_out_;
  std::atomic<bool> bye_sent_{false};

  // Guarded by the engine lock.
  std::unique_ptr<transport::Endpoint> endpoint_;
  transport::ConnectionScope scope_;  ///< set once, by createEndpoint (before any lookup)
  Status broken_;
  bool closed_ = false;
  RequestState* head_ = nullptr;
  RequestState* tail_ = nullptr;
  std::map<std::vector<uint8_t>, std::shared_ptr<RemoteKeyRef>, KeyBytesLess> keys_;
  struct PostedRecv {
    std::shared_ptr<RequestState> request;
    RegionPin region;  ///< the receive buffer stays registered (and counted) while posted
    uint8_t* buffer;
    size_t capacity;
  };
  /// Finishes a posted receive and releases its buffer (engine lock held).
  void finishRecv(PostedRecv& p, Status status, size_t bytes);
  /// A receive posted after the peer's close: takes the next message that arrived before it.
  void deliverArrivedLocked(PostedRecv p);
  /// A receive that took its message but completes only after every earlier one: one the
  /// transport fills itself (fetchHeld; it completes this when the data is in), or one filled
  /// while such an earlier one was still landing. Completions thus keep the sending order.
  struct Landing final : transport::Completion {
    std::weak_ptr<ConnectionImpl> connection;
    PostedRecv recv;
    size_t bytes = 0;
    bool claimed = false;  ///< filled by the transport (an error then means a lost message)
    bool consumes = true;  ///< took a message (counts for the peer's credit)
    bool landed = false;   ///< the data is in (or never will be: status says why)
    bool queued = true;    ///< still in landings_ (false once the connection broke)
    Status status;
    std::shared_ptr<Landing> self;          ///< the transport's hold, until complete()
    void complete(Status status) override;  ///< engine lock held (progress or close)
  };
  std::deque<std::shared_ptr<Landing>> landings_;
  /// A message the transport announced could not be fetched: later ones must not be matched
  /// with receives (each would get the message after its own); the connection is closing.
  bool stream_lost_ = false;
  struct HeldAccessError {
    std::shared_ptr<RequestState> request;
    Status status;
  };
  std::vector<HeldAccessError> held_access_errors_;
  /// Finishes held access errors: with their own status, or (`peer_left`) with `why`.
  void releaseAccessErrorsLocked(bool peer_left, const Status& why,
                                 Clock::time_point due = Clock::time_point::max());
  /// Set on the peer's BYE: messages that arrived before it stay readable after the close.
  bool keep_arrived_ = false;
  void loseStreamLocked(const Status& why);
  /// Completes a matched receive now, or queues it behind a receive still landing.
  void settleLocked(PostedRecv p, Status status, size_t bytes, bool consumes);
  /// Completes the landed receives at the head of landings_.
  void drainLandingsLocked();
  /// The connection broke: every queued receive completes (those still being written keep
  /// their buffer held until the transport completes them).
  void failLandingsLocked();
  /// Whether the transport is still writing a receive into `region`.
  bool landingUses(const RegionState* region) const;

  // Flow control of two-sided messages (credits; CREDIT control frames). Engine lock held.
  /// A send the peer has not granted yet: posted once a CREDIT frame raises send_limit_.
  struct BlockedSend {
    RequestState* request;  ///< linked in the outstanding list, kept alive by its `self`
    transport::MemoryHandle* handle;
    uint64_t addr;
    size_t length;
  };
  std::deque<BlockedSend> blocked_sends_;
  uint64_t sent_ = 0;                      ///< messages handed to the transport
  uint64_t send_limit_ = kInitialCredits;  ///< the peer's grant (total messages)
  uint64_t received_ = 0;                  ///< messages the peer sent us
  uint64_t consumed_ = 0;                  ///< of those, taken by posted receives
  uint64_t granted_ = kInitialCredits;     ///< our grant to the peer (total messages)
  /// Posts blocked sends the grant now allows.
  void postBlockedLocked();
  /// Fails a send that never reached the transport (unlinks it, releases what it pinned).
  void abandonLocked(RequestState* r, Status why);
  /// A message was taken by a receive: grants more once half the window is used.
  void consumedLocked();
  // Unsignaled writes (connection_unsignaled.cc), engine lock: gathered into batches, each
  // posted as one transport write with one completion; flush() waits for the batches before it.
  struct UnsignaledBatch {
    std::vector<transport::RmaOp> ops;
    std::vector<std::shared_ptr<RegionState>> regions;  ///< distinct consecutive; pinned below
    std::vector<RegionPin> pins;
    std::vector<std::shared_ptr<RemoteKeyRef>> keys;
    size_t bytes = 0;
  };
  UnsignaledBatch unsignaled_;
  uint64_t unsignaled_posted_ = 0;           ///< batches posted so far (their sequence numbers)
  uint64_t unsignaled_flushed_ = 0;          ///< `upto` of the newest flush
  std::set<uint64_t> unsignaled_in_flight_;  ///< posted, not completed
  std::map<uint64_t, Status> batch_errors_;  ///< failed batches, until a flush covering them
  Status dropped_;  ///< gathered writes dropped (region destroyed): the next flush says so
  struct PendingFlush {
    uint64_t from;   ///< covers batches from+1 .. upto
    uint64_t upto;   ///< completes once no batch up to this one is in flight
    Status dropped;  ///< writes before it that were dropped unposted
    std::shared_ptr<RequestState> request;
  };
  std::deque<PendingFlush> flushes_;
  /// Posts the gathered writes as one batch.
  void postUnsignaledLocked();
  void settleFlushesLocked();
  /// The connection ended: pending writes are dropped, flushes fail.
  void failUnsignaledLocked();
  /// `region` is going away: gathered writes from it are dropped (the next flush fails).
  void dropUnsignaledFromLocked(const RegionState* region);
  std::deque<PostedRecv> posted_;
  /// A message no posted receive took yet: its bytes, or a message the transport holds
  /// (onMessageHeld) until a buffer is posted for it.
  /// A held message no receive took in time, being fetched into memory of our own.
  struct Spill final : transport::Completion {
    std::weak_ptr<ConnectionImpl> connection;
    std::unique_ptr<uint8_t[]> data;
    size_t length = 0;
    bool landed = false;
    Status status;
    std::shared_ptr<Spill> self;            ///< the transport's hold, until complete()
    void complete(Status status) override;  ///< engine lock held (progress or close)
  };
  struct Unexpected {
    std::vector<uint8_t> data;
    std::optional<uint64_t> held;  ///< the transport still holds it (not fetched)
    size_t length = 0;
    uint64_t round = 0;            ///< the engine's progress round it arrived in (held)
    std::shared_ptr<Spill> spill;  ///< fetched (or being fetched) into our own memory
  };
  std::deque<Unexpected> unexpected_;
  /// Ends the held state of `u` (it is fetched or dropped).
  void unholdLocked(Unexpected& u);
  /// Counts a message from the peer against our grant; false (and the connection is closing) if
  /// the peer went past it.
  bool countArrivalLocked();
  /// Has the transport write held message `held` into the posted receive `p`.
  void fetchHeldLocked(PostedRecv p, uint64_t held, size_t length);
  std::deque<uint32_t> notifications_;

  // Lookups (control thread fulfils them).
  std::mutex lookup_mu_;
  std::condition_variable lookup_cv_;
  uint64_t next_lookup_ = 1;
  std::map<uint64_t, std::optional<std::pair<bool, std::vector<uint8_t>>>> lookups_;
  std::map<std::string, std::vector<uint8_t>> peer_regions_;
  bool control_closed_ = false;
};

}  // namespace zcx::detail

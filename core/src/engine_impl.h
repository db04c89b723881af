// Internal state of an Engine: the transport behind its lock, the progress and control threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "auth.h"
#include "control_loop.h"
#include "control_protocol.h"
#include "metadata_store.h"
#include "metrics.h"
#include "metrics_http.h"
#include "socket.h"
#include "zcx/memory.h"
#include "zcx/options.h"
#include "zcx/status.h"
#include "zcx/transport/transport.h"

namespace zcx::detail {

class ConnectionImpl;
class EngineImpl;
class PassiveHandshake;
class RequestState;

struct RegionState {
  std::shared_ptr<EngineImpl> engine;
  std::unique_ptr<transport::MemoryHandle> handle;
  uint8_t* data = nullptr;
  size_t size = 0;
  uint32_t access = 0;
  bool user_memory = false;  ///< registered (and cached) rather than allocated
  /// MemoryRegion objects that refer to this registration (the user's handles).
  std::atomic<uint32_t> handles{0};
  /// Operations and posted receives that use the memory and that the transport has not
  /// released yet (RegionPin).
  std::atomic<uint32_t> inflight{0};
  /// Deregisters. Never called with the engine lock held (RegionPin, EngineImpl::dropPins).
  ~RegionState();
  /// What a peer is told of this memory with `access` and `key` (an exposure's grant, or the
  /// registration's own key for MemoryRegion::descriptor()).
  RegionDescriptor describe(uint32_t access, std::vector<uint8_t> key) const;
};

/// An operation's hold on a region: counted in `inflight` and keeping the registration alive
/// until the transport no longer touches the memory.
class RegionPin {
 public:
  RegionPin() = default;
  explicit RegionPin(std::shared_ptr<RegionState> state) : state_(std::move(state)) {
    state_->inflight.fetch_add(1, std::memory_order_relaxed);
  }
  RegionPin(RegionPin&& other) noexcept : state_(std::move(other.state_)) {}
  RegionPin& operator=(RegionPin&& other) noexcept {
    if (this != &other) {
      unpinned();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  RegionPin(const RegionPin&) = delete;
  RegionPin& operator=(const RegionPin&) = delete;
  ~RegionPin() { unpinned(); }

  RegionState* get() const { return state_.get(); }
  /// Ends the hold now and hands back the reference, to be dropped outside the engine lock
  /// (dropping the last one deregisters).
  std::shared_ptr<RegionState> release() {
    if (state_) state_->inflight.fetch_sub(1, std::memory_order_acq_rel);
    return std::move(state_);
  }

 private:
  void unpinned() {
    if (state_) state_->inflight.fetch_sub(1, std::memory_order_acq_rel);
    state_.reset();
  }
  std::shared_ptr<RegionState> state_;
};

class EngineImpl : public std::enable_shared_from_this<EngineImpl> {
 public:
  EngineImpl(EngineOptions options, std::unique_ptr<transport::Transport> transport);
  ~EngineImpl();

  Status start();  ///< listener + threads
  void stop();     ///< closes every connection, joins the threads; idempotent

  // ---- progress (all transport calls happen under mu) ----
  /// One round: transport progress, deadlines, deferred closes, then callbacks (outside mu).
  int progressOnce();
  /// After a post: wakes the progress thread if it sleeps.
  void notePosted();
  /// Queues a user callback to run outside the lock (mu held).
  void deferCallback(std::function<void(const Status&)> cb, Status status);
  /// Runs queued callbacks (mu not held).
  void runDeferred();
  /// Deadlines come from a coarse clock (a few ms resolution, no system call).
  static Clock::time_point coarseNow();
  /// Closes `conn`'s endpoint after the current transport call returns (mu held).
  void scheduleClose(std::shared_ptr<ConnectionImpl> conn);
  /// After a registration: orders the memory's earlier contents before the progress thread.
  void publishRegion();
  /// Keeps references whose drop may deregister memory until the lock is released (mu held).
  void dropLater(std::shared_ptr<RegionState> region);
  /// After something was deferred from a user thread: wakes the progress thread to run it.
  void kick();
  /// Whether this thread is a progress thread of some engine (callbacks may run here).
  static bool onProgressThread();
  /// The last MemoryRegion of `region` is gone while operations use it: cancels them (their
  /// connections close: a posted RDMA operation cannot be recalled; posted receives complete
  /// kCancelled) and returns once the transport released the memory, or after a bounded wait.
  void revokeRegion(RegionState& region);
  /// The last MemoryRegion of `region` is gone: unexposes it, takes it out of the registration
  /// cache and revokes peers' access (the registration itself lives on while operations pin it).
  void retireRegion(RegionState& region);
  /// An exposure that went, and who hears of it: every connection (nullopt), or for a scoped
  /// one only the connections that were given it (the others never learnt the name).
  struct Withdrawal {
    std::string name;
    std::optional<std::set<uint64_t>> connections;
  };
  /// Tells peers that exposures are gone (UNEXPOSE frames), so their copies from the handshake
  /// go and lookups say NotFound.
  void announceUnexposed(const std::vector<Withdrawal>& gone);
  bool manualProgress() const { return options.progress == ProgressMode::kManual; }
  /// kManual waiters: progress until `done()` or `until`, spinning for options.progress_spin
  /// after the last event and then sleeping on the transport's fd and progress_wake_ until the
  /// next deadline (1 ms at a time if the fd may miss completions).
  void progressUntil(const std::function<bool()>& done, Clock::time_point until);
  /// Manual mode: wakes the waiters sleeping in progressUntil, for a request or connection
  /// another thread finished (the control thread closing a connection, a user's close()).
  void wakeSleepingWaiters();
  /// transport->progress() outside progressOnce (handshakes, waitReady, the BYE handler):
  /// then wakes whoever sleeps on the transport's fd (mu held).
  int progressTransportLocked();
  /// Transport progress ran outside the sleeper's own round: wakes or warns off sleepers.
  void noteTransportProgressed();

  // ---- connections ----
  /// `target`: "host:port", or with metadata an engine's name, looked up in etcd.
  Result<std::shared_ptr<ConnectionImpl>> connect(const std::string& target);
  Result<std::shared_ptr<ConnectionImpl>> accept(std::chrono::milliseconds timeout);
  std::map<std::string, std::vector<uint8_t>> exposedRegions();
  void forgetConnection(ConnectionImpl* conn);

  // ---- handshakes and the control loop ----
  /// Our HELLO (token not set).
  Hello localHello();
  /// A connection to the peer of `peer`'s HELLO, its transport endpoint created (not ready yet).
  Result<std::shared_ptr<ConnectionImpl>> makeConnection(Fd fd, Hello peer, uint64_t token,
                                                         bool active);
  /// Room for one more incoming connection (loop thread); kResourceExhausted says why not.
  Status admitPeer();
  /// Makes the control loop send `conn_id`'s queued control frames when its socket has room.
  void wantControlWrite(uint64_t conn_id);

  const EngineOptions options;
  std::unique_ptr<transport::Transport> transport;
  std::string name;
  /// Every connection's traffic counters (Engine::stats()).
  MetricsRegistry metrics;
  /// From auth_secret or auth_secret_file (set before start()); empty: no authentication.
  SecretBytes auth_secret;

  std::mutex mu;                      ///< the engine lock
  std::condition_variable event;      ///< notified (under mu) when notifications/messages arrive
  std::vector<ConnectionImpl*> live;  ///< connections with an endpoint (mu)
  /// Messages transports hold for live connections that no posted receive took yet (mu). Each
  /// waits one more progress round for a receive, then is fetched into memory of our own (the
  /// sender's send completes then, as the credit grant promised).
  size_t held_messages = 0;
  uint64_t progress_round = 0;  ///< progressOnce calls (mu)
  /// When an operation finishing now completed, for its latency: inside a progress round's
  /// transport progress every completion found shares one reading of the clock (the first one
  /// takes it), elsewhere the clock is read. Engine lock held.
  Clock::time_point completionNow() {
    if (!in_transport_progress_) return Clock::now();
    if (round_clock_ == Clock::time_point{}) round_clock_ = Clock::now();
    return round_clock_;
  }
  /// Access errors connections hold until they know whether the peer is still there (mu).
  size_t held_access_errors = 0;

  // Registration cache: a live registration of exactly (address, length, access) is shared
  // instead of registering the range again (what NIXL users asked for).
  std::mutex registrations_mu;
  std::map<std::tuple<uintptr_t, size_t, uint32_t>, std::weak_ptr<RegionState>> registrations;

  /// One Engine::expose: a region under a name, with the rights and peers it was exposed to and
  /// the keys handed out for it. Erasing it revokes them (each is a transport grant of its own).
  struct Exposure {
    const RegionState* region = nullptr;  ///< identity (RegionState erases its exposures)
    std::weak_ptr<RegionState> state;     ///< to pin the registration while granting
    uint32_t access = 0;
    std::set<std::string> peers;  ///< empty: every peer
    /// Unscoped: the one grant every peer gets, and its encoded descriptor (in HELLO frames).
    std::shared_ptr<transport::RemoteGrant> grant;
    std::vector<uint8_t> descriptor;
    /// Scoped: a grant per connection that looked it up (connection id -> grant, descriptor).
    std::map<uint64_t, std::pair<std::shared_ptr<transport::RemoteGrant>, std::vector<uint8_t>>>
        per_connection;
    /// Scoped: connections whose grant is being bound, with the lookups that wait for it (a
    /// peer repeating a lookup meanwhile gets no second grant).
    std::map<uint64_t, std::vector<std::function<void(std::optional<std::vector<uint8_t>>)>>>
        binding;
    /// Scoped and local-only: connections that were answered (they hear of an unexpose).
    std::set<uint64_t> told;
  };
  std::mutex exposed_mu;
  std::map<std::string, std::shared_ptr<Exposure>> exposed;
  /// Removes the exposures of `region` (their grants are destroyed once the caller drops the
  /// result, outside exposed_mu); returns who must hear of it.
  std::vector<Withdrawal> unexposeRegion(
      const RegionState* region, std::vector<std::shared_ptr<Exposure>>* gone,
      std::vector<std::shared_ptr<transport::RemoteGrant>>* grants);
  /// exposed_mu held: moves `e`'s grants to `out` (revoked when the caller drops them, outside
  /// the lock), so a bind in flight that still holds `e` keeps none of them alive.
  static void takeGrants(Exposure& e, std::vector<std::shared_ptr<transport::RemoteGrant>>* out);
  /// exposed_mu held: who hears that `e` (exposed as `name`) went.
  static Withdrawal withdrawalOf(const std::string& name, const Exposure& e);
  /// The descriptor `conn` gets for `name` (nullopt: no such exposure, or `conn`'s peer is not
  /// in its list), now or, when `pending` is set, later through `later` (called once, on a
  /// progress thread): a scoped exposure's first lookup by `conn` makes its grant, which the
  /// connection's endpoint may have to bind first (verbs memory windows). Control loop thread
  /// (may register memory).
  struct LookupAnswer {
    bool pending = false;
    std::optional<std::vector<uint8_t>> descriptor;
  };
  using LookupLater = std::function<void(std::optional<std::vector<uint8_t>>)>;
  LookupAnswer lookupExposure(const std::string& name, ConnectionImpl& conn, LookupLater later);
  /// `conn` ended: revokes the grants scoped to it; its grants_revoked flag keeps lookups and
  /// binds in flight from adding more.
  void revokeConnectionGrants(ConnectionImpl& conn);

  std::string listen_address;
  std::string metrics_address;  ///< where metrics_server_ listens ("" without it)
  /// EngineOptions::metadata: our keys in etcd and name lookups (null without it, and once
  /// stop() began: the last holder's drop revokes the lease). A MemoryRegion that outlives the
  /// engine may retire on another thread meanwhile, hence the lock.
  std::shared_ptr<MetadataStore> metadataStore() {
    std::lock_guard<std::mutex> lock(metadata_mu_);
    return metadata_;
  }

  /// Engine::stats() rendered for Prometheus.
  std::string metricsText();

 private:
  void progressLoop();
  void controlLoop();
  void checkDeadlines(Clock::time_point now);
  Result<std::shared_ptr<ConnectionImpl>> connectTo(const std::string& host_port);
  Result<std::shared_ptr<ConnectionImpl>> activeHandshake(Fd fd, Clock::time_point deadline);
  Status waitReadableWithProgress(int fd, Clock::time_point deadline);

  // Control loop thread only.
  void onListenerReadable();
  bool makeRoomForHandshake(Clock::time_point now);
  void updateListenerInterest();
  void onHandshakeEvents(ControlLoop::Key key, uint32_t events);
  void settleHandshake(ControlLoop::Key key);
  void controlTick();
  void watchConnection(std::shared_ptr<ConnectionImpl> conn);
  void onConnectionEvents(uint64_t conn_id, const std::shared_ptr<ConnectionImpl>& conn,
                          uint32_t events);
  void unwatchConnection(uint64_t conn_id);

  std::vector<std::pair<std::function<void(const Status&)>, Status>> deferred_;  // mu
  std::atomic<bool> has_deferred_{false};  ///< lets runDeferred() skip the lock when idle
  /// Connections whose transport failed, closed once their grace time passed (mu).
  std::vector<std::pair<std::shared_ptr<ConnectionImpl>, Clock::time_point>> to_close_;
  std::vector<std::shared_ptr<RegionState>> to_drop_;  // mu
  std::atomic<bool> has_drops_{false};  ///< lets dropPins() skip the lock when nothing to drop
  void dropPins();                      ///< drops to_drop_ outside the lock
  bool in_transport_progress_ = false;  ///< progressOnce is in transport->progress() (mu)
  Clock::time_point round_clock_{};     ///< completionNow() of this round; {} = not read (mu)
  std::vector<std::pair<std::function<void(const Status&)>, Status>> running_;  // progress-local
  Clock::time_point next_deadline_check_{};

  std::mutex conn_mu_;
  std::map<uint64_t, std::shared_ptr<ConnectionImpl>> connections_;  // open, polled by control
  std::deque<std::shared_ptr<ConnectionImpl>> accepted_;
  std::condition_variable accepted_cv_;

  ControlLoop loop_;
  ControlLoop::Key listener_key_ = 0;
  Clock::time_point listener_paused_until_{};  ///< out of fds: stop accepting for a moment
  bool listener_full_ = false;  ///< max_pending_handshakes reached: the backlog holds the rest
  std::map<ControlLoop::Key, std::unique_ptr<PassiveHandshake>> handshakes_;
  std::map<uint64_t, ControlLoop::Key> watched_;  ///< connection id -> its registration
  uint64_t evicted_handshakes_ = 0;               ///< silent peers closed to make room

  Fd listener_;
  Fd progress_wake_;
  /// Serves GET /metrics (metrics_address); stopped first in stop(), so it never outlives us.
  std::unique_ptr<MetricsServer> metrics_server_;
  std::mutex metadata_mu_;
  std::shared_ptr<MetadataStore> metadata_;
  std::thread control_thread_;
  std::thread progress_thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> sleeping_{false};
  std::atomic<int> manual_sleepers_{0};  ///< waiters in progressUntil's poll (manual mode)
  /// How long progress may sleep (mu): until the next operation deadline or close grace, at
  /// most 100 ms, if the transport's fd covers every completion; else 1 ms while busy.
  int sleepBudgetMsLocked(Clock::time_point now) const;
  std::atomic<uint64_t> post_seq_{0};
  bool stopped_ = false;
};

}  // namespace zcx::detail

#include "zcx/engine.h"

#include <errno.h>
#include <glog/logging.h>

#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cerrno>
#include <cstring>
#include <thread>

#include <cstring>

#include "auth_client.h"
#include "auth_secret.h"
#include "connection_impl.h"
#include "control_protocol.h"
#include "engine_impl.h"
#include "engine_metadata.h"
#include "handshake.h"
#include "zcx/transport/registry.h"

namespace zcx {
namespace detail {
namespace {

constexpr auto kDeadlineCheckPeriod = std::chrono::milliseconds(1);
// A waiter that spins with its peer on the same core (a one-CPU container, an oversubscribed
// node, or the scheduler placing both there) takes the CPU from the very process it waits for:
// with both zcx_perf processes pinned to one core, checked write_bw over shm ran 1.04 s instead
// of 0.03 s. So once a spin has found nothing for this long, each further fruitless pass yields
// the CPU (sched_yield, about 1.2 us here when nothing else is runnable). Not from the start:
// a reply due within a few microseconds (shm) must not wait behind a system call. The price: a
// busy task sharing the core may keep it for its time slice, and an event then waits for it.
constexpr auto kSpinBeforeYield = std::chrono::microseconds(10);

void spinPause(Clock::duration idle) {
  if (idle >= kSpinBeforeYield) sched_yield();
}

// A transport error is acted on only after this grace time: a peer that closes gracefully
// sends BYE and then closes its endpoint, and its BYE (kCancelled, "closed the connection")
// must not be overtaken by our transport noticing the closed endpoint (kConnectionBroken).
constexpr auto kTransportErrorGrace = std::chrono::milliseconds(100);
// A connection failing with an access error may be a peer that died: its kernel releases its
// memory before its QPs and sockets (measured on soft-RoCE: 1 in 10 kills), so the control
// channel's EOF can trail the refusal. The held operations wait this long for it.
constexpr auto kAccessErrorGrace = std::chrono::milliseconds(500);

// Set on threads that run progress for an engine (its progress thread); callbacks run there.
thread_local bool tls_progress_thread = false;

std::string defaultName() {
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  return std::string(host) + ":" + std::to_string(::getpid());
}

// Fresh kernel randomness each time: a seeded generator would hand forked children the same
// tokens as their parent (and as each other).
uint64_t randomToken() {
  uint64_t v = 0;
  if (::getrandom(&v, sizeof(v), 0) != static_cast<ssize_t>(sizeof(v))) {
    v = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) * 0x9E3779B97F4A7C15ull ^
        ::getpid();
  }
  return v;
}

void wake(const Fd& fd) {
  uint64_t one = 1;
  if (fd.valid()) (void)!::write(fd.get(), &one, sizeof(one));
}

void drain(const Fd& fd) {
  uint64_t v;
  (void)!::read(fd.get(), &v, sizeof(v));
}

transport::TransportConfig transportConfig(const EngineOptions& o) {
  transport::TransportConfig c;
  c.device = o.devices.empty() ? o.device : o.devices;
  c.port = o.device_port;
  c.gid_index = o.gid_index;
  c.params = o.transport_params;
  if (auto hp = parseHostPort(o.listen_address); hp.ok()) c.bind_host = hp->host;
  return c;
}

Status validate(const EngineOptions& o) {
  if (!o.devices.empty() && o.transport == "ucx") {
    return Status(StatusCode::kInvalidArgument,
                  "EngineOptions::devices (rails) is for the verbs transport; UCX picks its "
                  "devices with transport_params {\"ucx.net_devices\", ...}");
  }
  if (!o.device.empty() && !o.devices.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "EngineOptions: set device (one) or devices (rails), not both");
  }
  if (o.connect_timeout.count() <= 0 || o.operation_timeout.count() <= 0) {
    return Status(StatusCode::kInvalidArgument,
                  "connect_timeout and operation_timeout must be positive");
  }
  if (o.progress_spin.count() < 0 || o.progress_spin > std::chrono::seconds(1)) {
    return Status(StatusCode::kInvalidArgument,
                  "progress_spin must be between 0 and 1 s (50 us is the default)");
  }
  // TCP keepalive takes at most 32767 s.
  if (o.peer_timeout.count() <= 0 || o.peer_timeout > std::chrono::seconds(32767)) {
    return Status(StatusCode::kInvalidArgument,
                  "peer_timeout must be positive and at most 32767 s (10 s is the default)");
  }
  if (o.max_pending_handshakes == 0 || o.max_pending_accepts == 0) {
    return Status(StatusCode::kInvalidArgument,
                  "max_pending_handshakes and max_pending_accepts must be at least 1");
  }
  if (o.recv_window < kInitialCredits || o.recv_window > (1u << 20)) {
    return Status(StatusCode::kInvalidArgument, "recv_window must be between " +
                                                    std::to_string(kInitialCredits) +
                                                    " and 2^20 messages (64 is the default)");
  }
  if (o.max_message_size == 0 || o.max_message_size > (1u << 30)) {
    return Status(StatusCode::kInvalidArgument,
                  "max_message_size must be between 1 byte and 1 GiB");
  }
  if (!o.listen_address.empty()) {
    auto hp = parseHostPort(o.listen_address);
    if (!hp.ok()) return hp.status();
    if (hp->host.empty()) {
      // No implicit wildcard: which interfaces serve peers is the caller's explicit choice.
      return Status(StatusCode::kInvalidArgument,
                    "listen_address '" + o.listen_address +
                        "' names no host; write 127.0.0.1:PORT to serve this machine only, the "
                        "address of one interface, or 0.0.0.0:PORT for every interface (then "
                        "set auth_secret)");
    }
  }
  if (!o.metrics_address.empty()) {
    auto hp = parseHostPort(o.metrics_address);
    if (!hp.ok()) return hp.status().withContext("metrics_address");
    if (hp->host.empty()) {
      return Status(StatusCode::kInvalidArgument,
                    "metrics_address '" + o.metrics_address +
                        "' names no host; write 127.0.0.1:PORT to serve this machine only, or "
                        "the address of the interface your Prometheus scrapes");
    }
  }
  return validateMetadataOptions(o);
}

}  // namespace

Status validateOptions(const EngineOptions& o) { return validate(o); }

// The state every MemoryRegion of one registration shares; built only once the transport
// registration exists, so a failed registration leaves nothing to tear down.
std::shared_ptr<RegionState> makeRegionState(std::shared_ptr<EngineImpl> engine,
                                             std::unique_ptr<transport::MemoryHandle> handle,
                                             size_t size, uint32_t access, bool user_memory) {
  auto state = std::make_shared<RegionState>();
  state->engine = std::move(engine);
  state->data = static_cast<uint8_t*>(handle->address());
  state->handle = std::move(handle);
  state->size = size;
  state->access = access;
  state->user_memory = user_memory;
  return state;
}
transport::TransportConfig makeTransportConfig(const EngineOptions& o) {
  return transportConfig(o);
}

EngineImpl::EngineImpl(EngineOptions opts, std::unique_ptr<transport::Transport> t)
    : options(std::move(opts)),
      transport(std::move(t)),
      name(options.name.empty() ? defaultName() : options.name),
      metrics(transport->description()) {}

EngineImpl::~EngineImpl() { stop(); }

Status EngineImpl::start() {
  ZCX_RETURN_IF_ERROR(loop_.init());
  progress_wake_ = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!progress_wake_.valid()) {
    return Status(StatusCode::kResourceExhausted, "eventfd failed; too many open files?");
  }
  if (!options.listen_address.empty()) {
    auto hp = parseHostPort(options.listen_address);
    auto l = listenTcp(*hp);
    if (!l.ok()) return l.status();
    listener_ = std::move(l->first);
    listen_address = hp->host + ":" + std::to_string(l->second);
    if (auth_secret.empty() && !isLoopbackSocket(listener_.get())) {
      LOG(WARNING) << "zcx: listening on " << listen_address
                   << " without an auth_secret: anyone who reaches this port can connect, look "
                      "up every exposed region and learn the transport address. Set "
                      "EngineOptions::auth_secret or auth_secret_file (zcx_perf "
                      "--auth-secret-file) on every peer, or listen on 127.0.0.1";
    }
    listener_key_ = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { onListenerReadable(); });
    if (listener_key_ == 0)
      return Status(StatusCode::kInternal, "cannot watch the listening socket");
  }
  if (!options.metrics_address.empty()) {
    auto hp = parseHostPort(options.metrics_address);
    auto server = MetricsServer::start(*hp, [this] { return metricsText(); }, {});
    if (!server.ok()) return server.status();
    metrics_server_ = std::move(*server);
    metrics_address = metrics_server_->address();
    if (!metrics_server_->loopback()) {
      LOG(WARNING) << "zcx: serving metrics on " << metrics_address
                   << " without authentication: anyone who reaches this port sees peer names "
                      "and traffic counts. Listen on 127.0.0.1 unless your network is trusted";
    }
  }
  if (!options.metadata.empty()) {
    auto store = MetadataStore::open(metadataConfig(options));
    if (!store.ok()) return store.status();
    if (listener_.valid()) {
      auto hp = parseHostPort(listen_address);
      ZCX_RETURN_IF_ERROR((*store)->publish(name, advertisedAddress(options, hp->host, hp->port)));
    }
    std::lock_guard<std::mutex> lock(metadata_mu_);
    metadata_ = std::move(*store);
  }
  control_thread_ = std::thread([this] { controlLoop(); });
  if (options.progress == ProgressMode::kThread)
    progress_thread_ = std::thread([this] { progressLoop(); });
  return Status::Ok();
}

void EngineImpl::stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_ = true;
  {
    std::shared_ptr<MetadataStore> store;
    {
      std::lock_guard<std::mutex> lock(metadata_mu_);
      store.swap(metadata_);
    }
    store.reset();  // revokes the lease: our keys leave etcd before the listener closes
  }
  metrics_server_.reset();  // joins its thread: no scrape runs past this point
  loop_.wake();
  wake(progress_wake_);
  if (control_thread_.joinable()) control_thread_.join();
  if (progress_thread_.joinable()) progress_thread_.join();
  // The loop's registrations hold connections (which hold this engine): let them go.
  loop_.clear();
  watched_.clear();
  handshakes_.clear();
  std::map<uint64_t, std::shared_ptr<ConnectionImpl>> conns;
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    conns.swap(connections_);
    accepted_.clear();
  }
  for (auto& [id, c] : conns) c->close(Status(StatusCode::kCancelled, "engine shut down"), true);
  // Connections whose transport failure waits out its grace time: closed now (they hold the
  // engine, and the engine's queue holds them: the cycle must not outlive the engine).
  std::vector<std::pair<std::shared_ptr<ConnectionImpl>, Clock::time_point>> failing;
  {
    std::lock_guard<std::mutex> lock(mu);
    failing.swap(to_close_);
    for (auto& [c, when] : failing) c->breakLocked(c->pendingErrorLocked());
  }
  failing.clear();  // may destroy them: outside the lock
  // No progress thread is left: the thread destroying the engine runs the last callbacks.
  dropPins();
  runDeferred();
}

// ---------------------------------------------------------------- progress

int EngineImpl::progressOnce() {
  int n;
  std::vector<std::shared_ptr<ConnectionImpl>> closed;  // dropped outside the lock
  {
    std::lock_guard<std::mutex> lock(mu);
    ++progress_round;
    in_transport_progress_ = true;
    round_clock_ = Clock::time_point{};
    n = transport->progress();
    in_transport_progress_ = false;
    // Another thread may sleep in progressUntil on the event this round consumed.
    if (n > 0 && manualProgress()) noteTransportProgressed();
    if (held_access_errors != 0) {
      const auto now = Clock::now();
      for (ConnectionImpl* c : live) c->settleAccessErrorsLocked(now);
    }
    if (held_messages != 0) {
      for (ConnectionImpl* c : live) n += c->spillHeldLocked(progress_round);
    }
    auto now = coarseNow();
    if (now >= next_deadline_check_) {
      checkDeadlines(now);
      next_deadline_check_ = now + kDeadlineCheckPeriod;
    }
    // Endpoints that failed inside progress are closed here, outside their own callbacks.
    if (!to_close_.empty()) {
      auto exact = Clock::now();
      for (size_t i = 0; i < to_close_.size();) {
        if (to_close_[i].second > exact) {
          ++i;
          continue;
        }
        closed.push_back(std::move(to_close_[i].first));
        to_close_[i] = std::move(to_close_.back());
        to_close_.pop_back();
      }
    }
    for (auto& c : closed) {
      c->breakLocked(c->pendingErrorLocked());
      ++n;
    }
  }
  closed.clear();
  dropPins();
  runDeferred();
  return n;
}

void EngineImpl::publishRegion() {
  // The memory's contents so far (what the caller wrote before registering) happen-before
  // everything the progress thread does from now on, e.g. a peer's put landing in it: the
  // engine lock is the edge (taken briefly, never across the registration itself).
  std::lock_guard<std::mutex> lock(mu);
}

void EngineImpl::dropLater(std::shared_ptr<RegionState> region) {
  if (!region) return;
  to_drop_.push_back(std::move(region));
  has_drops_.store(true, std::memory_order_release);
}

void EngineImpl::dropPins() {
  if (!has_drops_.load(std::memory_order_acquire)) return;  // the common case: no lock
  // Swapped with an empty vector that has capacity (this thread's spare), so neither side
  // allocates in steady state. Taken out of the spare, not used in place: a deregistration
  // below may come back here. Once the spare is destroyed (an engine closed by a later
  // thread-exit or static destructor) it is left alone.
  struct Spare {
    std::vector<std::shared_ptr<RegionState>> v;
    bool gone = false;
    ~Spare() { gone = true; }
  };
  thread_local Spare spare;
  std::vector<std::shared_ptr<RegionState>> drop;
  if (!spare.gone) drop = std::move(spare.v);
  {
    std::lock_guard<std::mutex> lock(mu);
    drop.swap(to_drop_);
    has_drops_.store(false, std::memory_order_relaxed);
  }
  drop.clear();  // may deregister: no lock held
  if (!spare.gone) spare.v = std::move(drop);
}

void EngineImpl::kick() {
  if (!has_deferred_.load(std::memory_order_acquire)) return;
  if (options.progress == ProgressMode::kManual) return;  // the next progress()/wait() runs them
  wake(progress_wake_);
}

bool EngineImpl::onProgressThread() { return tls_progress_thread; }

void EngineImpl::retireRegion(RegionState& region) {
  if (region.user_memory) {
    std::lock_guard<std::mutex> lock(registrations_mu);
    auto it = registrations.find(
        std::make_tuple(reinterpret_cast<uintptr_t>(region.data), region.size, region.access));
    if (it != registrations.end() && it->second.lock().get() == &region) registrations.erase(it);
  }
  std::vector<std::shared_ptr<Exposure>> gone;
  std::vector<std::shared_ptr<transport::RemoteGrant>> grants;
  std::vector<Withdrawal> withdrawn = unexposeRegion(&region, &gone, &grants);
  grants.clear();  // revokes what the exposures handed out
  gone.clear();
  if (region.handle) region.handle->revokeRemoteAccess();
  if (!withdrawn.empty()) announceUnexposed(withdrawn);
  if (auto store = metadataStore()) {
    for (const Withdrawal& w : withdrawn)
      if (!w.connections) store->unpublishRegion(w.name);  // only unscoped ones are there
  }
}

EngineImpl::Withdrawal EngineImpl::withdrawalOf(const std::string& name, const Exposure& e) {
  Withdrawal w{name, std::nullopt};
  if (e.peers.empty()) return w;
  w.connections.emplace();
  for (const auto& [id, g] : e.per_connection) w.connections->insert(id);
  for (const auto& [id, waiting] : e.binding) w.connections->insert(id);
  w.connections->insert(e.told.begin(), e.told.end());
  return w;
}

std::vector<EngineImpl::Withdrawal> EngineImpl::unexposeRegion(
    const RegionState* region, std::vector<std::shared_ptr<Exposure>>* gone,
    std::vector<std::shared_ptr<transport::RemoteGrant>>* grants) {
  std::vector<Withdrawal> withdrawn;
  std::lock_guard<std::mutex> lock(exposed_mu);
  for (auto it = exposed.begin(); it != exposed.end();) {
    if (it->second->region == region) {
      withdrawn.push_back(withdrawalOf(it->first, *it->second));
      takeGrants(*it->second, grants);  // revoked by the caller even if a bind holds the exposure
      gone->push_back(std::move(it->second));
      it = exposed.erase(it);
    } else {
      ++it;
    }
  }
  return withdrawn;
}

void EngineImpl::announceUnexposed(const std::vector<Withdrawal>& gone) {
  std::vector<std::shared_ptr<ConnectionImpl>> conns;
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    for (auto& [id, c] : connections_) conns.push_back(c);
  }
  for (auto& c : conns) {
    for (const Withdrawal& w : gone) {
      if (w.connections && w.connections->count(c->id) == 0) continue;
      (void)c->queueControlFrame(
          FrameType::kUnexpose,
          std::vector<uint8_t>(w.name.begin(), w.name.end()));  // closed: no one to tell
    }
  }
}

void EngineImpl::revokeRegion(RegionState& region) {
  {
    std::lock_guard<std::mutex> lock(mu);
    for (size_t i = 0; i < live.size();) {
      if (!live[i]->cancelUsesLocked(&region)) ++i;  // else it left `live`
    }
  }
  kick();
  // Peers lost access in retireRegion; accesses that passed the target's check before that are
  // waited for like our own operations.
  auto busy = [&] {
    return region.inflight.load(std::memory_order_acquire) != 0 ||
           (region.handle && region.handle->remoteAccessesInFlight() != 0);
  };
  // The transport releases the memory from progress (UCX calls back for what it still held).
  auto until = Clock::now() + options.connect_timeout;
  while (busy() && Clock::now() < until) {
    if (manualProgress() || onProgressThread() || stopping_.load()) {
      progressOnce();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  if (busy()) {
    LOG(ERROR) << "zcx: a MemoryRegion was destroyed while the transport still held "
               << region.inflight.load() << " operation(s) and "
               << (region.handle ? region.handle->remoteAccessesInFlight() : 0)
               << " remote access(es) on it after " << options.connect_timeout.count()
               << " ms; its registration stays until they are released. Do not free or reuse "
                  "the memory before they complete.";
  }
}

void EngineImpl::checkDeadlines(Clock::time_point now) {
  for (size_t i = 0; i < live.size(); ++i) {
    ConnectionImpl* c = live[i];
    RequestState* r = c->oldestOutstanding();
    if (!r || r->deadline > now) continue;
    Status why(StatusCode::kTimedOut,
               "operation did not complete within " +
                   std::to_string(options.operation_timeout.count()) +
                   " ms (operation_timeout); the connection to " + c->peer_name +
                   " is closed because a posted RDMA operation cannot be recalled");
    r->finish(why);
    c->breakLocked(why);  // completes (and unlinks) everything else outstanding
    --i;                  // breakLocked removed c from live
  }
}

void EngineImpl::scheduleClose(std::shared_ptr<ConnectionImpl> conn) {
  const bool access = conn->pendingErrorLocked().code() == StatusCode::kRemoteAccessError;
  to_close_.emplace_back(std::move(conn),
                         Clock::now() + (access ? kAccessErrorGrace : kTransportErrorGrace));
}

void EngineImpl::deferCallback(std::function<void(const Status&)> cb, Status status) {
  deferred_.emplace_back(std::move(cb), std::move(status));
  has_deferred_.store(true, std::memory_order_release);
}

Clock::time_point EngineImpl::coarseNow() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  // steady_clock is CLOCK_MONOTONIC: same epoch, coarser ticks.
  return Clock::time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
}

void EngineImpl::runDeferred() {
  if (!has_deferred_.load(std::memory_order_acquire)) return;  // the common case: no lock
  std::vector<std::pair<std::function<void(const Status&)>, Status>> batch;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (deferred_.empty()) return;
    batch.swap(deferred_);
    has_deferred_.store(false, std::memory_order_relaxed);
  }
  for (auto& [cb, st] : batch) cb(st);
}

void EngineImpl::notePosted() {
  if (options.progress == ProgressMode::kManual) return;  // nobody sleeps
  post_seq_.fetch_add(1, std::memory_order_seq_cst);
  if (sleeping_.load(std::memory_order_seq_cst)) wake(progress_wake_);
}

void EngineImpl::progressLoop() {
  tls_progress_thread = true;
  auto last_event = Clock::now();
  uint64_t seen_seq = post_seq_.load();
  while (!stopping_.load(std::memory_order_relaxed)) {
    if (progressOnce() > 0) {
      last_event = Clock::now();
      continue;
    }
    uint64_t seq = post_seq_.load();
    if (seq != seen_seq) {  // something was posted: stay hot
      seen_seq = seq;
      last_event = Clock::now();
      continue;
    }
    if (auto idle = Clock::now() - last_event; idle < options.progress_spin) {
      spinPause(idle);
      continue;
    }
    bool armed;
    int timeout_ms;
    {
      std::lock_guard<std::mutex> lock(mu);
      armed = transport->arm();
      timeout_ms = sleepBudgetMsLocked(Clock::now());
    }
    if (!armed) continue;
    sleeping_.store(true, std::memory_order_seq_cst);
    if (post_seq_.load(std::memory_order_seq_cst) != seen_seq) {
      sleeping_.store(false);
      continue;
    }
    pollfd fds[2] = {{progress_wake_.get(), POLLIN, 0}, {transport->eventFd(), POLLIN, 0}};
    ::poll(fds, fds[1].fd >= 0 ? 2 : 1, fds[1].fd >= 0 ? timeout_ms : std::min(timeout_ms, 1));
    sleeping_.store(false, std::memory_order_seq_cst);
    if (fds[0].revents & POLLIN) drain(progress_wake_);
    last_event = Clock::now();
  }
}

int EngineImpl::sleepBudgetMsLocked(Clock::time_point now) const {
  bool busy = !to_close_.empty() || held_access_errors != 0 || held_messages != 0;
  for (ConnectionImpl* c : live) busy |= c->oldestOutstanding() != nullptr;
  if (!transport->capabilities().event_fd_covers_completions) return busy ? 1 : 100;
  // Held messages wait one progress round for a receive, then are fetched; held access errors
  // (rare) have deadlines the outstanding list no longer shows: neither waits 100 ms.
  if (held_messages != 0 || held_access_errors != 0) return 1;
  Clock::time_point next = now + std::chrono::milliseconds(100);
  for (ConnectionImpl* c : live) {
    if (const RequestState* r = c->oldestOutstanding(); r != nullptr && r->deadline < next)
      next = r->deadline;  // the oldest has the earliest deadline (one operation_timeout)
  }
  for (const auto& [c, when] : to_close_) next = std::min(next, when);
  // At least 1 ms, rounded up: deadlines are checked on the coarse clock, which may lag this
  // one by a tick; waking just before a deadline would only spin.
  if (next <= now) return 1;
  return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(next - now).count());
}

int EngineImpl::progressTransportLocked() {
  const int n = transport->progress();
  noteTransportProgressed();
  return n;
}

void EngineImpl::noteTransportProgressed() {
  // This progress may have consumed the event a sleeper's fd was armed for (a verbs CQ
  // notification is one-shot), leaving the CQ unarmed: sleepers go round again and re-arm it.
  // One about to sleep sees post_seq_ move (the progress loop and progressUntil check it after
  // announcing themselves); one asleep is woken.
  post_seq_.fetch_add(1, std::memory_order_seq_cst);
  if (sleeping_.load(std::memory_order_seq_cst) ||
      manual_sleepers_.load(std::memory_order_seq_cst) > 0)
    wake(progress_wake_);
}

void EngineImpl::wakeSleepingWaiters() {
  if (!manualProgress()) return;
  // Pairs with the fence in progressUntil: either it sees the request done, or we see it asleep.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (manual_sleepers_.load(std::memory_order_relaxed) > 0) wake(progress_wake_);
}

// A waiter in manual mode drives progress itself. Spinning until its request completes would
// take a core for as long as it waits: a passive target, or a side that waits for its peer,
// would compete with the work it waits for (on soft-RoCE the CPU is the NIC). So it spins for
// progress_spin after the last event, then sleeps on the transport's fd like the progress
// thread, until the next deadline (sleepBudgetMsLocked). A request another thread completes
// (the control thread closing the connection) wakes it through progress_wake_.
void EngineImpl::progressUntil(const std::function<bool()>& done, Clock::time_point until) {
  auto last_event = Clock::now();
  for (;;) {
    if (progressOnce() > 0) last_event = Clock::now();
    if (done()) return;
    auto now = Clock::now();
    if (now >= until) return;
    if (now - last_event < options.progress_spin) {
      spinPause(now - last_event);
      continue;
    }
    int fd = transport->eventFd();
    if (fd < 0) {  // nothing to sleep on: keep polling
      spinPause(now - last_event);
      continue;
    }
    bool armed;
    int timeout_ms;
    uint64_t seq;
    {
      std::lock_guard<std::mutex> lock(mu);
      armed = transport->arm();
      timeout_ms = sleepBudgetMsLocked(now);
      seq = post_seq_.load(std::memory_order_seq_cst);
    }
    if (!armed) continue;  // events are waiting: progress again first
    // Receives and notification waits are not in the budget's outstanding list: a transport
    // whose fd may miss completions keeps the 1 ms wake here.
    if (!transport->capabilities().event_fd_covers_completions) timeout_ms = 1;
    timeout_ms = static_cast<int>(std::min<int64_t>(
        timeout_ms, std::chrono::ceil<std::chrono::milliseconds>(until - now).count()));
    manual_sleepers_.fetch_add(1, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool woken = false;
    // Another thread's progress since arm() may have taken the armed event: go round instead.
    if (!done() && post_seq_.load(std::memory_order_seq_cst) == seq) {
      pollfd p[2] = {{fd, POLLIN, 0}, {progress_wake_.get(), POLLIN, 0}};
      ::poll(p, 2, timeout_ms);
      woken = (p[1].revents & POLLIN) != 0;
    }
    // The last sleeper out drains the wake-up: every other one saw it too.
    if (manual_sleepers_.fetch_sub(1, std::memory_order_relaxed) == 1 && woken)
      drain(progress_wake_);
    last_event = Clock::now();
  }
}

// ---------------------------------------------------------------- connections

std::map<std::string, std::vector<uint8_t>> EngineImpl::exposedRegions() {
  // Scoped exposures never travel in a HELLO (ours may go out before we know the peer's name):
  // their peers look them up, and the answer depends on who asks.
  std::lock_guard<std::mutex> lock(exposed_mu);
  std::map<std::string, std::vector<uint8_t>> out;
  for (auto& [n, e] : exposed)
    if (e->peers.empty()) out[n] = e->descriptor;
  return out;
}

namespace {

/// A connection-scoped grant being bound by its endpoint: once bound, it joins its exposure and
/// the lookups waiting for it are answered; if the exposure or the connection went meanwhile or
/// the bind failed, it is dropped and the answer is NotFound. complete() runs under the engine
/// lock, so the work is deferred to after it (grant teardown deregisters memory; answers write
/// to the control socket).
struct GrantBinding final : transport::Completion {
  EngineImpl* engine;
  // Declared in this order so that they go in the reverse one: grant, exposure (and any grants
  // it still holds), and only then the region under them.
  std::shared_ptr<RegionState> region;  ///< the grant's memory stays registered until then
  std::shared_ptr<EngineImpl::Exposure> exposure;
  std::string name;
  std::weak_ptr<ConnectionImpl> conn;
  uint64_t conn_id = 0;
  std::shared_ptr<transport::RemoteGrant> grant;
  std::vector<uint8_t> descriptor;
  EngineImpl::LookupLater later;

  void complete(Status status) override {
    std::shared_ptr<GrantBinding> self(this);
    engine->deferCallback([self](const Status& s) { self->finish(s); }, std::move(status));
  }

  void finish(const Status& status) {
    std::optional<std::vector<uint8_t>> answer;
    std::vector<EngineImpl::LookupLater> waiting;
    // Held across the lock (not dropped inside it: its destructor takes exposed_mu).
    std::shared_ptr<ConnectionImpl> c = conn.lock();
    {
      std::lock_guard<std::mutex> lock(engine->exposed_mu);
      auto w = exposure->binding.find(conn_id);
      if (w != exposure->binding.end()) {
        waiting = std::move(w->second);
        exposure->binding.erase(w);
      }
      auto it = engine->exposed.find(name);
      // A connection that ended set grants_revoked before its sweep took this lock.
      if (status.ok() && it != engine->exposed.end() && it->second == exposure && c &&
          !c->grants_revoked.load()) {
        auto [slot, inserted] =
            exposure->per_connection.emplace(conn_id, std::make_pair(grant, descriptor));
        answer = slot->second.second;
      }
    }
    if (!status.ok()) {
      LOG(WARNING) << "zcx: binding '" << name << "' to connection " << conn_id
                   << " failed: " << status.toString();
    }
    grant.reset();  // dropped here, after the lock, unless the exposure kept it
    later(answer);
    for (auto& w : waiting) w(answer);
    exposure.reset();
    region.reset();
  }
};

/// A connection may have this many lookups of one scoped name waiting for its grant's bind.
constexpr size_t kMaxLookupsWaitingForABind = 16;

}  // namespace

EngineImpl::LookupAnswer EngineImpl::lookupExposure(const std::string& name, ConnectionImpl& conn,
                                                    LookupLater later) {
  std::shared_ptr<Exposure> e;
  {
    std::lock_guard<std::mutex> lock(exposed_mu);
    auto it = exposed.find(name);
    // A peer outside the list learns nothing, not even that the name exists.
    if (it == exposed.end()) return {};
    if (it->second->peers.empty()) return {false, it->second->descriptor};
    if (it->second->peers.count(conn.peer_name) == 0) return {};
    if (it->second->access == kLocalOnly) {
      it->second->told.insert(conn.id);  // so that it hears of an unexpose
      return {false, it->second->descriptor};
    }
    auto mine = it->second->per_connection.find(conn.id);
    if (mine != it->second->per_connection.end()) return {false, mine->second.second};
    auto binding = it->second->binding.find(conn.id);
    if (binding != it->second->binding.end()) {  // answered with the grant being bound
      if (binding->second.size() >= kMaxLookupsWaitingForABind) return {};  // bounded: NotFound
      binding->second.push_back(std::move(later));
      return {true, std::nullopt};
    }
    e = it->second;
  }
  // The first lookup by this connection: a grant of its own (registration work on verbs), made
  // without exposed_mu while the registration is pinned.
  std::shared_ptr<transport::RemoteGrant> grant;  // destroyed after the lock if not kept
  std::shared_ptr<RegionState> state = e->state.lock();
  if (!state) return {};
  auto g = state->handle->grant(e->access, conn.scope());
  if (!g.ok()) {
    LOG(WARNING) << "zcx: cannot grant '" << name << "' to " << conn.peer_name << ": "
                 << g.status().toString();
    return {};
  }
  grant = std::move(*g);
  std::vector<uint8_t> bytes = state->describe(e->access, grant->packedKey()).encode();
  if (grant->needsBind()) {
    auto* binding = new GrantBinding();
    binding->engine = this;
    binding->exposure = e;
    binding->region = state;
    binding->name = name;
    binding->conn = conn.weak_from_this();
    binding->conn_id = conn.id;
    binding->grant = grant;
    binding->descriptor = std::move(bytes);
    binding->later = std::move(later);
    {
      std::lock_guard<std::mutex> lock(exposed_mu);
      e->binding.emplace(conn.id, std::vector<LookupLater>{});
    }
    Status bound = conn.bindGrant(grant.get(), binding);
    notePosted();  // the progress thread may sleep: the bind completes through it
    if (!bound.ok()) {
      {
        // No waiters yet: only the control loop thread (this one) adds them.
        std::lock_guard<std::mutex> lock(exposed_mu);
        e->binding.erase(conn.id);
      }
      binding->grant.reset();
      binding->region.reset();
      delete binding;
      LOG(WARNING) << "zcx: cannot bind '" << name << "' to " << conn.peer_name << ": "
                   << bound.toString();
      return {};
    }
    return {true, std::nullopt};
  }
  std::lock_guard<std::mutex> lock(exposed_mu);
  auto it = exposed.find(name);
  if (it == exposed.end() || it->second != e) return {};  // unexposed meanwhile
  // A connection that ended set grants_revoked before its sweep took this lock.
  if (conn.grants_revoked.load()) return {};
  auto [slot, inserted] = e->per_connection.emplace(conn.id, std::make_pair(grant, bytes));
  return {false, slot->second.second};  // not inserted: a concurrent lookup's grant won
}

void EngineImpl::revokeConnectionGrants(ConnectionImpl& conn) {
  // The flag first: whoever adds a grant checks it under exposed_mu, so either it sees the flag
  // or this sweep sees its grant.
  conn.grants_revoked.store(true);
  std::vector<std::shared_ptr<transport::RemoteGrant>> gone;  // revoked outside the lock
  std::lock_guard<std::mutex> lock(exposed_mu);
  for (auto& [n, e] : exposed) {
    e->told.erase(conn.id);
    auto it = e->per_connection.find(conn.id);
    if (it == e->per_connection.end()) continue;
    gone.push_back(std::move(it->second.first));
    e->per_connection.erase(it);
  }
}

void EngineImpl::takeGrants(Exposure& e,
                            std::vector<std::shared_ptr<transport::RemoteGrant>>* out) {
  if (e.grant) out->push_back(std::move(e.grant));
  for (auto& [id, g] : e.per_connection) out->push_back(std::move(g.first));
  e.per_connection.clear();
}

void EngineImpl::forgetConnection(ConnectionImpl* conn) {
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    connections_.erase(conn->id);
  }
  uint64_t id = conn->id;
  loop_.post([this, id] { unwatchConnection(id); });
}

// Waits for the peer's next control frame while this engine's transport keeps progressing: the
// peer's endpoint may still be wiring up, which needs ours to answer (in manual progress mode
// nobody else progresses it).
Status EngineImpl::waitReadableWithProgress(int fd, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, manualProgress() ? 0 : 1);
    if (r > 0) return Status::Ok();
    if (r < 0 && errno != EINTR) {
      return Status(StatusCode::kConnectionBroken,
                    std::string("poll on the control socket: ") + std::strerror(errno));
    }
    if (manualProgress()) {
      std::lock_guard<std::mutex> lock(mu);
      progressTransportLocked();
    }
    if (Clock::now() >= deadline) {
      return Status(StatusCode::kTimedOut,
                    "the peer did not confirm the connection within connect_timeout");
    }
  }
}

Hello EngineImpl::localHello() {
  Hello mine;
  mine.name = name;
  mine.transport = std::string(transport->name());
  mine.max_message_size = options.max_message_size;
  {
    std::lock_guard<std::mutex> lock(mu);
    mine.address = transport->localAddress();
  }
  mine.regions = exposedRegions();
  return mine;
}

Result<std::shared_ptr<ConnectionImpl>> EngineImpl::makeConnection(Fd fd, Hello peer,
                                                                   uint64_t token, bool active) {
  static std::atomic<uint64_t> next_id{1};
  auto conn =
      std::make_shared<ConnectionImpl>(shared_from_this(), next_id++, std::move(fd), peer.name);
  size_t cap = transport->capabilities().max_message_size;
  conn->max_message_size = std::min<size_t>(options.max_message_size, peer.max_message_size);
  if (cap) conn->max_message_size = std::min(conn->max_message_size, cap);
  conn->setPeerRegions(std::move(peer.regions));

  transport::EndpointSetup setup;
  setup.role = active ? transport::Role::kActive : transport::Role::kPassive;
  setup.peer_address = std::move(peer.address);
  setup.token = token;
  setup.max_message_size = conn->max_message_size;
  setup.events = conn.get();
  ZCX_RETURN_IF_ERROR(conn->createEndpoint(setup));
  return conn;
}

// The active side blocks on the caller's thread, bounded by the deadline.
Result<std::shared_ptr<ConnectionImpl>> EngineImpl::activeHandshake(Fd fd,
                                                                    Clock::time_point deadline) {
  // With a secret, nothing but a nonce leaves before the server has proven it knows it; from
  // then on every frame both ways carries a MAC.
  std::optional<ChannelMacs> macs;
  if (!auth_secret.empty()) {
    auto m = authenticateAsClient(fd.get(), auth_secret, deadline);
    if (!m.ok()) return m.status();
    macs.emplace(std::move(*m));
  }
  FrameMac* seal = macs ? &macs->send : nullptr;
  FrameMac* open = macs ? &macs->receive : nullptr;
  Hello mine = localHello();
  mine.token = randomToken();
  ZCX_RETURN_IF_ERROR(writeFrame(fd.get(), FrameType::kHello, encodeBounded(mine), deadline, seal));
  auto f = readFrame(fd.get(), deadline, open);
  if (!f.ok()) {
    if (f.status().code() == StatusCode::kPermissionDenied) return f.status();
    return f.status().withContext("handshake");
  }
  if (f->type == FrameType::kReject) {
    auto rej = decodeReject(f->body);
    if (!rej.ok()) return rej.status();
    const auto code = static_cast<StatusCode>(rej->code);
    if (code == StatusCode::kPermissionDenied) return Status(code, rej->reason);
    return Status(code, "peer rejected the connection: " + rej->reason);
  }
  if (f->type != FrameType::kHello) {
    return Status(StatusCode::kProtocolError,
                  "handshake: unexpected frame from peer; is it a zcx engine?");
  }
  auto peer = decodeHello(f->body);
  if (!peer.ok()) return peer.status();
  if (peer->token != mine.token)
    return Status(StatusCode::kProtocolError, "handshake: peer echoed a wrong token");

  auto made = makeConnection(std::move(fd), std::move(*peer), mine.token, true);
  if (!made.ok()) return made.status();
  auto conn = std::move(*made);
  Status ready = conn->waitReady(deadline);
  if (ready.ok()) ready = writeFrame(conn->controlFd(), FrameType::kReady, {}, deadline, seal);
  if (ready.ok()) ready = waitReadableWithProgress(conn->controlFd(), deadline);
  if (ready.ok()) {
    auto r = readFrame(conn->controlFd(), deadline, open);
    if (!r.ok())
      ready = r.status();
    else if (r->type != FrameType::kReady)
      ready = Status(StatusCode::kProtocolError, "handshake: expected READY");
  }
  if (!ready.ok()) {
    conn->close(ready, false);
    return ready.withContext("connection setup with " + conn->peer_name);
  }
  if (macs) conn->authenticateControl(std::move(*macs));
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    connections_[conn->id] = conn;
  }
  loop_.post([this, conn] { watchConnection(conn); });
  return conn;
}

Result<std::shared_ptr<ConnectionImpl>> EngineImpl::connect(const std::string& target) {
  auto metadata = metadataStore();
  if (!isEngineName(target)) return connectTo(target);
  if (!metadata) {
    return Status(StatusCode::kInvalidArgument,
                  "connect to '" + target +
                      "': no port; write host:port (e.g. 127.0.0.1:18515), or set "
                      "EngineOptions::metadata (etcd://...) to connect by engine name");
  }
  auto address = metadata->resolve(target);
  if (!address.ok()) return address.status().withContext("connect to '" + target + "'");
  auto conn = connectTo(*address);
  if (conn.ok() || conn.status().code() == StatusCode::kPermissionDenied) return conn;
  // The watch may not have seen a restart yet: ask etcd itself once more.
  auto fresh = metadata->resolve(target, /*fresh=*/true);
  if (fresh.status().code() == StatusCode::kNotFound)  // it went meanwhile
    return fresh.status().withContext("connect to '" + target + "'");
  if (fresh.ok() && *fresh != *address) conn = connectTo(*fresh);
  if (!conn.ok()) {
    return conn.status().withContext("connect to '" + target + "' (published in " +
                                     metadata->url() + " at " + (fresh.ok() ? *fresh : *address) +
                                     ")");
  }
  return conn;
}

Result<std::shared_ptr<ConnectionImpl>> EngineImpl::connectTo(const std::string& host_port) {
  auto hp = parseHostPort(host_port);
  if (!hp.ok()) return hp.status();
  auto deadline = Clock::now() + options.connect_timeout;
  auto fd = connectTcp(*hp, deadline);
  if (!fd.ok()) return fd.status();
  ZCX_RETURN_IF_ERROR(setPeerTimeout(fd->get(), options.peer_timeout));
  auto conn = activeHandshake(std::move(*fd), deadline);
  if (!conn.ok()) {
    const Status& s = conn.status();
    constexpr std::string_view kAuthFailed = "authentication failed: ";
    if (s.code() == StatusCode::kPermissionDenied && s.message().rfind(kAuthFailed, 0) == 0) {
      // Says first what failed, then where.
      return Status(s.code(), s.message() + " (connecting to " + host_port + ")");
    }
    return s.withContext("connect to " + host_port);
  }
  LOG(INFO) << "zcx: connected to " << (*conn)->peer_name << " at " << host_port << " over "
            << transport->name();
  return conn;
}

Result<std::shared_ptr<ConnectionImpl>> EngineImpl::accept(std::chrono::milliseconds timeout) {
  if (!listener_.valid()) {
    return Status(StatusCode::kInvalidArgument, "accept() on an engine without listen_address");
  }
  std::unique_lock<std::mutex> lock(conn_mu_);
  if (!accepted_cv_.wait_for(lock, timeout, [&] { return !accepted_.empty() || stopping_; })) {
    return Status(StatusCode::kTimedOut,
                  "no peer connected within " + std::to_string(timeout.count()) + " ms");
  }
  if (accepted_.empty()) return Status(StatusCode::kCancelled, "engine shut down");
  auto c = std::move(accepted_.front());
  accepted_.pop_front();
  return c;
}

// ---------------------------------------------------------------- control loop

Status EngineImpl::admitPeer() {
  size_t completing = 0;
  for (auto& [key, h] : handshakes_)
    completing += h->phase() == PassiveHandshake::Phase::kTransport;
  size_t waiting;
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    waiting = accepted_.size();
  }
  if (waiting + completing < options.max_pending_accepts) return Status::Ok();
  return Status(StatusCode::kResourceExhausted,
                "the server has " + std::to_string(waiting + completing) +
                    " connections not yet taken by accept() (max_pending_accepts " +
                    std::to_string(options.max_pending_accepts) +
                    "); retry later, or make the server accept faster");
}

void EngineImpl::wantControlWrite(uint64_t conn_id) {
  loop_.post([this, conn_id] {
    auto it = watched_.find(conn_id);
    if (it != watched_.end()) loop_.modify(it->second, EPOLLIN | EPOLLOUT);
  });
}

// A peer that has not sent its HELLO this long after connecting is not a client in a hurry:
// under pressure it gives its handshake slot to one waiting in the backlog.
constexpr auto kSilentPeerGrace = std::chrono::milliseconds(1000);

bool EngineImpl::makeRoomForHandshake(Clock::time_point now) {
  if (handshakes_.size() < options.max_pending_handshakes) return true;
  auto oldest = handshakes_.end();
  for (auto it = handshakes_.begin(); it != handshakes_.end(); ++it) {
    if (!it->second->silentSince(now - kSilentPeerGrace)) continue;
    if (oldest == handshakes_.end() || it->second->started() < oldest->second->started())
      oldest = it;
  }
  if (oldest == handshakes_.end()) return false;
  ++evicted_handshakes_;
  LOG_EVERY_N(WARNING, 100) << "zcx: " << options.max_pending_handshakes
                            << " handshakes pending (max_pending_handshakes): closed one whose "
                               "peer sent no HELLO within "
                            << kSilentPeerGrace.count() << " ms; " << evicted_handshakes_
                            << " closed so far";
  loop_.remove(oldest->first);  // before the socket is closed
  handshakes_.erase(oldest);
  return true;
}

// The listener is polled unless it is paused for lack of fds or every handshake slot is taken;
// while it is not, new connections wait in the kernel's backlog (their connect_timeout runs).
void EngineImpl::updateListenerInterest() {
  if (!listener_key_) return;
  bool full = handshakes_.size() >= options.max_pending_handshakes;
  if (full && !listener_full_) {
    LOG_EVERY_N(INFO, 100) << "zcx: " << options.max_pending_handshakes
                           << " handshakes pending (max_pending_handshakes): further connections "
                              "wait in the listen backlog";
  }
  listener_full_ = full;
  bool paused = listener_paused_until_ != Clock::time_point{};
  loop_.modify(listener_key_, full || paused ? 0u : static_cast<uint32_t>(EPOLLIN));
}

void EngineImpl::onListenerReadable() {
  for (int i = 0; i < 64; ++i) {  // a burst at a time; the next round takes the rest
    if (!makeRoomForHandshake(Clock::now())) break;
    int cfd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (cfd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // The pending connection stays in the backlog: stop polling the listener for a moment
        // instead of spinning on it.
        LOG_EVERY_N(WARNING, 100) << "zcx: cannot accept a connection: " << std::strerror(errno)
                                  << "; raise the open-file limit (ulimit -n)";
        listener_paused_until_ = Clock::now() + std::chrono::milliseconds(100);
      }
      break;
    }
    Fd fd(cfd);
    if (Status s = setPeerTimeout(fd.get(), options.peer_timeout); !s.ok()) {
      LOG(WARNING) << "zcx: closed an incoming connection: " << s.toString();
      continue;
    }
    int raw = fd.get();
    auto h = std::make_unique<PassiveHandshake>(*this, std::move(fd),
                                                Clock::now() + options.connect_timeout);
    ControlLoop::Key key = loop_.nextKey();
    if (loop_.add(raw, EPOLLIN, [this, key](uint32_t ev) { onHandshakeEvents(key, ev); }) != key)
      continue;
    handshakes_.emplace(key, std::move(h));
  }
  updateListenerInterest();
}

void EngineImpl::onHandshakeEvents(ControlLoop::Key key, uint32_t events) {
  auto it = handshakes_.find(key);
  if (it == handshakes_.end()) return;
  it->second->onEvents(events);
  settleHandshake(key);
}

// After a handshake moved: write interest, or hand its connection over, or drop it.
void EngineImpl::settleHandshake(ControlLoop::Key key) {
  auto it = handshakes_.find(key);
  if (it == handshakes_.end()) return;
  PassiveHandshake& h = *it->second;
  if (!h.finished()) {
    loop_.modify(key, h.wantsWrite() ? EPOLLIN | EPOLLOUT : EPOLLIN);
    return;
  }
  loop_.remove(key);  // before the socket can be closed
  std::unique_ptr<PassiveHandshake> done = std::move(it->second);
  handshakes_.erase(it);
  if (listener_full_) updateListenerInterest();  // a slot is free: take one from the backlog
  if (done->phase() != PassiveHandshake::Phase::kDone) return;  // logged by the handshake
  auto conn = done->connection();
  conn->adoptControlOutput(done->takeOutput());
  conn->adoptControlInput(done->takeInput());
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    connections_[conn->id] = conn;
  }
  watchConnection(conn);
  LOG(INFO) << "zcx: accepted " << conn->peer_name << " over " << transport->name();
  std::lock_guard<std::mutex> lock(conn_mu_);
  accepted_.push_back(std::move(conn));
  accepted_cv_.notify_all();
}

void EngineImpl::controlTick() {
  auto now = Clock::now();
  if (listener_key_ && listener_paused_until_ != Clock::time_point{} &&
      now >= listener_paused_until_) {
    listener_paused_until_ = {};
    updateListenerInterest();
  }
  if (listener_full_ && makeRoomForHandshake(now)) updateListenerInterest();
  if (handshakes_.empty()) return;
  bool transport_pending = false;
  for (auto& [key, h] : handshakes_) transport_pending |= h->waitsForTransport();
  if (transport_pending) {
    {
      std::lock_guard<std::mutex> lock(mu);
      progressTransportLocked();  // endpoints come up even under manual progress
    }
    kick();  // callbacks that progress queued run on a progress thread, not on this one
  }
  std::vector<ControlLoop::Key> keys;
  keys.reserve(handshakes_.size());
  for (auto& [key, h] : handshakes_) keys.push_back(key);
  for (ControlLoop::Key key : keys) {
    auto it = handshakes_.find(key);
    if (it == handshakes_.end()) continue;
    it->second->onTick(now);
    settleHandshake(key);
  }
}

void EngineImpl::watchConnection(std::shared_ptr<ConnectionImpl> conn) {
  if (stopping_) return;
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    if (!connections_.count(conn->id)) return;  // closed before the loop got to it
  }
  uint64_t id = conn->id;
  ControlLoop::Key key = loop_.add(conn->controlFd(), EPOLLIN, [this, id, conn](uint32_t ev) {
    onConnectionEvents(id, conn, ev);
  });
  if (key == 0) {
    conn->close(Status(StatusCode::kResourceExhausted, "cannot watch the control socket"), false);
    return;
  }
  watched_[id] = key;
  if (conn->controlWritePending()) loop_.modify(key, EPOLLIN | EPOLLOUT);
}

void EngineImpl::onConnectionEvents(uint64_t conn_id, const std::shared_ptr<ConnectionImpl>& conn,
                                    uint32_t events) {
  bool alive = true;
  if (events & EPOLLOUT) {
    bool pending = false;
    alive = conn->onControlWritable(&pending);
    auto it = watched_.find(conn_id);
    if (alive && !pending && it != watched_.end()) loop_.modify(it->second, EPOLLIN);
  }
  if (alive && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) alive = conn->onControlReadable();
  if (alive) return;
  {
    std::lock_guard<std::mutex> lock(conn_mu_);
    connections_.erase(conn_id);
  }
  unwatchConnection(conn_id);  // the loop keeps this handler (and conn) alive until it returns
}

void EngineImpl::unwatchConnection(uint64_t conn_id) {
  auto it = watched_.find(conn_id);
  if (it == watched_.end()) return;
  loop_.remove(it->second);
  watched_.erase(it);
}

void EngineImpl::controlLoop() {
  while (!stopping_) {
    // Handshakes waiting for their transport endpoint are looked at every millisecond; the
    // others only need their deadlines checked.
    bool transport_pending = false;
    for (auto& [key, h] : handshakes_) transport_pending |= h->waitsForTransport();
    int timeout_ms = transport_pending ? 1 : handshakes_.empty() ? 100 : 10;
    if (listener_paused_until_ != Clock::time_point{}) timeout_ms = std::min(timeout_ms, 10);
    loop_.runOnce(timeout_ms);
    controlTick();
  }
}

}  // namespace detail

// ---------------------------------------------------------------- public Engine

Result<std::unique_ptr<Engine>> Engine::create(const EngineOptions& options) {
  ZCX_RETURN_IF_ERROR(detail::validateOptions(options));
  auto secret = detail::loadAuthSecret(options);
  if (!secret.ok()) return secret.status();
  std::string why;
  auto t = transport::TransportRegistry::builtin().create(
      options.transport, detail::makeTransportConfig(options), &why);
  if (!t.ok()) return t.status();
  LOG(INFO) << "zcx: transport " << (*t)->name() << " (" << (*t)->description() << "): " << why;
  EngineOptions kept = options;
  detail::forgetAuthSecret(kept);  // the engine's copy lives in auth_secret only
  auto impl = std::make_shared<detail::EngineImpl>(std::move(kept), std::move(*t));
  impl->auth_secret = std::move(*secret);
  ZCX_RETURN_IF_ERROR(impl->start());
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Status Engine::probeTransport(std::string_view transport, const EngineOptions& options) {
  auto t = transport::TransportRegistry::builtin().create(transport,
                                                          detail::makeTransportConfig(options));
  return t.status();
}

Engine::Engine(std::shared_ptr<detail::EngineImpl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() { impl_->stop(); }

std::string_view Engine::transportName() const { return impl_->transport->name(); }
std::string Engine::transportDescription() const { return impl_->transport->description(); }
std::string Engine::listenAddress() const { return impl_->listen_address; }

EngineStats Engine::stats() const {
  EngineStats s = impl_->metrics.snapshot();
  for (auto& d : impl_->transport->deviceBytes()) s.devices.push_back({d.device, d.bytes});
  if (s.devices.empty()) {
    // One device carried everything this engine moved.
    DeviceStats d;
    d.device = !impl_->options.device.empty()    ? impl_->options.device
               : !impl_->options.devices.empty() ? impl_->options.devices
                                                 : std::string(impl_->transport->name());
    for (const RailStats& r : s.rails) {
      for (OpKind k : {OpKind::kWrite, OpKind::kRead, OpKind::kSend})
        d.bytes += r.traffic.op(k).bytes;
    }
    s.devices.push_back(std::move(d));
  }
  return s;
}
std::string Engine::metricsText() const { return impl_->metricsText(); }
std::string Engine::metricsAddress() const { return impl_->metrics_address; }

namespace detail {
std::string EngineImpl::metricsText() { return renderPrometheus(metrics.snapshot(), name); }
}  // namespace detail

Result<MemoryRegion> Engine::registerMemory(void* address, size_t length, uint32_t access) {
  if (address == nullptr || length == 0) {
    return Status(StatusCode::kInvalidArgument,
                  "registerMemory needs a non-null address and a length > 0");
  }
  if (access > kRemoteReadWrite) return Status(StatusCode::kInvalidArgument, "unknown access bits");
  auto key = std::make_tuple(reinterpret_cast<uintptr_t>(address), length, access);
  auto cached = [&]() -> std::shared_ptr<detail::RegionState> {
    std::lock_guard<std::mutex> cache_lock(impl_->registrations_mu);
    auto it = impl_->registrations.find(key);
    auto live = it == impl_->registrations.end() ? nullptr : it->second.lock();
    if (!live) return nullptr;
    // A registration whose last MemoryRegion is going (retired) is not handed out again: take a
    // handle only while others still hold one.
    uint32_t h = live->handles.load(std::memory_order_acquire);
    do {
      if (h == 0) return nullptr;
    } while (!live->handles.compare_exchange_weak(h, h + 1, std::memory_order_acq_rel));
    return live;
  };
  if (auto live = cached()) {  // cache hit
    MemoryRegion region(live);
    live->handles.fetch_sub(1, std::memory_order_acq_rel);  // the one cached() took
    return region;
  }
  // No zcx lock held: pinning pages can take long, and transports make registration safe to
  // call concurrently with everything else (transport.h).
  auto h = impl_->transport->registerMemory(address, length, access);
  if (!h.ok()) return h.status().withContext("registerMemory");
  auto state = detail::makeRegionState(impl_, std::move(*h), length, access, /*user_memory=*/true);
  impl_->publishRegion();
  std::shared_ptr<detail::RegionState> raced;  // a concurrent registration of the same range
  {
    std::lock_guard<std::mutex> cache_lock(impl_->registrations_mu);
    auto& slot = impl_->registrations[key];
    raced = slot.lock();
    if (!raced) slot = state;
  }
  if (raced) {
    state->user_memory = false;  // never in the cache: its destructor leaves the entry alone
    state.reset();               // deregisters ours, outside the lock
    return MemoryRegion(std::move(raced));
  }
  return MemoryRegion(std::move(state));
}

Result<MemoryRegion> Engine::allocate(size_t length, uint32_t access) {
  if (length == 0) return Status(StatusCode::kInvalidArgument, "allocate needs a length > 0");
  if (access > kRemoteReadWrite) return Status(StatusCode::kInvalidArgument, "unknown access bits");
  auto h = impl_->transport->allocateMemory(length, access);
  if (!h.ok()) return h.status().withContext("allocate");
  impl_->publishRegion();
  return MemoryRegion(
      detail::makeRegionState(impl_, std::move(*h), length, access, /*user_memory=*/false));
}

Status Engine::expose(std::string name, const MemoryRegion& region, const ExposeOptions& options) {
  if (!region.valid() || region.state()->engine != impl_) {
    return Status(StatusCode::kInvalidArgument,
                  "expose: the region was not registered by this engine");
  }
  if (name.empty() || name.size() > 200)
    return Status(StatusCode::kInvalidArgument, "expose: name must be 1-200 bytes");
  const uint32_t region_access = region.access();
  const uint32_t access = options.access.value_or(region_access);
  if ((access & ~region_access) != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "expose '" + name + "': access " + std::to_string(access) +
                      " is more than the region's access " + std::to_string(region_access) +
                      "; register the memory with the rights peers need (kRemoteRead, "
                      "kRemoteWrite) and expose at most those");
  }
  auto e = std::make_shared<detail::EngineImpl::Exposure>();
  e->region = region.state().get();
  e->state = region.state();
  e->access = access;
  for (const std::string& p : options.peers) {
    if (p.empty()) {
      return Status(StatusCode::kInvalidArgument,
                    "expose '" + name + "': an empty peer name in ExposeOptions::peers");
    }
    e->peers.insert(p);
  }
  // Never region.descriptor(): that makes the registration's own remote key (on verbs a
  // registration with the region's rights), which an exposure must not leave behind.
  if (access == kLocalOnly) {
    // Peers may learn its name and size, but get no key at all.
    e->descriptor = region.state()->describe(kLocalOnly, {}).encode();
  } else if (e->peers.empty()) {
    // Its own grant, so that unexpose revokes exactly what this exposure handed out.
    auto g = region.state()->handle->grant(access, std::nullopt);
    if (!g.ok()) return g.status().withContext("expose '" + name + "'");
    e->grant = std::move(*g);
    e->descriptor = region.state()->describe(access, e->grant->packedKey()).encode();
  }
  if (access != region_access || !e->peers.empty()) {
    bool enforced;
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      enforced = impl_->transport->capabilities().enforces_grants;
    }
    if (!enforced) {
      LOG(WARNING) << "zcx: expose '" << name << "': " << impl_->transport->description()
                   << " cannot enforce a narrower access or a peer list on the data path (UCX "
                      "native RMA, e.g. over shared memory: any peer holding the region's key "
                      "reaches all of it); only lookups are restricted. See docs/SECURITY.md.";
    }
  }
  // In etcd (metadata) before peers can look it up here; a peer list keeps it out of etcd.
  auto metadata = impl_->metadataStore();
  if (metadata && e->peers.empty()) {
    ZCX_RETURN_IF_ERROR(metadata->publishRegion(name, detail::regionValue(region.size(), access))
                            .withContext("expose '" + name + "'"));
  }
  const bool scoped_now = !e->peers.empty();
  std::shared_ptr<detail::EngineImpl::Exposure> replaced;  // its grants go after the lock
  std::vector<std::shared_ptr<transport::RemoteGrant>> revoked;
  std::optional<detail::EngineImpl::Withdrawal> withdrawn;
  {
    std::lock_guard<std::mutex> lock(impl_->exposed_mu);
    auto& slot = impl_->exposed[name];
    replaced = std::move(slot);
    if (replaced) {
      withdrawn = detail::EngineImpl::withdrawalOf(name, *replaced);
      detail::EngineImpl::takeGrants(*replaced, &revoked);
    }
    slot = std::move(e);
  }
  revoked.clear();
  replaced.reset();
  if (withdrawn) impl_->announceUnexposed({*withdrawn});
  if (metadata && withdrawn && !withdrawn->connections && scoped_now)
    metadata->unpublishRegion(name);  // was in etcd, its replacement (peer list) is not
  return Status::Ok();
}

void Engine::unexpose(std::string_view name) {
  std::shared_ptr<detail::EngineImpl::Exposure> gone;
  std::vector<std::shared_ptr<transport::RemoteGrant>> revoked;  // revoked outside the lock
  std::optional<detail::EngineImpl::Withdrawal> withdrawn;
  {
    std::lock_guard<std::mutex> lock(impl_->exposed_mu);
    auto it = impl_->exposed.find(std::string(name));
    if (it == impl_->exposed.end()) return;
    gone = std::move(it->second);
    withdrawn = detail::EngineImpl::withdrawalOf(it->first, *gone);
    detail::EngineImpl::takeGrants(*gone, &revoked);  // even if a bind in flight holds `gone`
    impl_->exposed.erase(it);
  }
  revoked.clear();
  gone.reset();
  impl_->announceUnexposed({*withdrawn});
  if (auto metadata = impl_->metadataStore(); metadata && !withdrawn->connections)
    metadata->unpublishRegion(std::string(name));
}

int Engine::progress() { return impl_->progressOnce(); }

}  // namespace zcx

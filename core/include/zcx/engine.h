// The engine: one transport, registered memory, a listener and the connections it makes.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "zcx/connection.h"
#include "zcx/memory.h"
#include "zcx/options.h"
#include "zcx/stats.h"
#include "zcx/status.h"

namespace zcx {

namespace detail {
class EngineImpl;
}

class ZCX_EXPORT Engine {
 public:
  /// Creates the transport (logging which and why), the listener and the progress thread.
  static Result<std::unique_ptr<Engine>> create(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  /// "ucx" or "verbs".
  std::string_view transportName() const;
  /// What the transport chose (devices, TLS), for logs.
  std::string transportDescription() const;
  /// "host:port" actually listened on ("" without a listener).
  std::string listenAddress() const;

  /// Traffic counters: per connection (those that still exist) and per rail (totals, including
  /// connections gone). Cheap to call; counting itself takes no lock.
  EngineStats stats() const;
  /// stats() in the Prometheus text exposition format (what GET /metrics serves).
  std::string metricsText() const;
  /// "host:port" of the metrics HTTP server (EngineOptions::metrics_address; "" without one).
  std::string metricsAddress() const;

  /// Registers user memory (it must outlive the region). `access` says what peers may do.
  /// Registering exactly the same range with the same access again while a registration is
  /// alive returns that registration (a cache hit, no new pinning); it is released with its
  /// last MemoryRegion.
  Result<MemoryRegion> registerMemory(void* address, size_t length, uint32_t access);
  /// Allocates registered memory (transports may give faster memory this way, e.g. UCX shm).
  Result<MemoryRegion> allocate(size_t length, uint32_t access);

  /// Publishes a region under `name` to current and future peers (Connection::remoteRegion),
  /// with a key of its own: unexpose() (or destroying the region) revokes it, and every later
  /// access through it fails, also from peers that kept the descriptor (not over UCX native RMA,
  /// i.e. shared memory, where only lookups are withdrawn: docs/SECURITY.md). Exposing a name
  /// again replaces (and revokes) the previous exposure. `options`: narrower access, peer list.
  /// With EngineOptions::metadata, an exposure without a peer list is also listed in etcd
  /// (name, size, access; no key), and expose fails if etcd cannot be told.
  Status expose(std::string name, const MemoryRegion& region, const ExposeOptions& options = {});
  void unexpose(std::string_view name);

  /// Connects to a listening engine at "host:port" (handshake: version, transport, addresses),
  /// or, with EngineOptions::metadata, to the engine published in etcd under a name (anything
  /// without ':'); a name etcd does not have gives kNotFound naming the etcd and the key.
  Result<Connection> connect(std::string_view host_port);
  /// The next connection a peer made to our listener.
  Result<Connection> accept(std::chrono::milliseconds timeout);

  /// Manual progress mode: one round of progress; returns how many events it handled.
  int progress();

  /// Whether `transport` can be created on this machine (Ok) or why not.
  static Status probeTransport(std::string_view transport, const EngineOptions& options = {});

 private:
  explicit Engine(std::shared_ptr<detail::EngineImpl> impl);
  std::shared_ptr<detail::EngineImpl> impl_;
};

}  // namespace zcx

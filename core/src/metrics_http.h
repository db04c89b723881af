// A tiny HTTP server for Prometheus scrapes: GET /metrics, one response per connection, on its
// own thread. Built for hostile networks: bounded requests, a deadline per client, a bounded
// number of clients, and never a blocking call on a client socket.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

class MetricsServer {
 public:
  using Render = std::function<std::string()>;
  struct Limits {
    size_t max_request = 8 * 1024;  ///< request line + headers; past it: 431 and close
    /// A client must send its request and take the response within this; else it is dropped.
    std::chrono::milliseconds client_timeout{2000};
    size_t max_clients = 64;  ///< more at once are closed at accept
  };

  /// Listens on `where` (port 0: any free port) and serves `render()` at /metrics.
  static Result<std::unique_ptr<MetricsServer>> start(const HostPort& where, Render render,
                                                      Limits limits);
  /// Stops the thread (promptly: it wakes on an eventfd) and closes every socket.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  /// "host:port" actually bound.
  const std::string& address() const { return address_; }
  bool loopback() const;

 private:
  MetricsServer(Fd listener, std::string address, Render render, Limits limits);
  void run();

  Fd listener_;
  Fd wake_;
  const std::string address_;
  const Render render_;
  const Limits limits_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

/// The response to one raw request (exposed for tests): status line, headers and body.
/// `request` is a whole header block, or more than max_request bytes without one.
std::string metricsHttpResponse(std::string_view request, size_t max_request,
                                const MetricsServer::Render& render);

}  // namespace zcx::detail

// Engine options: every knob a user sets, with defaults that work on a laptop.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <string>

namespace zcx {

/// Who drives the transport.
enum class ProgressMode {
  kThread,  ///< a background thread per engine (default): completions arrive on their own
  kManual,  ///< the caller drives progress with Engine::progress() or Request::wait();
            ///< lowest latency, no extra thread. The peer's writes only land while some thread
            ///< of that process progresses (UCX over TCP emulates RDMA in software).
};

struct EngineOptions {
  /// "auto" (verbs if an RDMA port is ACTIVE, else ucx; the choice is logged), "ucx" or "verbs".
  std::string transport = "auto";
  /// RDMA device ("rxe0", "mlx5_0"), port and GID index; empty/0/-1 = choose automatically.
  std::string device;
  int device_port = 0;
  int gid_index = -1;
  /// Transport-specific parameters, e.g. {"ucx.tls", "tcp"}, {"ucx.net_devices", "lo"}.
  std::map<std::string, std::string> transport_params;

  /// "host:port" to accept connections on (port 0 picks a free one; see Engine::listenAddress()).
  /// Empty: this engine only connects out.
  std::string listen_address;
  /// A name peers see in logs and errors (default: hostname:pid).
  std::string name;

  ProgressMode progress = ProgressMode::kThread;
  /// Connect/accept handshake, including the transport's own connection setup.
  std::chrono::milliseconds connect_timeout{5000};
  /// Deadline of every one-sided operation and send: past it the operation completes with
  /// kTimedOut and its connection is closed (an RDMA operation cannot be recalled otherwise).
  std::chrono::milliseconds operation_timeout{30000};
  /// Largest two-sided message this engine sends or receives (the smaller of both sides wins).
  size_t max_message_size = 64 * 1024;
};

}  // namespace zcx

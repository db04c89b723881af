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
  /// RDMA device ("rxe0", "mlx5_0"), port and GID index; empty/0/-1 = choose automatically
  /// (verbs: the best usable GID, or the one of listen_address's host; docs/soft-roce.md).
  std::string device;
  /// Several RDMA devices used together as rails: "rxe0,rxe1" (rail k of every node on one
  /// fabric, paired by position) or "all" (every usable device, sorted by name). Large one-sided
  /// operations are striped over the rails, a failed rail's share moves to the others
  /// (docs/multi-rail.md). Empty: `device` alone. Set `device` or `devices`, not both.
  std::string devices;
  int device_port = 0;
  int gid_index = -1;
  /// Transport-specific parameters, e.g. {"ucx.tls", "tcp"}, {"ucx.net_devices", "lo"}.
  std::map<std::string, std::string> transport_params;

  /// "host:port" to accept connections on (port 0 picks a free one; see Engine::listenAddress()).
  /// The host is explicit: "127.0.0.1:0" serves this machine only, "0.0.0.0:18515" every
  /// interface (then set an auth_secret: the engine warns otherwise). Empty: this engine only
  /// connects out.
  std::string listen_address;

  /// "host:port" serving GET /metrics (Prometheus text, Engine::metricsText()) over HTTP from
  /// a small thread of its own; port 0 picks a free one (see Engine::metricsAddress()). The
  /// host is explicit, as for listen_address; there is no authentication, so anything but a
  /// loopback address is logged as a warning. Empty (default): no HTTP server.
  std::string metrics_address;

  /// Shared secret that peers must prove they know before anything else is exchanged (mutual
  /// HMAC-SHA256 challenge-response; then every control frame carries a MAC under a session
  /// key). Both sides need the same secret; a peer with another secret, or none, is refused with
  /// kPermissionDenied ("authentication failed: ..."). Any bytes; use at least 16 random ones
  /// (e.g. `head -c 32 /dev/urandom`). Empty: no authentication (anyone who reaches the port
  /// may connect, look regions up and learn the transport address).
  std::string auth_secret;
  /// Or a file holding it, read once by Engine::create (one trailing newline is ignored, so
  /// `openssl rand -hex 32 > FILE` works). Keep it private to the user (chmod 600): the engine
  /// warns if the group or others can read it. Unreadable or empty: Engine::create fails.
  /// Set at most one of auth_secret and auth_secret_file.
  std::string auth_secret_file;
  /// A name peers see in logs and errors (default: hostname:pid). With `metadata` and a
  /// listen_address it is also the name others connect to, and must be set: 1-128 characters of
  /// A-Z a-z 0-9 . _ - (no ':', so that connect() tells a name from a "host:port").
  std::string name;

  /// Discovery through etcd: "etcd://host:port[,host:port...]" (etcd's client URLs; with several
  /// members a call that fails on one tries the next). Empty (default): no server, peers connect
  /// by "host:port". With it:
  ///  - an engine with a listen_address publishes, on an etcd lease of metadata_lease_ttl kept
  ///    alive by a thread of the engine, `<metadata_prefix><name>/address` = "host:port" and,
  ///    for every exposure without a peer list, `<metadata_prefix><name>/regions/<region>` =
  ///    "size=<bytes> access=<none|r|w|rw>" (unexpose deletes it). Destroying the engine revokes
  ///    the lease (its keys go at once); a dead engine's keys go when the lease expires. Another
  ///    live engine already published under `name` makes Engine::create fail.
  ///  - Engine::connect("name") looks the name up (a watch on the prefix keeps the engine's view
  ///    current); a "host:port" still connects directly.
  /// etcd must be reachable when Engine::create runs (it fails with the reason otherwise).
  std::string metadata;
  /// Prefix of every key (starts and ends with '/').
  std::string metadata_prefix = "/zcx/";
  /// Lease of the published keys, 2-10 s: how long a dead engine stays resolvable.
  std::chrono::seconds metadata_lease_ttl{10};
  /// The host published with the listener's port, for peers to dial. Empty: listen_address's
  /// host, which must then not be a wildcard (0.0.0.0 or ::, which no peer can dial: Engine::
  /// create refuses it and asks for advertise_host, e.g. this node's address on the fabric).
  std::string advertise_host;

  ProgressMode progress = ProgressMode::kThread;
  /// How long progress keeps polling after the last event before it sleeps on the transport's
  /// event fd (the progress thread, and Request::wait / waitNotification in kManual mode).
  /// Longer: lower latency after a pause, more CPU. Zero: sleep as soon as nothing happens.
  /// After the first 10 us of a spin that finds nothing, each further poll yields the CPU
  /// (sched_yield), so a peer process on the same core (a one-CPU container, an oversubscribed
  /// node) can run and send what this side waits for (a spin of 10 us or less never yields).
  /// A busy task on the same core may then keep the CPU for its time slice: an event arriving
  /// during it waits for that.
  std::chrono::microseconds progress_spin{50};
  /// Connect/accept handshake, including the transport's own connection setup.
  std::chrono::milliseconds connect_timeout{5000};
  /// How long a silent peer may stay silent before its connection is declared broken: TCP
  /// keepalive probes start after about a third of it and TCP_USER_TIMEOUT is set to it on
  /// every control socket, so a crashed host or a pulled cable is noticed within this time even
  /// on an idle connection. Must be positive (whole seconds for the probes, at least 1 s).
  std::chrono::milliseconds peer_timeout{10000};
  /// Incoming connections still in their handshake. Past it, further connections wait in the
  /// kernel's listen backlog until a handshake ends; a peer that has sent no HELLO for a second
  /// gives its place to them, so idle sockets cannot hold the listener.
  size_t max_pending_handshakes = 256;
  /// Connections handshaken but not yet taken by Engine::accept(); further peers get a REJECT
  /// (kResourceExhausted) telling them the server is not accepting fast enough.
  size_t max_pending_accepts = 1024;
  /// Flow control of send/recv: how many messages a peer may have sent on one connection that no
  /// posted receive has taken yet (credits this engine grants). Bounds what a peer can make us
  /// hold to recv_window x max_message_size bytes per connection; a sender past its grant waits
  /// (its send completes later, or fails at its deadline), and a peer that ignores the grant is
  /// disconnected (kProtocolError). At least 16.
  size_t recv_window = 64;
  /// Deadline of every one-sided operation and send: past it the operation completes with
  /// kTimedOut and its connection is closed (an RDMA operation cannot be recalled otherwise).
  std::chrono::milliseconds operation_timeout{30000};
  /// Largest two-sided message this engine sends or receives (the smaller of both sides wins).
  size_t max_message_size = 64 * 1024;
};

}  // namespace zcx

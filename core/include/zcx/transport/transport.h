// The south interface: what a transport (ucx, verbs, ...) implements for the core.
//
// The core (connection manager, channels, completions) only talks to these classes; it never
// includes a transport's headers. A transport lives in transport/<name>/ and is registered in
// the TransportRegistry (registry.h) by name.
//
// Threading contract: the core serialises every call into one Transport object and everything
// created from it (endpoints, remote keys) with one lock. A transport therefore needs no locks of
// its own for these calls, but it must not block in any of them beyond the time a single
// non-blocking verbs/UCX call takes. Exceptions: Transport's destructor; and registerMemory(),
// allocateMemory(), MemoryHandle::packedKey() and a MemoryHandle's destructor, which the core
// calls WITHOUT that lock, from any thread, concurrently with everything else (pinning pages is
// slow); the transport makes them safe (verbs: ibv_reg_mr is thread-safe; UCX: a context with
// mt_workers_shared). The core destroys a MemoryHandle only after every operation that used it
// completed (below).
//
// Completion contract: every post*() either returns a non-ok Status (then nothing was posted and
// `done` is never called) or returns Ok and later calls done->complete(status) exactly once, from
// inside progress() or close() (never from inside the post*() call itself), with Ok only when the
// operation finished (for writes: the data is visible at the target). complete() also means the
// transport no longer touches the operation's memory: an operation that close() cannot release
// at once (UCX still holds its requests) completes later, from progress(), once it can.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zcx/status.h"

namespace zcx::transport {

/// Access bits, same values as zcx::Access.
enum AccessBits : uint32_t {
  kAccessLocal = 0,        ///< only this process uses the memory (send source, recv target)
  kAccessRemoteRead = 1,   ///< peers may RDMA-read it
  kAccessRemoteWrite = 2,  ///< peers may RDMA-write it
};

/// Called exactly once per posted operation (see the completion contract above).
class Completion {
 public:
  virtual void complete(Status status) = 0;

 protected:
  ~Completion() = default;
};

enum class Role {
  kActive,   ///< the side that called Engine::connect()
  kPassive,  ///< the side whose listener accepted the connection
};

/// One connection, as its endpoint was set up (EndpointSetup::token and ::role on this side).
struct ConnectionScope {
  uint64_t token = 0;
  Role role = Role::kActive;
};

/// A revocable key to a MemoryHandle's memory with at most its rights, maybe usable by one
/// connection only: what Engine::expose hands out. Destroying it revokes the key (later accesses
/// through it are refused; accesses already copying finish, counted by the handle's
/// remoteAccessesInFlight()). Destroyed before its MemoryHandle, without the core's lock.
class RemoteGrant {
 public:
  virtual ~RemoteGrant() = default;
  /// What the peer imports (same format as MemoryHandle::packedKey()).
  virtual std::vector<uint8_t> packedKey() const = 0;
  /// A connection-scoped grant whose key works only once that connection's endpoint bound it
  /// (Endpoint::bindGrant; verbs: a type-2 memory window bound through the QP).
  virtual bool needsBind() const { return false; }
};

/// MemoryHandle::grant's argument check: `access` must be a non-empty subset of `registered`.
inline Status checkGrantAccess(std::string_view transport, uint32_t access, uint32_t registered) {
  if ((access & ~registered) == 0 && access != kAccessLocal) return Status();
  return Status(StatusCode::kInvalidArgument,
                std::string(transport) + ": a grant of access " + std::to_string(access) +
                    " on a registration with access " + std::to_string(registered));
}

/// A registration of local memory. Destroying it deregisters the memory.
class MemoryHandle {
 public:
  virtual ~MemoryHandle() = default;
  virtual void* address() const = 0;
  virtual size_t length() const = 0;
  /// Opaque bytes a peer needs to access this memory remotely (UCX packed rkey; verbs rkey).
  /// Empty for local-only registrations.
  virtual std::vector<uint8_t> packedKey() const = 0;
  /// Stops peers' access to this memory before the core deregisters it. Transports whose
  /// hardware enforces registrations (verbs) revoke by deregistering and need nothing here; a
  /// transport that checks accesses itself (UCX checked RMA) refuses every later access at once.
  /// Thread-safe, called without the core's lock.
  virtual void revokeRemoteAccess() {}
  /// Remote accesses that passed the target's check and still copy into or out of this memory;
  /// the core deregisters only once this is 0. Thread-safe.
  virtual uint32_t remoteAccessesInFlight() const { return 0; }
  /// A new key to this memory granting `access` (AccessBits, within the registration's), to
  /// the connection `only` (its endpoint must exist) or to every peer (nullopt). kInvalidArgument
  /// if `access` exceeds the registration's. Thread-safe, called without the core's lock.
  virtual Result<std::unique_ptr<RemoteGrant>> grant(uint32_t access,
                                                     std::optional<ConnectionScope> only) = 0;
};

/// A peer's key, unpacked for one endpoint. Must be destroyed before its endpoint.
class RemoteKey {
 public:
  virtual ~RemoteKey() = default;
};

/// One element of a one-sided batch. Addresses are absolute virtual addresses; the core has
/// already checked both ranges against their regions.
struct RmaOp {
  MemoryHandle* local = nullptr;
  uint64_t local_addr = 0;
  RemoteKey* remote = nullptr;
  uint64_t remote_addr = 0;
  size_t length = 0;  ///< may be 0 (the transport completes it without touching memory)
};

/// A posted receive buffer the transport writes a held message into itself (zero copy).
struct ReceiveTarget {
  MemoryHandle* local = nullptr;  ///< the buffer's registration
  uint8_t* buffer = nullptr;
  size_t capacity = 0;  ///< at least the message's length
  /// Completed exactly once: Ok once the whole message is in the buffer, an error if it never
  /// will be. Either way the transport no longer writes there afterwards.
  Completion* landed = nullptr;
};

/// What an endpoint reports without being asked. Called from inside progress().
class EndpointEvents {
 public:
  /// A two-sided message, delivered in the order the peer sent them. `data` is valid only
  /// during the call.
  virtual void onMessage(const uint8_t* data, size_t length) = 0;
  /// The next message in order is `length` bytes whose data has not been fetched yet (UCX
  /// rendezvous). The transport holds it as `held` without copying it anywhere until the core
  /// asks for it with Endpoint::fetchHeld (straight into a posted receive buffer, at once or once
  /// one is posted) or the endpoint closes. It counts as delivered in order like onMessage.
  /// false: the transport receives it into memory of its own and calls onMessage instead.
  virtual bool onMessageHeld(uint64_t /*held*/, size_t /*length*/) { return false; }
  /// A notification sent by the peer with postWrite(..., notify). Delivered only after the data
  /// of that write batch is visible in our memory.
  virtual void onNotify(uint32_t value) = 0;
  /// The endpoint broke (peer died, QP error). Outstanding operations still complete (with
  /// errors) through their own Completion, before or after this call.
  virtual void onError(Status why) = 0;

 protected:
  ~EndpointEvents() = default;
};

enum class EndpointState { kConnecting, kReady, kBroken };

struct EndpointSetup {
  Role role = Role::kActive;
  /// The peer's Transport::localAddress() bytes, exchanged by the core's TCP handshake.
  std::vector<uint8_t> peer_address;
  /// Identical in both processes for this connection (random, chosen by the active side).
  /// A transport with its own connection protocol (rdma_cm) uses it to match the two sides.
  uint64_t token = 0;
  /// Largest two-sided message either side will send (negotiated by the core).
  size_t max_message_size = 0;
  /// Events of this endpoint; outlives the endpoint.
  EndpointEvents* events = nullptr;
};

/// A connection to one peer. Destroying an endpoint is like close(kCancelled).
class Endpoint {
 public:
  virtual ~Endpoint() = default;

  /// kConnecting until the transport's own connection protocol finishes (driven by progress()).
  virtual EndpointState state() const = 0;
  /// Why the endpoint is kBroken (Ok otherwise).
  virtual Status error() const = 0;

  virtual Result<std::unique_ptr<RemoteKey>> importKey(std::span<const uint8_t> packed_key) = 0;

  /// Writes every op; if `notify` is set, the peer's onNotify(value) fires once all data of this
  /// batch is visible there. `done` fires once for the whole batch.
  virtual Status postWrite(std::span<const RmaOp> ops, std::optional<uint32_t> notify,
                           Completion* done) = 0;
  virtual Status postRead(std::span<const RmaOp> ops, Completion* done) = 0;
  /// Sends `length` bytes from registered memory; length <= max_message_size.
  virtual Status postSend(MemoryHandle* local, uint64_t local_addr, size_t length,
                          Completion* done) = 0;

  /// Fetches a message announced by EndpointEvents::onMessageHeld into `target` (its capacity
  /// is at least the message's length). Ok: `target.landed` completes later, or inside this call
  /// if the data is already there. An error: nothing is written and `landed` is never called
  /// (the message is lost). Only transports that hold messages implement this.
  virtual Status fetchHeld(uint64_t /*held*/, const ReceiveTarget& /*target*/) {
    return Status(StatusCode::kInternal, "this transport holds no messages");
  }

  /// Binds `grant` (made for this connection, needsBind()) to this endpoint; `done` completes
  /// (completion contract above) once peers can use its key. Only transports whose grants need
  /// it implement this.
  virtual Status bindGrant(RemoteGrant* /*grant*/, Completion* /*done*/) {
    return Status(StatusCode::kInternal, "this transport's grants need no binding");
  }

  /// Fails every outstanding operation with `why` (through its Completion, inside this call, or
  /// from a later progress() for those the transport cannot release yet), then releases the
  /// connection. Idempotent. After close() state() is kBroken.
  virtual void close(Status why) = 0;
};

struct Capabilities {
  bool rma = true;              ///< one-sided read/write
  bool send_recv = true;        ///< two-sided messages
  bool notify = true;           ///< write with notification
  bool allocate = false;        ///< allocateMemory() gives memory faster than registering
  size_t max_message_size = 0;  ///< largest two-sided message this transport can carry
  /// The target enforces a RemoteGrant's access and connection scope on every access (verbs:
  /// the NIC; UCX checked RMA: our handler); false: only the control plane restricts who gets a
  /// key (UCX native RMA, e.g. over shared memory: grants are the registration's own key).
  bool enforces_grants = true;
  /// Once arm() returned true, eventFd() becomes readable for every completion and event the
  /// transport will have: the core then sleeps until its next deadline. False: it also wakes
  /// every millisecond while operations are outstanding (completions the fd may miss).
  bool event_fd_covers_completions = false;
};

/// Bytes one device carried for a transport (one rail of a multi-rail transport).
struct DeviceBytes {
  std::string device;
  uint64_t bytes = 0;
};

/// Options the core passes through. Keys a transport does not know are an error.
struct TransportConfig {
  /// "" = choose automatically; "rxe0"; a list "rxe0,rxe1" or "all" (transports with rails)
  std::string device;
  int port = 0;           ///< device port, 0 = choose
  int gid_index = -1;     ///< -1 = choose
  std::string bind_host;  ///< the host the core listens on (a hint for the transport)
  std::map<std::string, std::string> params;  ///< transport-specific ("ucx.tls" = "tcp", ...)
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual std::string_view name() const = 0;
  virtual Capabilities capabilities() const = 0;
  /// A human description of what was chosen ("ucx 1.13.1 tls=tcp,self", "verbs rxe0 port 1 gid 1").
  virtual std::string description() const = 0;

  /// Registers [address, address+length). `access` is AccessBits.
  virtual Result<std::unique_ptr<MemoryHandle>> registerMemory(void* address, size_t length,
                                                               uint32_t access) = 0;
  /// Allocates and registers memory owned by the handle.
  virtual Result<std::unique_ptr<MemoryHandle>> allocateMemory(size_t length, uint32_t access) = 0;

  /// Bytes a peer needs to reach this process (UCX worker address; verbs rdma_cm address).
  virtual std::vector<uint8_t> localAddress() const = 0;

  /// Starts a connection. Returns at once; the endpoint is kConnecting until progress() finishes
  /// it.
  virtual Result<std::unique_ptr<Endpoint>> createEndpoint(const EndpointSetup& setup) = 0;

  /// Makes progress on everything; returns how many events it handled (0 = idle).
  virtual int progress() = 0;

  /// A file descriptor that becomes readable when progress() has something to do, or -1 if the
  /// transport cannot sleep (the core then polls). A caller that sleeps on it calls arm() first;
  /// the first progress() after arm() then handles what made it readable. Without arm(),
  /// progress() may look at its event sources only now and then (verbs: every 50 us of calls),
  /// so that a busy loop polling completions makes no system calls.
  virtual int eventFd() const = 0;
  /// Prepares eventFd() for sleeping. Returns false if there is work right now (progress again
  /// before sleeping).
  virtual bool arm() = 0;

  /// Bytes each device carried: writes, reads and sends this side posted, counted as they
  /// complete. Empty if the transport does not count per device (the core then reports its one
  /// rail's totals). Thread-safe, called without the core's lock.
  virtual std::vector<DeviceBytes> deviceBytes() const { return {}; }
};

/// Creates a transport, or explains why it cannot exist on this machine (kUnavailable with the
/// cause: "no RDMA device found (ibv_get_device_list: ...)").
using TransportFactory = Result<std::unique_ptr<Transport>> (*)(const TransportConfig& config);

}  // namespace zcx::transport

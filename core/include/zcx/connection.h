// A connection to one peer: one-sided read/write channels and two-sided send/recv.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "zcx/memory.h"
#include "zcx/request.h"
#include "zcx/status.h"

namespace zcx {

namespace detail {
class ConnectionImpl;
struct RemoteKeyRef;
}  // namespace detail

/// A peer's region, imported on one connection (usable only on that connection).
class ZCX_EXPORT RemoteRegion {
 public:
  RemoteRegion() = default;
  const RegionDescriptor& descriptor() const { return descriptor_; }
  uint64_t size() const { return descriptor_.length; }

 private:
  friend class detail::ConnectionImpl;
  RegionDescriptor descriptor_;
  std::shared_ptr<detail::RemoteKeyRef> key_;
};

/// One element of a batch: `length` bytes between local[local_offset] and remote[remote_offset].
struct RmaOp {
  const MemoryRegion* local = nullptr;
  size_t local_offset = 0;
  const RemoteRegion* remote = nullptr;
  size_t remote_offset = 0;
  size_t length = 0;
};

class ZCX_EXPORT Connection {
 public:
  Connection() = default;
  explicit Connection(std::shared_ptr<detail::ConnectionImpl> impl) : impl_(std::move(impl)) {}

  /// The peer's region exposed under `name` (Engine::expose on the peer). Asks the peer if the
  /// handshake did not carry it. kNotFound if the peer has no such region.
  Result<RemoteRegion> remoteRegion(
      std::string_view name, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
  /// Imports a descriptor received some other way (validated: transport, key).
  Result<RemoteRegion> importRegion(const RegionDescriptor& descriptor);

  /// One-sided write: completes once the data is visible in the peer's memory.
  /// Ranges and access rights are checked before anything is posted.
  Request write(const MemoryRegion& local, size_t local_offset, const RemoteRegion& remote,
                size_t remote_offset, size_t length);
  /// One-sided read into local memory.
  Request read(const MemoryRegion& local, size_t local_offset, const RemoteRegion& remote,
               size_t remote_offset, size_t length);
  /// Many writes (or reads), one completion.
  Request writeBatch(std::span<const RmaOp> ops);
  Request readBatch(std::span<const RmaOp> ops);
  /// Writes the batch, then delivers `value` to the peer (Connection::pollNotification) once all
  /// of the batch's data is visible there.
  Request writeWithNotify(std::span<const RmaOp> ops, uint32_t value);

  /// Unsignaled one-sided write, for the raw message rate (like verbs selective signalling):
  /// checked like write() (a bad argument comes back here, nothing posted) but it returns no
  /// Request. The engine gathers unsignaled writes into batches (64 writes or 256 KiB), each
  /// posted as one transport write with one completion. Both buffers stay in use until a flush()
  /// after it completes. kResourceExhausted: 256 batches are in flight; wait for a flush() first.
  Status writeUnsignaled(const MemoryRegion& local, size_t local_offset, const RemoteRegion& remote,
                         size_t remote_offset, size_t length);
  /// Posts the gathered unsignaled writes and completes once every unsignaled write before it is
  /// visible in the peer's memory; with the first error any of them met (then the connection is
  /// closing, as for a failed write), never later than their operation_timeout.
  Request flush();

  /// Two-sided: sends [offset, offset+length) of `local`; at most Engine max message size.
  Request send(const MemoryRegion& local, size_t offset, size_t length);
  /// Posts a receive buffer. Messages fill posted buffers in the order they were sent, and the
  /// receives complete in that order; a message larger than the buffer fails that receive with
  /// kOutOfRange and waits for the next buffer. Post receives ahead of the messages: a large
  /// message (UCX rendezvous) then lands straight in its buffer without a copy. After the peer
  /// closed the connection, receives still take the messages that arrived before its close (like
  /// data before a TCP FIN); the receive after the last one fails with the close (kCancelled).
  Request recv(const MemoryRegion& local, size_t offset, size_t capacity);

  /// The oldest notification not yet taken, if any.
  std::optional<uint32_t> pollNotification();
  Result<uint32_t> waitNotification(std::chrono::milliseconds timeout);

  /// Closes the connection: outstanding operations complete with kCancelled; the peer sees it
  /// as closed. Idempotent.
  void close();
  /// Ok while usable; otherwise why not (peer died, closed, timed out).
  Status status() const;
  std::string peerName() const;
  /// Largest message send() accepts on this connection (both sides' limits).
  size_t maxMessageSize() const;

  bool valid() const { return impl_ != nullptr; }

 private:
  std::shared_ptr<detail::ConnectionImpl> impl_;
};

}  // namespace zcx

// Incremental control frames over non-blocking sockets: a reader that accumulates one frame at a
// time and an output queue flushed when the socket has room. Nothing here ever waits.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "auth.h"
#include "control_protocol.h"
#include "zcx/status.h"

namespace zcx::detail {

/// Reads exactly one frame's bytes at a time (never past a frame's end), so the socket can be
/// handed to another owner between frames. The header is checked against its type's limit
/// before the body is allocated.
class FrameReader {
 public:
  /// Reads what the socket has: a whole frame, nullopt if the frame is not complete yet, or an
  /// error (EOF, socket error, a header that breaks the protocol).
  Result<std::optional<Frame>> read(int fd);
  /// True while part of a frame has arrived.
  bool partial() const { return have_ > 0; }
  /// The type of the frame being read once its header has arrived (and passed its checks).
  std::optional<FrameType> pendingType() const {
    if (have_ < kFrameHeaderSize) return std::nullopt;
    return static_cast<FrameType>(type_);
  }
  /// Bytes reserved for the frame being read (tests: no peer-chosen allocation).
  size_t reserved() const { return body_.capacity(); }
  /// From the next frame on, every frame must carry a valid MAC (an authenticated channel); a
  /// frame that does not verify is an error (kPermissionDenied). Between frames only.
  void authenticate(FrameMac mac) { mac_.emplace(std::move(mac)); }
  bool authenticated() const { return mac_.has_value(); }

 private:
  uint8_t header_[kFrameHeaderSize] = {};
  size_t have_ = 0;  ///< bytes of the current frame received, header included
  uint8_t type_ = 0;
  std::vector<uint8_t> body_;
  std::optional<FrameMac> mac_;
};

/// Frames waiting to be sent. Bounded: a peer that stops reading cannot make it grow forever.
class FrameWriter {
 public:
  static constexpr size_t kMaxQueued = 1u << 20;

  /// Appends a frame; kResourceExhausted if the peer has let too much pile up.
  Status queue(FrameType type, const std::vector<uint8_t>& body);
  /// Sends as much as the socket takes; an error if the connection is gone.
  Status flush(int fd);
  bool empty() const { return sent_ == out_.size(); }
  /// From the next queued frame on, every frame is sealed with a MAC (an authenticated channel).
  void authenticate(FrameMac mac) { mac_.emplace(std::move(mac)); }
  bool authenticated() const { return mac_.has_value(); }

 private:
  std::vector<uint8_t> out_;
  size_t sent_ = 0;
  std::optional<FrameMac> mac_;
};

}  // namespace zcx::detail

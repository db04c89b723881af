#include "frame_buffer.h"

#include <errno.h>
#include <sys/socket.h>

#include <cstring>

#include "wire.h"

namespace zcx::detail {
namespace {
Status lost(const char* what, int err) {
  return Status(StatusCode::kConnectionBroken,
                std::string("peer connection lost while ") + what + ": " + std::strerror(err));
}
}  // namespace

Result<std::optional<Frame>> FrameReader::read(int fd) {
  for (;;) {
    uint8_t* into;
    size_t want;
    if (have_ < kFrameHeaderSize) {
      into = header_ + have_;
      want = kFrameHeaderSize - have_;
    } else {
      into = body_.data() + (have_ - kFrameHeaderSize);
      want = body_.size() - (have_ - kFrameHeaderSize);
    }
    if (want > 0) {
      ssize_t n = ::recv(fd, into, want, MSG_DONTWAIT);
      if (n == 0) {
        return Status(StatusCode::kConnectionBroken,
                      have_ ? "peer closed the connection in the middle of a frame"
                            : "peer closed the connection");
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return std::optional<Frame>();
        return lost("receiving", errno);
      }
      have_ += static_cast<size_t>(n);
      if (static_cast<size_t>(n) < want) return std::optional<Frame>();  // the socket is empty
    }
    if (have_ == kFrameHeaderSize && body_.empty()) {
      WireReader r(std::span<const uint8_t>(header_, kFrameHeaderSize));
      uint32_t len = r.u32();
      type_ = r.u8();
      ZCX_RETURN_IF_ERROR(checkFrameHeader(len, type_, mac_ ? kFrameMacSize : 0));
      body_.resize(len - 1);  // within the type's limit
    }
    if (have_ - kFrameHeaderSize == body_.size()) {
      Frame f;
      f.type = static_cast<FrameType>(type_);
      f.body = std::move(body_);
      body_ = {};
      have_ = 0;
      if (mac_) ZCX_RETURN_IF_ERROR(mac_->open(f.type, f.body));
      return std::optional<Frame>(std::move(f));
    }
  }
}

Status FrameWriter::queue(FrameType type, const std::vector<uint8_t>& body) {
  const size_t trailer = mac_ ? kFrameMacSize : 0;
  if (out_.size() - sent_ + kFrameHeaderSize + body.size() + trailer > kMaxQueued) {
    return Status(StatusCode::kResourceExhausted,
                  "the peer does not read its control channel (more than " +
                      std::to_string(kMaxQueued) + " bytes queued)");
  }
  if (sent_ == out_.size()) {
    out_.clear();
    sent_ = 0;
  }
  if (!mac_) {
    auto bytes = frameBytes(type, body);
    out_.insert(out_.end(), bytes.begin(), bytes.end());
    return Status::Ok();
  }
  std::vector<uint8_t> sealed = body;
  ZCX_RETURN_IF_ERROR(mac_->seal(type, sealed));
  auto bytes = frameBytes(type, sealed);
  out_.insert(out_.end(), bytes.begin(), bytes.end());
  return Status::Ok();
}

Status FrameWriter::flush(int fd) {
  while (sent_ < out_.size()) {
    ssize_t n = ::send(fd, out_.data() + sent_, out_.size() - sent_, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Status::Ok();
    return lost("sending", n < 0 ? errno : EPIPE);
  }
  out_.clear();
  sent_ = 0;
  return Status::Ok();
}

}  // namespace zcx::detail

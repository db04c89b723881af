// A minimal HTTP/1.1 client for etcd's JSON gateway: one POST per TCP connection, the response
// read whole (Content-Length, chunked, or until close) or, for streams (etcd watches), one
// newline-terminated message at a time. The server is untrusted: the header block, the body and
// each message are bounded, every wait has a deadline, and a cancel fd (readable = give up)
// ends any wait at once.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

struct HttpLimits {
  size_t max_header = 16 * 1024;      ///< status line + headers
  size_t max_body = 4 * 1024 * 1024;  ///< a whole response body, or one streamed message
};

class HttpExchange {
 public:
  /// Connects to `to`, sends `POST path` with a JSON `body`, and reads the status line and
  /// headers, all before `deadline`. `cancel_fd` (-1: none) becoming readable aborts with
  /// kCancelled.
  static Result<HttpExchange> post(const HostPort& to, std::string_view path, std::string_view body,
                                   Clock::time_point deadline, int cancel_fd = -1,
                                   HttpLimits limits = {});
  HttpExchange(HttpExchange&&) = default;
  HttpExchange& operator=(HttpExchange&&) = default;

  int statusCode() const { return status_; }
  /// The whole body (bounded by max_body).
  Result<std::string> readBody(Clock::time_point deadline);
  /// The next newline-terminated message of a streamed body (without the newline); nullopt
  /// when the body ended cleanly.
  Result<std::optional<std::string>> readMessage(Clock::time_point deadline);
  int fd() const { return fd_.get(); }

 private:
  HttpExchange(Fd fd, int cancel_fd, HttpLimits limits, std::string where)
      : fd_(std::move(fd)), cancel_fd_(cancel_fd), limits_(limits), where_(std::move(where)) {}
  /// Reads more bytes into in_; kConnectionBroken at EOF when `eof_ok` is false.
  Status fill(Clock::time_point deadline, bool* eof);
  Status readHead(Clock::time_point deadline);
  /// Moves decoded body bytes from in_ to body_ as far as in_ allows.
  Status decode();
  Status fail(StatusCode code, std::string_view what) const;

  enum class Framing { kLength, kChunked, kUntilClose };
  enum class ChunkState { kSize, kData, kDataEnd, kTrailers, kDone };

  Fd fd_;
  int cancel_fd_ = -1;
  HttpLimits limits_;
  std::string where_;
  int status_ = 0;
  std::string in_;    ///< raw bytes not decoded yet
  std::string body_;  ///< decoded body bytes not handed out yet
  Framing framing_ = Framing::kUntilClose;
  ChunkState chunk_ = ChunkState::kSize;
  uint64_t remaining_ = 0;  ///< of the body (kLength) or of the current chunk
  bool done_ = false;       ///< the whole body is in body_
};

}  // namespace zcx::detail

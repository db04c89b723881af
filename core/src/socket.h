// Blocking-with-deadline TCP helpers for the out-of-band channel (handshake, lookups, liveness).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "zcx/status.h"

namespace zcx::detail {

using Clock = std::chrono::steady_clock;

/// Owns a file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset();

 private:
  int fd_ = -1;
};

struct HostPort {
  std::string host;
  uint16_t port = 0;
};
/// Parses "host:port" (or "[v6]:port"); kInvalidArgument says what is wrong.
Result<HostPort> parseHostPort(std::string_view text);

/// Binds and listens (non-blocking); returns the socket and the port actually bound.
Result<std::pair<Fd, uint16_t>> listenTcp(const HostPort& where);
/// Whether a bound socket's local address is a loopback one (127.0.0.0/8, ::1, ::ffff:127.x).
bool isLoopbackSocket(int fd);
/// Connects within the deadline: refused, unknown host and timeout are distinct errors.
Result<Fd> connectTcp(const HostPort& to, Clock::time_point deadline);

/// TCP keepalive and TCP_USER_TIMEOUT so that a peer that goes silent (host down, cable pulled)
/// is detected within `peer_timeout` even when nothing is being sent.
Status setPeerTimeout(int fd, std::chrono::milliseconds peer_timeout);

Status writeAll(int fd, std::span<const uint8_t> data, Clock::time_point deadline);
Status readAll(int fd, std::span<uint8_t> data, Clock::time_point deadline);

}  // namespace zcx::detail

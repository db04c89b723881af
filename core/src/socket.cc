#include "socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

namespace zcx::detail {

void Fd::reset() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

namespace {
std::string errnoText(int err) {
  return std::string(std::strerror(err)) + " (errno " + std::to_string(err) + ")";
}

int msLeft(Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

// Waits for `events` on fd until the deadline.
Status waitFd(int fd, short events, Clock::time_point deadline, const char* what) {
  for (;;) {
    pollfd p{fd, events, 0};
    int n = ::poll(&p, 1, msLeft(deadline));
    if (n > 0) return Status::Ok();
    if (n == 0) {
      return Status(
          StatusCode::kTimedOut,
          std::string(what) +
              " timed out; the peer is slow or stuck (raise connect_timeout if expected)");
    }
    if (errno != EINTR)
      return Status(StatusCode::kInternal, std::string("poll: ") + errnoText(errno));
  }
}

Result<addrinfo*> resolve(const HostPort& hp, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  std::string port = std::to_string(hp.port);
  int rc = ::getaddrinfo(hp.host.empty() ? nullptr : hp.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return Status(StatusCode::kNotFound, "cannot resolve host '" + hp.host +
                                             "': " + gai_strerror(rc) +
                                             "; check the host name or use an IP address");
  }
  return res;
}
}  // namespace

Result<HostPort> parseHostPort(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return Status(
        StatusCode::kInvalidArgument,
        "address '" + std::string(text) + "' has no port; write host:port (e.g. 127.0.0.1:18515)");
  }
  HostPort hp;
  hp.host = std::string(text.substr(0, colon));
  if (hp.host.size() >= 2 && hp.host.front() == '[' && hp.host.back() == ']')
    hp.host = hp.host.substr(1, hp.host.size() - 2);
  std::string port(text.substr(colon + 1));
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 0 || p > 65535) {
    return Status(StatusCode::kInvalidArgument,
                  "bad port '" + port + "' in '" + std::string(text) + "' (0-65535)");
  }
  hp.port = static_cast<uint16_t>(p);
  return hp;
}

bool isLoopbackSocket(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return false;
  if (ss.ss_family == AF_INET) {
    return (ntohl(reinterpret_cast<sockaddr_in*>(&ss)->sin_addr.s_addr) >> 24) == 127;
  }
  if (ss.ss_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&a)) return true;
    return IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127;
  }
  return false;
}

Result<std::pair<Fd, uint16_t>> listenTcp(const HostPort& where) {
  auto res = resolve(where, true);
  if (!res.ok()) return res.status();
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(*res, freeaddrinfo);
  int last_err = 0;
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.valid()) {
      last_err = errno;
      continue;
    }
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), SOMAXCONN) != 0) {
      last_err = errno;
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    uint16_t port = ss.ss_family == AF_INET6
                        ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                        : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    return std::make_pair(std::move(fd), port);
  }
  return Status(last_err == EADDRINUSE ? StatusCode::kUnavailable : StatusCode::kInvalidArgument,
                "cannot listen on " + where.host + ":" + std::to_string(where.port) + ": " +
                    errnoText(last_err) +
                    (last_err == EADDRINUSE ? "; pick another port or port 0" : ""));
}

Result<Fd> connectTcp(const HostPort& to, Clock::time_point deadline) {
  auto res = resolve(to, false);
  if (!res.ok()) return res.status();
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(*res, freeaddrinfo);
  Status last(StatusCode::kConnectionRefused, "no address for " + to.host);
  std::string where = to.host + ":" + std::to_string(to.port);
  for (addrinfo* ai = list.get(); ai; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol));
    if (!fd.valid()) continue;
    int rc = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno != EINPROGRESS) {
      last = Status(
          errno == ECONNREFUSED ? StatusCode::kConnectionRefused : StatusCode::kConnectionBroken,
          "connect to " + where + ": " + errnoText(errno) + "; is a zcx engine listening there?");
      continue;
    }
    if (rc != 0) {
      Status s = waitFd(fd.get(), POLLOUT, deadline, ("connect to " + where).c_str());
      if (!s.ok()) return s;
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = Status(
            err == ECONNREFUSED ? StatusCode::kConnectionRefused : StatusCode::kConnectionBroken,
            "connect to " + where + ": " + errnoText(err) + "; is a zcx engine listening there?");
        continue;
      }
    }
    int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
  }
  return last;
}

Status setPeerTimeout(int fd, std::chrono::milliseconds peer_timeout) {
  // Keepalive counts in whole seconds: first probe after about a third of the budget, then
  // up to three probes spaced to end within it. TCP_USER_TIMEOUT bounds both unacknowledged
  // data and the probes (it takes precedence over the count), in milliseconds.
  int budget = static_cast<int>(std::max<long long>(1, peer_timeout.count() / 1000));
  int idle = std::max(1, budget / 3);
  int interval = std::max(1, (budget - idle) / 3);
  int count = std::max(1, std::min(3, (budget - idle) / interval));
  unsigned int user_timeout = static_cast<unsigned int>(peer_timeout.count());
  int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval)) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count)) != 0 ||
      ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) != 0) {
    return Status(StatusCode::kInternal,
                  "setting TCP keepalive on the control socket: " + errnoText(errno));
  }
  return Status::Ok();
}

Status writeAll(int fd, std::span<const uint8_t> data, Clock::time_point deadline) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      ZCX_RETURN_IF_ERROR(waitFd(fd, POLLOUT, deadline, "sending to peer"));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return Status(StatusCode::kConnectionBroken,
                  std::string("peer connection lost while sending: ") + errnoText(errno));
  }
  return Status::Ok();
}

Status readAll(int fd, std::span<uint8_t> data, Clock::time_point deadline) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::recv(fd, data.data() + done, data.size() - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return Status(StatusCode::kConnectionBroken, "peer closed the connection");
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      ZCX_RETURN_IF_ERROR(waitFd(fd, POLLIN, deadline, "waiting for the peer"));
      continue;
    }
    if (errno == EINTR) continue;
    return Status(StatusCode::kConnectionBroken,
                  std::string("peer connection lost while receiving: ") + errnoText(errno));
  }
  return Status::Ok();
}

}  // namespace zcx::detail

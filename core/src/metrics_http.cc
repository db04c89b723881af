#include "metrics_http.h"

#include <errno.h>
#include <glog/logging.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <vector>

namespace zcx::detail {
namespace {

std::string response(int code, std::string_view reason, std::string_view content_type,
                     std::string_view body, std::string_view extra_headers = {}) {
  std::string r = "HTTP/1.0 " + std::to_string(code) + " ";
  r += reason;
  r += "\r\nContent-Type: ";
  r += content_type;
  r += "\r\nContent-Length: " + std::to_string(body.size());
  r += "\r\nConnection: close\r\n";
  r += extra_headers;
  r += "\r\n";
  r += body;
  return r;
}

std::string plain(int code, std::string_view reason, std::string_view extra_headers = {}) {
  return response(code, reason, "text/plain; charset=utf-8", std::string(reason) + "\n",
                  extra_headers);
}

// Where the header block ends (after its blank line), or npos. Searching from `from` (where the
// previous search stopped, less the 3 bytes a terminator can straddle) keeps a client that
// trickles its request a byte at a time from costing quadratic time.
size_t headerEnd(std::string_view req, size_t from = 0) {
  size_t crlf = req.find("\r\n\r\n", from);
  size_t lf = req.find("\n\n", from);
  if (crlf != std::string_view::npos && (lf == std::string_view::npos || crlf + 2 < lf))
    return crlf + 4;
  return lf == std::string_view::npos ? lf : lf + 2;
}

bool isToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

// Client life: read the request, write the response, then drain what the client still sends
// until it closes (closing with unread input would reset the connection and lose the response).
enum class Phase { kReading, kWriting, kDraining };

struct Client {
  Fd fd;
  std::string in;
  std::string out;
  size_t sent = 0;
  size_t drained = 0;
  Phase phase = Phase::kReading;
  Clock::time_point deadline;
};

constexpr size_t kMaxDrain = 64 * 1024;
constexpr int kMaxAcceptsPerRound = 16;

}  // namespace

std::string metricsHttpResponse(std::string_view request, size_t max_request,
                                const MetricsServer::Render& render) {
  size_t end = headerEnd(request);
  if (end == std::string_view::npos || end > max_request)
    return plain(431, "Request Header Fields Too Large");
  std::string_view line = request.substr(0, request.find('\n'));
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t sp1 = line.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
    return plain(400, "Bad Request");
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (!isToken(method) || target.empty() || !version.starts_with("HTTP/"))
    return plain(400, "Bad Request");
  if (method != "GET") return plain(405, "Method Not Allowed", "Allow: GET\r\n");
  target = target.substr(0, target.find('?'));
  if (target != "/metrics") return plain(404, "Not Found");
  return response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", render());
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const HostPort& where, Render render,
                                                            Limits limits) {
  auto l = listenTcp(where);
  if (!l.ok()) return l.status().withContext("metrics_address");
  std::string address = where.host + ":" + std::to_string(l->second);
  std::unique_ptr<MetricsServer> s(
      new MetricsServer(std::move(l->first), std::move(address), std::move(render), limits));
  if (!s->wake_.valid())
    return Status(StatusCode::kResourceExhausted, "eventfd failed; too many open files?");
  s->thread_ = std::thread([raw = s.get()] { raw->run(); });
  return s;
}

MetricsServer::MetricsServer(Fd listener, std::string address, Render render, Limits limits)
    : listener_(std::move(listener)),
      wake_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
      address_(std::move(address)),
      render_(std::move(render)),
      limits_(limits) {}

MetricsServer::~MetricsServer() {
  stopping_.store(true);
  uint64_t one = 1;
  if (wake_.valid()) (void)!::write(wake_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
}

bool MetricsServer::loopback() const { return isLoopbackSocket(listener_.get()); }

void MetricsServer::run() {
  std::list<Client> clients;
  std::vector<pollfd> fds;
  Clock::time_point listener_paused_until{};  // out of fds: stop accepting for a moment
  char buf[4096];
  while (!stopping_.load()) {
    auto now = Clock::now();
    fds.clear();
    fds.push_back({wake_.get(), POLLIN, 0});
    const bool paused = now < listener_paused_until;
    fds.push_back({listener_.get(), static_cast<short>(paused ? 0 : POLLIN), 0});
    auto next = paused ? listener_paused_until : now + std::chrono::seconds(1);
    for (const Client& c : clients) {
      fds.push_back(
          {c.fd.get(), static_cast<short>(c.phase == Phase::kWriting ? POLLOUT : POLLIN), 0});
      next = std::min(next, c.deadline);
    }
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1;
    int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, wait)));
    if (n < 0 && errno != EINTR) {
      PLOG(WARNING) << "zcx: metrics server poll failed; stopping it";
      return;
    }
    if (stopping_.load()) break;
    now = Clock::now();
    // Clients first (fds[2..] match `clients` in order), then new ones.
    size_t i = 2;
    for (auto it = clients.begin(); it != clients.end(); ++i) {
      Client& c = *it;
      const short ev = n > 0 ? fds[i].revents : 0;
      bool drop = now >= c.deadline;
      if (!drop && c.phase == Phase::kReading && (ev & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t got = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
        if (got > 0) {
          const size_t from = c.in.size() >= 3 ? c.in.size() - 3 : 0;
          c.in.append(buf, static_cast<size_t>(got));
          if (headerEnd(c.in, from) != std::string::npos || c.in.size() > limits_.max_request) {
            c.out = metricsHttpResponse(c.in, limits_.max_request, render_);
            c.in.clear();
            c.in.shrink_to_fit();
            c.phase = Phase::kWriting;
            c.deadline = now + limits_.client_timeout;
          }
        } else if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
          drop = true;  // gone before finishing its request
        }
      }
      if (!drop && c.phase == Phase::kWriting) {
        ssize_t put = ::send(c.fd.get(), c.out.data() + c.sent, c.out.size() - c.sent,
                             MSG_DONTWAIT | MSG_NOSIGNAL);
        if (put > 0) {
          c.sent += static_cast<size_t>(put);
          if (c.sent == c.out.size()) {
            ::shutdown(c.fd.get(), SHUT_WR);
            c.phase = Phase::kDraining;
            c.out.clear();
            c.out.shrink_to_fit();
          }
        } else if (put < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          drop = true;
        }
      } else if (!drop && c.phase == Phase::kDraining && (ev & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t got = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
        if (got > 0) c.drained += static_cast<size_t>(got);
        if (got == 0 || c.drained > kMaxDrain ||
            (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
          drop = true;
      }
      it = drop ? clients.erase(it) : std::next(it);
    }
    if (n > 0 && (fds[1].revents & POLLIN)) {
      for (int a = 0; a < kMaxAcceptsPerRound; ++a) {
        Fd fd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
        if (!fd.valid()) {
          // Out of fds or memory: the connection stays in the backlog and the listener stays
          // readable; pause instead of spinning on it.
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            listener_paused_until = now + std::chrono::milliseconds(100);
          break;
        }
        if (clients.size() >= limits_.max_clients) continue;  // closed: scrapers retry
        Client c;
        c.fd = std::move(fd);
        c.deadline = now + limits_.client_timeout;
        clients.push_back(std::move(c));
      }
    }
  }
}

}  // namespace zcx::detail

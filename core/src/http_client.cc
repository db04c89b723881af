#include "http_client.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace zcx::detail {
namespace {

int msLeft(Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return r;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

bool parseUint(std::string_view s, int base, uint64_t* out) {
  if (s.empty() || s.size() > 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (base == 16 && c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (base == 16 && c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return false;
    v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

}  // namespace

Status HttpExchange::fail(StatusCode code, std::string_view what) const {
  return Status(code, "etcd member " + where_ + ": " + std::string(what));
}

Result<HttpExchange> HttpExchange::post(const HostPort& to, std::string_view path,
                                        std::string_view body, Clock::time_point deadline,
                                        int cancel_fd, HttpLimits limits) {
  std::string where = to.host + ":" + std::to_string(to.port);
  auto fd = connectTcp(to, deadline);
  if (!fd.ok()) {
    std::string why = fd.status().message();
    constexpr std::string_view kZcxHint = "; is a zcx engine listening there?";
    if (auto at = why.find(kZcxHint); at != std::string::npos) why.erase(at, kZcxHint.size());
    return Status(fd.status().code(), "etcd member " + where + ": cannot connect (" + why +
                                          "); is etcd running there?");
  }
  std::string host = to.host.find(':') != std::string::npos ? "[" + to.host + "]" : to.host;
  std::string req = "POST " + std::string(path) + " HTTP/1.1\r\nHost: " + host + ":" +
                    std::to_string(to.port) +
                    "\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
                    "Connection: close\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n";
  req += body;
  HttpExchange x(std::move(*fd), cancel_fd, limits, where);
  Status s =
      writeAll(x.fd_.get(), {reinterpret_cast<const uint8_t*>(req.data()), req.size()}, deadline);
  if (!s.ok()) return x.fail(s.code(), "sending the request: " + s.message());
  ZCX_RETURN_IF_ERROR(x.readHead(deadline));
  return x;
}

Status HttpExchange::fill(Clock::time_point deadline, bool* eof) {
  *eof = false;
  for (;;) {
    pollfd p[2] = {{fd_.get(), POLLIN, 0}, {cancel_fd_, POLLIN, 0}};
    int n = ::poll(p, cancel_fd_ >= 0 ? 2 : 1, msLeft(deadline));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(StatusCode::kInternal, std::string("poll: ") + std::strerror(errno));
    }
    if (cancel_fd_ >= 0 && (p[1].revents & POLLIN))
      return fail(StatusCode::kCancelled, "cancelled");
    if (n == 0) return fail(StatusCode::kTimedOut, "no answer before the deadline");
    char buf[16384];
    ssize_t r = ::recv(fd_.get(), buf, sizeof(buf), MSG_DONTWAIT);
    if (r > 0) {
      in_.append(buf, static_cast<size_t>(r));
      return Status::Ok();
    }
    if (r == 0) {
      *eof = true;
      return Status::Ok();
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
    return fail(StatusCode::kConnectionBroken,
                std::string("connection lost: ") + std::strerror(errno));
  }
}

Status HttpExchange::readHead(Clock::time_point deadline) {
  size_t end;
  for (;;) {
    end = in_.find("\r\n\r\n");
    if (end != std::string::npos) break;
    if (in_.size() > limits_.max_header)
      return fail(StatusCode::kProtocolError, "response header block too large");
    bool eof;
    ZCX_RETURN_IF_ERROR(fill(deadline, &eof));
    if (eof) return fail(StatusCode::kConnectionBroken, "closed the connection before answering");
  }
  if (end > limits_.max_header)
    return fail(StatusCode::kProtocolError, "response header block too large");
  std::string_view head(in_.data(), end);
  size_t line_end = head.find("\r\n");
  std::string_view status_line = head.substr(0, line_end);
  // "HTTP/1.1 200 OK"
  if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ')
    return fail(StatusCode::kProtocolError, "not an HTTP response (is this etcd's client port?)");
  uint64_t code;
  if (!parseUint(status_line.substr(9, 3), 10, &code) || code < 100 || code > 599)
    return fail(StatusCode::kProtocolError, "bad HTTP status line");
  status_ = static_cast<int>(code);
  bool chunked = false, have_length = false;
  uint64_t length = 0;
  size_t pos = line_end == std::string_view::npos ? head.size() : line_end + 2;
  while (pos < head.size()) {
    size_t e = head.find("\r\n", pos);
    if (e == std::string_view::npos) e = head.size();
    std::string_view line = head.substr(pos, e - pos);
    pos = e + 2;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0)
      return fail(StatusCode::kProtocolError, "malformed response header");
    std::string name = lower(line.substr(0, colon));
    std::string_view value = trim(line.substr(colon + 1));
    if (name == "transfer-encoding") {
      if (lower(value) != "chunked")
        return fail(StatusCode::kProtocolError, "unsupported transfer encoding");
      chunked = true;
    } else if (name == "content-length") {
      uint64_t v;
      if (!parseUint(value, 10, &v) || (have_length && v != length))
        return fail(StatusCode::kProtocolError, "bad Content-Length");
      have_length = true;
      length = v;
    }
  }
  in_.erase(0, end + 4);
  if (chunked) {
    framing_ = Framing::kChunked;
  } else if (have_length) {
    if (length > limits_.max_body)
      return fail(StatusCode::kProtocolError, "response body larger than the limit");
    framing_ = Framing::kLength;
    remaining_ = length;
  } else {
    framing_ = Framing::kUntilClose;
  }
  return decode();
}

Status HttpExchange::decode() {
  switch (framing_) {
    case Framing::kUntilClose:
      body_ += in_;
      in_.clear();
      break;
    case Framing::kLength: {
      size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, in_.size()));
      body_.append(in_, 0, take);
      in_.erase(0, take);
      remaining_ -= take;
      if (remaining_ == 0) done_ = true;
      break;
    }
    case Framing::kChunked:
      for (;;) {
        if (chunk_ == ChunkState::kDone) {
          done_ = true;
          break;
        }
        if (chunk_ == ChunkState::kData) {
          size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, in_.size()));
          body_.append(in_, 0, take);
          in_.erase(0, take);
          remaining_ -= take;
          if (remaining_ > 0) break;
          chunk_ = ChunkState::kDataEnd;
          continue;
        }
        size_t nl = in_.find("\r\n");
        if (nl == std::string::npos) {
          if (in_.size() > 1024) return fail(StatusCode::kProtocolError, "malformed chunk framing");
          break;
        }
        std::string_view line(in_.data(), nl);
        if (chunk_ == ChunkState::kDataEnd) {
          if (!line.empty()) return fail(StatusCode::kProtocolError, "malformed chunk framing");
          chunk_ = ChunkState::kSize;
        } else if (chunk_ == ChunkState::kSize) {
          std::string_view size = line.substr(0, line.find(';'));
          uint64_t v;
          if (!parseUint(trim(size), 16, &v) || v > limits_.max_body)
            return fail(StatusCode::kProtocolError, "bad chunk size");
          remaining_ = v;
          chunk_ = v == 0 ? ChunkState::kTrailers : ChunkState::kData;
        } else {  // trailers, ended by an empty line
          if (line.empty()) chunk_ = ChunkState::kDone;
        }
        in_.erase(0, nl + 2);
      }
      break;
  }
  if (body_.size() > limits_.max_body)
    return fail(StatusCode::kProtocolError, "response body larger than the limit");
  return Status::Ok();
}

Result<std::string> HttpExchange::readBody(Clock::time_point deadline) {
  while (!done_) {
    bool eof;
    ZCX_RETURN_IF_ERROR(fill(deadline, &eof));
    if (eof) {
      if (framing_ != Framing::kUntilClose)
        return fail(StatusCode::kConnectionBroken, "closed the connection mid-response");
      done_ = true;
    }
    ZCX_RETURN_IF_ERROR(decode());
  }
  return std::move(body_);
}

Result<std::optional<std::string>> HttpExchange::readMessage(Clock::time_point deadline) {
  for (;;) {
    size_t nl = body_.find('\n');
    if (nl != std::string::npos) {
      std::string msg = body_.substr(0, nl);
      body_.erase(0, nl + 1);
      return std::optional<std::string>(std::move(msg));
    }
    if (done_) {
      if (!body_.empty()) return fail(StatusCode::kProtocolError, "stream ended mid-message");
      return std::optional<std::string>();
    }
    bool eof;
    ZCX_RETURN_IF_ERROR(fill(deadline, &eof));
    if (eof) {
      if (framing_ != Framing::kUntilClose)
        return fail(StatusCode::kConnectionBroken, "closed the stream");
      done_ = true;
    }
    ZCX_RETURN_IF_ERROR(decode());
  }
}

}  // namespace zcx::detail

#include "handshake.h"

#include <arpa/inet.h>
#include <glog/logging.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connection_impl.h"
#include "control_protocol.h"
#include "engine_impl.h"

namespace zcx::detail {
namespace {

constexpr int kFramesPerEvent = 4;  // then let other sockets have their turn
constexpr auto kLingerAfterReject = std::chrono::milliseconds(500);
constexpr size_t kMaxDiscard = 64 * 1024;

std::string peerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "unknown peer";
  char host[INET6_ADDRSTRLEN] = {};
  uint16_t port = 0;
  if (ss.ss_family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
  }
  // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict on "[" + std::string(...).
  std::string out;
  const bool v6 = ss.ss_family == AF_INET6;
  if (v6) out.push_back('[');
  out.append(host);
  if (v6) out.push_back(']');
  out.push_back(':');
  out.append(std::to_string(port));
  return out;
}

}  // namespace

PassiveHandshake::PassiveHandshake(EngineImpl& engine, Fd fd, Clock::time_point deadline)
    : engine_(engine), fd_(std::move(fd)), peer_(peerAddress(fd_.get())), deadline_(deadline) {
  if (!engine_.auth_secret.empty()) phase_ = Phase::kAuth;
}

PassiveHandshake::~PassiveHandshake() {
  // A connection that never got established is closed here, after the control loop has
  // unregistered its socket (the socket goes with the connection).
  if (conn_ && phase_ != Phase::kDone) {
    Status why = error_.ok() ? Status(StatusCode::kCancelled, "engine shut down") : error_;
    conn_->close(why.withContext("connection setup with " + conn_->peer_name), false);
  }
}

void PassiveHandshake::onEvents(uint32_t events) {
  if (events & EPOLLOUT) flush();
  if (!finished() && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) readFrames();
}

void PassiveHandshake::onTick(Clock::time_point now) {
  if (finished()) return;
  if (phase_ == Phase::kTransport) checkTransport();
  if (finished() || now < deadline_) return;
  if (phase_ == Phase::kLinger) {
    phase_ = Phase::kFailed;  // the rejection was logged when it was sent
    return;
  }
  fail(Status(StatusCode::kTimedOut, "the handshake did not complete within connect_timeout (" +
                                         std::to_string(engine_.options.connect_timeout.count()) +
                                         " ms)"));
}

void PassiveHandshake::readFrames() {
  if (phase_ == Phase::kLinger) {
    // Discard what the rejected peer still sends so that closing does not reset the connection
    // before it has read the REJECT; bounded in bytes and time.
    uint8_t sink[4096];
    for (;;) {
      ssize_t n = ::recv(fd(), sink, sizeof(sink), MSG_DONTWAIT);
      if (n > 0) {
        discarded_ += static_cast<size_t>(n);
        if (discarded_ <= kMaxDiscard) continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return;
      }
      phase_ = Phase::kFailed;
      return;
    }
  }
  for (int i = 0; i < kFramesPerEvent && !finished() && phase_ != Phase::kLinger; ++i) {
    const bool opening =
        phase_ == Phase::kAuth || phase_ == Phase::kProof || phase_ == Phase::kHello;
    auto f = in_.read(fd());
    if (!f.ok()) {
      const StatusCode code = f.status().code();
      if (opening &&
          (code == StatusCode::kProtocolError || code == StatusCode::kPermissionDenied)) {
        reject(f.status());
      } else if (phase_ == Phase::kProof && code == StatusCode::kConnectionBroken) {
        // A client that cannot verify our proof says so in a REJECT; one that just hangs up
        // here most likely has another secret.
        fail(Status(StatusCode::kPermissionDenied,
                    "authentication failed: the client hung up after the server's challenge "
                    "instead of proving it knows the secret; " +
                        std::string(kAuthAdvice)));
      } else if (opening && !in_.partial() && code == StatusCode::kConnectionBroken) {
        // Closed before saying anything (a port probe, a health check): not worth a warning.
        LOG(INFO) << "zcx: " << peer_ << " closed its connection before the handshake";
        phase_ = Phase::kFailed;
      } else {
        fail(f.status());
      }
      return;
    }
    if (!f->has_value()) {
      refuseUnauthenticatedHello();
      return;
    }
    if (phase_ == Phase::kAuth) {
      onAuthInit(std::move(**f));
    } else if (phase_ == Phase::kProof) {
      onAuthProof(std::move(**f));
    } else if (phase_ == Phase::kHello) {
      onHello(std::move(**f));
    } else if ((*f)->type == FrameType::kReady && !peer_ready_) {
      peer_ready_ = true;
      finishIfReady();
      return;  // anything after READY belongs to the connection
    } else {
      fail(Status(StatusCode::kProtocolError, std::string("unexpected ") +
                                                  frameTypeName(static_cast<uint8_t>((*f)->type)) +
                                                  " frame during the handshake; expected READY"));
    }
  }
}

namespace {
Status authRequired() {
  return Status(StatusCode::kPermissionDenied,
                "authentication failed: the server requires authentication and the client sent "
                "none (it has no auth_secret); " +
                    std::string(kAuthAdvice));
}
}  // namespace

bool PassiveHandshake::refuseUnauthenticatedHello() {
  // Its header is enough: the body (up to 1 MiB) is not waited for.
  if (phase_ != Phase::kAuth || in_.pendingType() != FrameType::kHello) return false;
  reject(authRequired());
  return true;
}

void PassiveHandshake::onAuthInit(Frame f) {
  if (f.type == FrameType::kHello) {
    reject(authRequired());
    return;
  }
  if (f.type != FrameType::kAuthInit) {
    reject(Status(StatusCode::kProtocolError,
                  "this engine requires authentication: the first frame must be AUTH_INIT, got " +
                      std::string(frameTypeName(static_cast<uint8_t>(f.type))) +
                      "; is the peer a zcx engine?"));
    return;
  }
  auto init = decodeAuthInit(f.body);
  if (!init.ok()) {
    reject(init.status());
    return;
  }
  auto nonce = randomNonce();
  if (!nonce.ok()) {
    fail(nonce.status());
    return;
  }
  client_nonce_ = init->nonce;
  server_nonce_ = *nonce;
  auto proof = serverProof(engine_.auth_secret, client_nonce_, server_nonce_);
  if (!proof.ok()) {
    fail(proof.status());
    return;
  }
  if (Status s =
          out_.queue(FrameType::kAuthChallenge, encode(AuthChallenge{server_nonce_, *proof}));
      !s.ok()) {
    fail(s);
    return;
  }
  phase_ = Phase::kProof;
  flush();
}

void PassiveHandshake::onAuthProof(Frame f) {
  if (f.type == FrameType::kReject) {
    // The client could not verify our proof: its secret is not ours.
    auto rej = decodeReject(f.body);
    fail(Status(StatusCode::kPermissionDenied,
                "authentication failed: the client refused the server's proof" +
                    (rej.ok() ? " (" + rej->reason + ")" : std::string()) + "; " + kAuthAdvice));
    return;
  }
  if (f.type != FrameType::kAuthProof) {
    reject(Status(StatusCode::kProtocolError,
                  "expected AUTH_PROOF, got " +
                      std::string(frameTypeName(static_cast<uint8_t>(f.type))) +
                      "; is the peer a zcx engine?"));
    return;
  }
  auto proof = decodeAuthProof(f.body);
  if (!proof.ok()) {
    reject(proof.status());
    return;
  }
  auto want = clientProof(engine_.auth_secret, client_nonce_, server_nonce_);
  auto key = sessionKey(engine_.auth_secret, client_nonce_, server_nonce_);
  if (!want.ok() || !key.ok()) {
    fail(!want.ok() ? want.status() : key.status());
    return;
  }
  // Sealed from here on, the REJECT of a wrong proof included: the session key does not depend
  // on the client's proof, and a client that verified our proof shares it.
  ChannelMacs macs = channelMacs(*key, /*client=*/false);
  out_.authenticate(std::move(macs.send));
  in_.authenticate(std::move(macs.receive));
  if (!sameMac(proof->proof, *want)) {
    reject(Status(StatusCode::kPermissionDenied,
                  "authentication failed: the client's proof does not match the server's "
                  "auth_secret; " +
                      std::string(kAuthAdvice)));
    return;
  }
  phase_ = Phase::kHello;
}

void PassiveHandshake::onHello(Frame f) {
  if (f.type == FrameType::kAuthInit) {
    reject(Status(StatusCode::kPermissionDenied,
                  "authentication failed: the client authenticates with an auth_secret but the "
                  "server has none; " +
                      std::string(kAuthAdvice)));
    return;
  }
  if (f.type != FrameType::kHello) {
    reject(Status(StatusCode::kProtocolError,
                  "the first frame must be HELLO, got " +
                      std::string(frameTypeName(static_cast<uint8_t>(f.type))) +
                      "; is the peer a zcx engine?"));
    return;
  }
  auto h = decodeHello(f.body);
  if (!h.ok()) {
    reject(h.status());
    return;
  }
  Hello mine = engine_.localHello();
  if (h->transport != mine.transport) {
    reject(Status(StatusCode::kVersionMismatch,
                  "peer uses transport '" + h->transport + "' but this engine uses '" +
                      mine.transport + "'; choose the same --transport on both sides"));
    return;
  }
  if (Status room = engine_.admitPeer(); !room.ok()) {
    reject(room);
    return;
  }
  mine.token = h->token;
  if (Status s = out_.queue(FrameType::kHello, encodeBounded(mine)); !s.ok()) {
    fail(s);
    return;
  }
  conn_fd_ = fd_.get();
  auto conn = engine_.makeConnection(std::move(fd_), std::move(*h), mine.token, false);
  if (!conn.ok()) {
    fail(conn.status());  // the socket went with the failed connection
    return;
  }
  conn_ = std::move(*conn);
  phase_ = Phase::kTransport;
  flush();
  if (!finished()) checkTransport();
}

void PassiveHandshake::checkTransport() {
  if (ready_sent_) return;
  auto ready = conn_->pollReady();
  if (!ready) return;  // still connecting: the next tick looks again
  if (!ready->ok()) {
    fail(ready->withContext("transport connection setup"));
    return;
  }
  if (Status s = out_.queue(FrameType::kReady, {}); !s.ok()) {
    fail(s);
    return;
  }
  ready_sent_ = true;
  flush();
  finishIfReady();
}

void PassiveHandshake::finishIfReady() {
  if (!finished() && ready_sent_ && peer_ready_) phase_ = Phase::kDone;
}

void PassiveHandshake::flush() {
  if (finished()) return;
  if (Status s = out_.flush(fd()); !s.ok()) {
    fail(s);
    return;
  }
  if (phase_ == Phase::kLinger && out_.empty()) ::shutdown(fd(), SHUT_WR);
}

void PassiveHandshake::reject(const Status& why) {
  LOG(WARNING) << "zcx: rejected an incoming connection from " << peer_ << ": " << why.toString();
  Reject rej{static_cast<uint8_t>(why.code()), why.message()};
  if (!out_.queue(FrameType::kReject, encode(rej)).ok()) {
    phase_ = Phase::kFailed;
    return;
  }
  phase_ = Phase::kLinger;
  deadline_ = std::min(deadline_, Clock::now() + kLingerAfterReject);
  flush();
}

void PassiveHandshake::fail(const Status& why) {
  LOG(WARNING) << "zcx: incoming connection from " << peer_ << " failed: " << why.toString();
  phase_ = Phase::kFailed;
  error_ = why;
}

}  // namespace zcx::detail

// The passive side of the connection handshake as a state machine driven by the control loop:
// it never waits, so one slow or hostile peer cannot hold up the others.
//
//   kAuth       (engines with an auth_secret) reading the peer's AUTH_INIT
//   kProof      our AUTH_CHALLENGE sent, reading the peer's AUTH_PROOF; from then on every frame
//               both ways carries a MAC under the session key
//   kHello      reading the peer's HELLO (or a REJECT is sent: kLinger)
//   kTransport  our HELLO sent, the transport endpoint connecting; READY frames both ways
//   kLinger     REJECT queued: flush it, half-close, discard input until EOF or a short deadline
//   kDone       the connection is established (take it with connection())
//   kFailed     finished without a connection (already logged)
#pragma once

#include <memory>
#include <string>

#include "auth.h"
#include "frame_buffer.h"
#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

class ConnectionImpl;
class EngineImpl;

class PassiveHandshake {
 public:
  enum class Phase { kAuth, kProof, kHello, kTransport, kLinger, kDone, kFailed };

  PassiveHandshake(EngineImpl& engine, Fd fd, Clock::time_point deadline);
  ~PassiveHandshake();

  int fd() const { return fd_.valid() ? fd_.get() : conn_fd_; }
  Phase phase() const { return phase_; }
  bool finished() const { return phase_ == Phase::kDone || phase_ == Phase::kFailed; }
  bool wantsWrite() const { return !out_.empty(); }
  Clock::time_point started() const { return started_; }
  /// Still waiting for the peer's HELLO (and its authentication before it), which a real client
  /// sends as soon as it connects.
  bool silentSince(Clock::time_point t) const {
    return (phase_ == Phase::kAuth || phase_ == Phase::kProof || phase_ == Phase::kHello) &&
           started_ < t;
  }
  bool waitsForTransport() const { return phase_ == Phase::kTransport && !ready_sent_; }

  /// The socket is readable/writable (epoll events).
  void onEvents(uint32_t events);
  /// Timer: the transport endpoint's state and the deadline.
  void onTick(Clock::time_point now);

  /// After kDone: the connection and whatever of our frames the socket has not taken yet, and
  /// the reader (it holds the MAC state of an authenticated channel).
  std::shared_ptr<ConnectionImpl> connection() const { return conn_; }
  FrameWriter takeOutput() { return std::move(out_); }
  FrameReader takeInput() { return std::move(in_); }

 private:
  void readFrames();
  /// A peer without a secret sends HELLO first: refused as soon as its header is in.
  bool refuseUnauthenticatedHello();
  void onAuthInit(Frame f);
  void onAuthProof(Frame f);
  void onHello(Frame f);
  void checkTransport();
  void flush();
  void reject(const Status& why);
  void fail(const Status& why);
  void finishIfReady();

  EngineImpl& engine_;
  Fd fd_;             ///< until the connection owns the socket
  int conn_fd_ = -1;  ///< the socket number once the connection owns it
  std::string peer_;  ///< address, for logs
  Clock::time_point started_ = Clock::now();
  Clock::time_point deadline_;
  Phase phase_ = Phase::kHello;
  FrameReader in_;
  FrameWriter out_;
  std::shared_ptr<ConnectionImpl> conn_;
  bool ready_sent_ = false;
  bool peer_ready_ = false;
  size_t discarded_ = 0;
  Status error_;
  AuthNonce client_nonce_{};  ///< kProof: the nonces of this handshake
  AuthNonce server_nonce_{};
};

}  // namespace zcx::detail

// Authentication of the control channel: a mutual HMAC-SHA256 challenge-response over a shared
// secret, then a MAC under a per-connection session key on every control frame.
//
//   client                                          server
//   AUTH_INIT(version, nonce_c)              ->
//                                            <-     AUTH_CHALLENGE(nonce_s,
//                                                     HMAC(secret, "zcx server" | nonce_c |
//                                                     nonce_s))
//   (client checks the server's proof)
//   AUTH_PROOF(HMAC(secret, "zcx client" | nonce_c | nonce_s)) ->
//   session key = HMAC(secret, "zcx session" | nonce_c | nonce_s) on both sides
//   every later frame, both ways: body | HMAC(session key, direction | sequence | type | body)
//
// The server proves first, so a client never sends anything but a nonce to a peer that does not
// know the secret; the server sends nothing but a nonce and its proof to a peer that has not
// proven it. Sequence numbers are implicit (counted by both ends, one count per direction), so
// a frame that is altered, dropped, replayed, reordered or reflected back fails its MAC.
// Pure code (OpenSSL libcrypto, no logging): the fuzz targets link it.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "control_protocol.h"
#include "zcx/status.h"

namespace zcx::detail {

constexpr size_t kAuthNonceSize = 32;
constexpr size_t kMacSize = kFrameMacSize;  ///< HMAC-SHA256
using AuthNonce = std::array<uint8_t, kAuthNonceSize>;
using AuthMac = std::array<uint8_t, kMacSize>;

/// Which end sent a frame: part of every frame MAC, so a frame cannot be reflected back.
enum class AuthDirection : uint8_t { kClientToServer = 'C', kServerToClient = 'S' };

/// A secret (the shared one, or a session key): wiped when it goes away. Never logged.
class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(std::span<const uint8_t> bytes) : bytes_(bytes.begin(), bytes.end()) {}
  SecretBytes(const SecretBytes& other) : bytes_(other.bytes_) {}
  SecretBytes& operator=(const SecretBytes& other);
  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  ~SecretBytes() { wipe(); }

  bool empty() const { return bytes_.empty(); }
  size_t size() const { return bytes_.size(); }
  std::span<const uint8_t> bytes() const { return bytes_; }

 private:
  void wipe();
  std::vector<uint8_t> bytes_;
};

/// Fresh nonce from the kernel's CSPRNG (via OpenSSL RAND_bytes).
Result<AuthNonce> randomNonce();

/// The server's proof, the client's proof and the session key of one handshake (distinct labels:
/// none of them can stand in for another).
Result<AuthMac> serverProof(const SecretBytes& secret, const AuthNonce& client,
                            const AuthNonce& server);
Result<AuthMac> clientProof(const SecretBytes& secret, const AuthNonce& client,
                            const AuthNonce& server);
Result<SecretBytes> sessionKey(const SecretBytes& secret, const AuthNonce& client,
                               const AuthNonce& server);
/// Constant-time comparison (CRYPTO_memcmp).
bool sameMac(const AuthMac& a, const AuthMac& b);

/// One direction of an authenticated control channel: seals the frames one end sends, or opens
/// those it receives, counting them. Not thread-safe: its owner serialises frames anyway.
class FrameMac {
 public:
  FrameMac(SecretBytes session_key, AuthDirection direction)
      : key_(std::move(session_key)), direction_(direction) {}

  /// Appends the MAC of the next frame to `body`.
  Status seal(FrameType type, std::vector<uint8_t>& body);
  /// Checks and strips the MAC of the next frame; kPermissionDenied if it does not verify
  /// (the frame was altered, replayed, reordered, or not sealed by the session's peer).
  Status open(FrameType type, std::vector<uint8_t>& body);
  /// Frames sealed or opened so far.
  uint64_t sequence() const { return sequence_; }

 private:
  Result<AuthMac> mac(FrameType type, std::span<const uint8_t> body) const;
  SecretBytes key_;
  AuthDirection direction_;
  uint64_t sequence_ = 0;
};

/// The two directions of one end of an authenticated channel.
struct ChannelMacs {
  FrameMac send;
  FrameMac receive;
};

/// The client's ("active") and the server's ("passive") halves of a session.
ChannelMacs channelMacs(const SecretBytes& session_key, bool client);

// ---- the three frames of the handshake (bodies; fixed sizes, checked exactly) ----

struct AuthInit {
  uint16_t version = kProtocolVersion;
  AuthNonce nonce{};
};
struct AuthChallenge {
  AuthNonce nonce{};
  AuthMac proof{};
};
struct AuthProof {
  AuthMac proof{};
};

std::vector<uint8_t> encode(const AuthInit& a);
std::vector<uint8_t> encode(const AuthChallenge& a);
std::vector<uint8_t> encode(const AuthProof& a);
/// kVersionMismatch for another protocol version, kProtocolError for malformed bytes.
Result<AuthInit> decodeAuthInit(const std::vector<uint8_t>& body);
Result<AuthChallenge> decodeAuthChallenge(const std::vector<uint8_t>& body);
Result<AuthProof> decodeAuthProof(const std::vector<uint8_t>& body);

/// What to do when authentication fails, appended to every such message.
inline constexpr const char* kAuthAdvice =
    "both sides need the same auth_secret (EngineOptions::auth_secret or auth_secret_file; "
    "zcx_perf --auth-secret-file PATH)";

}  // namespace zcx::detail

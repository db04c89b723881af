#include "auth.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <initializer_list>
#include <memory>

#include "wire.h"

namespace zcx::detail {
namespace {

constexpr uint32_t kAuthMagic = 0x4158435a;  // "ZCXA"

Status cryptoFailure(const char* what) {
  return Status(StatusCode::kInternal, std::string("OpenSSL libcrypto failed to ") + what +
                                           "; is libcrypto (libssl3) installed and working?");
}

// HMAC-SHA256 over the concatenation of `parts`.
Result<AuthMac> hmac(std::span<const uint8_t> key,
                     std::initializer_list<std::span<const uint8_t>> parts) {
  // Fetched once: EVP_MAC_fetch searches the provider tables.
  static EVP_MAC* const algorithm = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (algorithm == nullptr) return cryptoFailure("provide HMAC");
  std::unique_ptr<EVP_MAC_CTX, decltype(&EVP_MAC_CTX_free)> ctx(EVP_MAC_CTX_new(algorithm),
                                                                EVP_MAC_CTX_free);
  if (!ctx) return cryptoFailure("allocate an HMAC context");
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  // HMAC takes an empty key, but a zero-length pointer may be null: give it a valid one.
  static const uint8_t kNoKey = 0;
  if (EVP_MAC_init(ctx.get(), key.empty() ? &kNoKey : key.data(), key.size(), params) != 1)
    return cryptoFailure("start an HMAC");
  for (auto part : parts) {
    if (!part.empty() && EVP_MAC_update(ctx.get(), part.data(), part.size()) != 1)
      return cryptoFailure("compute an HMAC");
  }
  AuthMac out{};
  size_t len = 0;
  if (EVP_MAC_final(ctx.get(), out.data(), &len, out.size()) != 1 || len != out.size())
    return cryptoFailure("finish an HMAC");
  return out;
}

std::span<const uint8_t> label(const char* text) {
  return {reinterpret_cast<const uint8_t*>(text), std::char_traits<char>::length(text)};
}

Result<AuthMac> handshakeMac(const char* what, const SecretBytes& secret, const AuthNonce& client,
                             const AuthNonce& server) {
  // Labels of distinct length-free prefixes: "zcx client", "zcx server", "zcx session" are
  // followed by two fixed-size nonces, so no input of one can be parsed as another's.
  return hmac(secret.bytes(), {label(what), client, server});
}

Status malformed(const char* what) {
  return Status(StatusCode::kProtocolError,
                std::string("malformed ") + what +
                    " from peer (authentication); is it a zcx engine of the same version?");
}

template <size_t N>
void readArray(WireReader& r, std::array<uint8_t, N>& out) {
  for (auto& b : out) b = r.u8();
}

template <size_t N>
void writeArray(WireWriter& w, const std::array<uint8_t, N>& in) {
  for (uint8_t b : in) w.u8(b);
}

}  // namespace

SecretBytes& SecretBytes::operator=(const SecretBytes& other) {
  if (this != &other) {
    wipe();
    bytes_ = other.bytes_;
  }
  return *this;
}

SecretBytes::SecretBytes(SecretBytes&& other) noexcept : bytes_(std::move(other.bytes_)) {
  other.bytes_.clear();
}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    wipe();
    bytes_ = std::move(other.bytes_);
    other.bytes_.clear();
  }
  return *this;
}

void SecretBytes::wipe() {
  if (!bytes_.empty()) OPENSSL_cleanse(bytes_.data(), bytes_.size());
  bytes_.clear();
}

Result<AuthNonce> randomNonce() {
  AuthNonce n{};
  if (RAND_bytes(n.data(), static_cast<int>(n.size())) != 1)
    return cryptoFailure("produce random bytes (RAND_bytes)");
  return n;
}

Result<AuthMac> serverProof(const SecretBytes& secret, const AuthNonce& client,
                            const AuthNonce& server) {
  return handshakeMac("zcx server", secret, client, server);
}

Result<AuthMac> clientProof(const SecretBytes& secret, const AuthNonce& client,
                            const AuthNonce& server) {
  return handshakeMac("zcx client", secret, client, server);
}

Result<SecretBytes> sessionKey(const SecretBytes& secret, const AuthNonce& client,
                               const AuthNonce& server) {
  auto k = handshakeMac("zcx session", secret, client, server);
  if (!k.ok()) return k.status();
  SecretBytes key(*k);
  OPENSSL_cleanse(k->data(), k->size());
  return key;
}

bool sameMac(const AuthMac& a, const AuthMac& b) {
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

Result<AuthMac> FrameMac::mac(FrameType type, std::span<const uint8_t> body) const {
  WireWriter w;
  w.u8(static_cast<uint8_t>(direction_));
  w.u64(sequence_);
  w.u8(static_cast<uint8_t>(type));
  w.u32(static_cast<uint32_t>(body.size()));
  return hmac(key_.bytes(), {label("zcx frame"), w.data(), body});
}

Status FrameMac::seal(FrameType type, std::vector<uint8_t>& body) {
  auto m = mac(type, body);
  if (!m.ok()) return m.status();
  body.insert(body.end(), m->begin(), m->end());
  ++sequence_;
  return Status::Ok();
}

Status FrameMac::open(FrameType type, std::vector<uint8_t>& body) {
  if (body.size() < kMacSize) {
    return Status(StatusCode::kPermissionDenied,
                  std::string("authentication failed: ") +
                      frameTypeName(static_cast<uint8_t>(type)) + " control frame " +
                      std::to_string(sequence_) +
                      " from peer carries no MAC; the connection is closed");
  }
  const size_t n = body.size() - kMacSize;
  AuthMac got{};
  std::copy(body.begin() + static_cast<std::ptrdiff_t>(n), body.end(), got.begin());
  auto want = mac(type, std::span<const uint8_t>(body.data(), n));
  if (!want.ok()) return want.status();
  if (!sameMac(got, *want)) {
    return Status(StatusCode::kPermissionDenied,
                  std::string("authentication failed: ") +
                      frameTypeName(static_cast<uint8_t>(type)) + " control frame " +
                      std::to_string(sequence_) +
                      " from peer does not verify under the session key (altered, replayed, "
                      "reordered or injected in transit); the connection is closed");
  }
  body.resize(n);
  ++sequence_;
  return Status::Ok();
}

ChannelMacs channelMacs(const SecretBytes& session_key, bool client) {
  const AuthDirection out =
      client ? AuthDirection::kClientToServer : AuthDirection::kServerToClient;
  const AuthDirection in = client ? AuthDirection::kServerToClient : AuthDirection::kClientToServer;
  return ChannelMacs{FrameMac(session_key, out), FrameMac(session_key, in)};
}

std::vector<uint8_t> encode(const AuthInit& a) {
  WireWriter w;
  w.u32(kAuthMagic);
  w.u16(a.version);
  writeArray(w, a.nonce);
  return std::move(w.data());
}

std::vector<uint8_t> encode(const AuthChallenge& a) {
  WireWriter w;
  writeArray(w, a.nonce);
  writeArray(w, a.proof);
  return std::move(w.data());
}

std::vector<uint8_t> encode(const AuthProof& a) {
  WireWriter w;
  writeArray(w, a.proof);
  return std::move(w.data());
}

Result<AuthInit> decodeAuthInit(const std::vector<uint8_t>& body) {
  WireReader r(body);
  if (r.u32() != kAuthMagic) return malformed("AUTH_INIT (bad magic)");
  AuthInit a;
  a.version = r.u16();
  if (r.ok() && a.version != kProtocolVersion) {
    return Status(StatusCode::kVersionMismatch, "peer speaks zcx protocol version " +
                                                    std::to_string(a.version) + ", this side " +
                                                    std::to_string(kProtocolVersion) +
                                                    "; run the same zcx version on both sides");
  }
  readArray(r, a.nonce);
  if (!r.ok() || r.remaining() != 0) return malformed("AUTH_INIT");
  return a;
}

Result<AuthChallenge> decodeAuthChallenge(const std::vector<uint8_t>& body) {
  WireReader r(body);
  AuthChallenge a;
  readArray(r, a.nonce);
  readArray(r, a.proof);
  if (!r.ok() || r.remaining() != 0) return malformed("AUTH_CHALLENGE");
  return a;
}

Result<AuthProof> decodeAuthProof(const std::vector<uint8_t>& body) {
  WireReader r(body);
  AuthProof a;
  readArray(r, a.proof);
  if (!r.ok() || r.remaining() != 0) return malformed("AUTH_PROOF");
  return a;
}

}  // namespace zcx::detail

#include "auth_client.h"

#include "control_protocol.h"

namespace zcx::detail {
namespace {

Status denied(const std::string& why) {
  return Status(StatusCode::kPermissionDenied,
                "authentication failed: " + why + "; " + std::string(kAuthAdvice));
}

}  // namespace

Result<ChannelMacs> authenticateAsClient(int fd, const SecretBytes& secret,
                                         Clock::time_point deadline) {
  auto client_nonce = randomNonce();
  if (!client_nonce.ok()) return client_nonce.status();
  ZCX_RETURN_IF_ERROR(writeFrame(fd, FrameType::kAuthInit,
                                 encode(AuthInit{kProtocolVersion, *client_nonce}), deadline));
  auto f = readFrame(fd, deadline);
  if (!f.ok()) {
    if (f.status().code() == StatusCode::kConnectionBroken) {
      return denied("the server closed the connection instead of answering the authentication (" +
                    f.status().message() + ")");
    }
    return f.status().withContext("authentication");
  }
  if (f->type == FrameType::kReject) {
    auto rej = decodeReject(f->body);
    if (!rej.ok()) return rej.status();
    const auto code = static_cast<StatusCode>(rej->code);
    if (code == StatusCode::kPermissionDenied) return Status(code, rej->reason);
    if (code == StatusCode::kVersionMismatch)
      return Status(code, "peer rejected the connection: " + rej->reason);
    // An engine of an older version does not know AUTH_INIT at all.
    return denied("the server does not authenticate (it answered " +
                  std::string(statusCodeName(code)) + ": " + rej->reason +
                  "); it has no auth_secret or runs an older zcx");
  }
  if (f->type != FrameType::kAuthChallenge) {
    return Status(StatusCode::kProtocolError,
                  "authentication: expected AUTH_CHALLENGE from the server, got " +
                      std::string(frameTypeName(static_cast<uint8_t>(f->type))) +
                      "; is it a zcx engine?");
  }
  auto challenge = decodeAuthChallenge(f->body);
  if (!challenge.ok()) return challenge.status();
  auto want = serverProof(secret, *client_nonce, challenge->nonce);
  if (!want.ok()) return want.status();
  if (!sameMac(challenge->proof, *want)) {
    // Tell the server why we hang up (it logs it); nothing else goes to a peer that failed.
    const std::string why = "the server's proof does not match the client's auth_secret";
    (void)writeFrame(fd, FrameType::kReject,
                     encode(Reject{static_cast<uint8_t>(StatusCode::kPermissionDenied), why}),
                     deadline);
    return denied(why);
  }
  auto proof = clientProof(secret, *client_nonce, challenge->nonce);
  if (!proof.ok()) return proof.status();
  ZCX_RETURN_IF_ERROR(writeFrame(fd, FrameType::kAuthProof, encode(AuthProof{*proof}), deadline));
  auto key = sessionKey(secret, *client_nonce, challenge->nonce);
  if (!key.ok()) return key.status();
  return channelMacs(*key, /*client=*/true);
}

}  // namespace zcx::detail

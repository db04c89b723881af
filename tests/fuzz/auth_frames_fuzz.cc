// The authentication frames a peer sends before it has proven anything (decodeAuthInit,
// decodeAuthChallenge, decodeAuthProof), and the MAC check of every later frame (FrameMac::open)
// on arbitrary bodies: nothing but a frame sealed under the session key may open.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "auth.h"
#include "control_protocol.h"
#include "fuzz_check.h"

using namespace zcx;
using namespace zcx::detail;

namespace {

const SecretBytes& fuzzKey() {
  static const SecretBytes key(std::vector<uint8_t>(32, 0x5a));
  return key;
}

void checkDecoders(const std::vector<uint8_t>& body) {
  if (auto a = decodeAuthInit(body); a.ok()) {
    FUZZ_CHECK(a->version == kProtocolVersion);
    FUZZ_CHECK(encode(*a) == body);  // fixed size: exactly one encoding
  } else {
    FUZZ_CHECK(a.status().code() == StatusCode::kProtocolError ||
               a.status().code() == StatusCode::kVersionMismatch);
  }
  if (auto c = decodeAuthChallenge(body); c.ok()) {
    FUZZ_CHECK(body.size() == kAuthNonceSize + kMacSize);
    FUZZ_CHECK(encode(*c) == body);
  } else {
    FUZZ_CHECK(c.status().code() == StatusCode::kProtocolError);
  }
  if (auto p = decodeAuthProof(body); p.ok()) {
    FUZZ_CHECK(body.size() == kMacSize);
    FUZZ_CHECK(encode(*p) == body);
  } else {
    FUZZ_CHECK(p.status().code() == StatusCode::kProtocolError);
  }
  // Each fits the limit its frame header is checked against.
  FUZZ_CHECK(encode(AuthInit{}).size() <= kMaxAuthBody);
  FUZZ_CHECK(encode(AuthChallenge{}).size() <= kMaxAuthBody);
}

void checkMac(FrameType type, const std::vector<uint8_t>& body) {
  // Arbitrary bytes open only if they are exactly what sealing their prefix gives.
  FrameMac opener(fuzzKey(), AuthDirection::kClientToServer);
  std::vector<uint8_t> opened = body;
  Status s = opener.open(type, opened);
  if (s.ok()) {
    FrameMac sealer(fuzzKey(), AuthDirection::kClientToServer);
    std::vector<uint8_t> again = opened;
    FUZZ_CHECK(sealer.seal(type, again).ok());
    FUZZ_CHECK(again == body);
  } else {
    FUZZ_CHECK(s.code() == StatusCode::kPermissionDenied);
    FUZZ_CHECK(opened == body);  // a refused frame is left as it was
    FUZZ_CHECK(opener.sequence() == 0);
  }
  // What is sealed opens once, in its own direction and position only.
  FrameMac sealer(fuzzKey(), AuthDirection::kClientToServer);
  std::vector<uint8_t> sealed = body;
  FUZZ_CHECK(sealer.seal(type, sealed).ok());
  FUZZ_CHECK(sealed.size() == body.size() + kMacSize);
  std::vector<uint8_t> reflected = sealed;
  FrameMac wrong_direction(fuzzKey(), AuthDirection::kServerToClient);
  FUZZ_CHECK(!wrong_direction.open(type, reflected).ok());
  FrameMac in_order(fuzzKey(), AuthDirection::kClientToServer);
  std::vector<uint8_t> first = sealed;
  FUZZ_CHECK(in_order.open(type, first).ok());
  FUZZ_CHECK(first == body);
  std::vector<uint8_t> replayed = sealed;
  FUZZ_CHECK(!in_order.open(type, replayed).ok());
  if (!body.empty()) {
    std::vector<uint8_t> flipped = sealed;
    flipped[body.size() / 2] ^= 0x01;
    FrameMac fresh(fuzzKey(), AuthDirection::kClientToServer);
    FUZZ_CHECK(!fresh.open(type, flipped).ok());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // First byte: the frame type the MAC covers; the rest: the body.
  const auto type = static_cast<FrameType>(1 + data[0] % 10);
  const std::vector<uint8_t> body(data + 1, data + size);
  checkDecoders(body);
  checkMac(type, body);
  return 0;
}

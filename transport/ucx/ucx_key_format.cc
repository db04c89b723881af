#include "ucx/ucx_key_format.h"

#include <cstring>
#include <string>

namespace zcx::transport::ucx {
namespace {

constexpr uint32_t kKeyMagic = 0x4b58435a;      // "ZCXK" little-endian
constexpr uint32_t kAddressMagic = 0x4158435a;  // "ZCXA"
constexpr uint32_t kCheckedKeyMagic = 0x4358435a;  // "ZCXC"
constexpr size_t kHeaderSize = 16;

uint64_t fnv1a(std::span<const uint8_t> bytes) {
  uint64_t h = 1469598103934665603ull;
  for (uint8_t b : bytes) {
    h ^= b;
    h *= 1099511628211ull;
  }
  return h;
}

std::vector<uint8_t> frame(uint32_t magic, std::span<const uint8_t> ucx_bytes) {
  std::vector<uint8_t> out(kHeaderSize + ucx_bytes.size());
  auto length = static_cast<uint32_t>(ucx_bytes.size());
  uint64_t sum = fnv1a(ucx_bytes);
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &length, 4);
  std::memcpy(out.data() + 8, &sum, 8);
  if (!ucx_bytes.empty()) std::memcpy(out.data() + kHeaderSize, ucx_bytes.data(), ucx_bytes.size());
  return out;
}

Result<std::span<const uint8_t>> unframe(uint32_t expected_magic, const std::string& what,
                                         std::span<const uint8_t> framed) {
  if (framed.size() < kHeaderSize) {
    return Status(StatusCode::kProtocolError,
                  what + " too short (" + std::to_string(framed.size()) + " bytes)");
  }
  uint32_t magic = 0;
  uint32_t length = 0;
  uint64_t sum = 0;
  std::memcpy(&magic, framed.data(), 4);
  std::memcpy(&length, framed.data() + 4, 4);
  std::memcpy(&sum, framed.data() + 8, 8);
  if (magic != expected_magic) {
    return Status(StatusCode::kProtocolError,
                  "not a zcx " + what + " (bad magic; was it made by another transport?)");
  }
  if (length == 0 || length != framed.size() - kHeaderSize) {
    return Status(StatusCode::kProtocolError,
                  what + " length mismatch (header says " + std::to_string(length) + ", got " +
                      std::to_string(framed.size() - kHeaderSize) + " bytes)");
  }
  std::span<const uint8_t> body = framed.subspan(kHeaderSize);
  if (fnv1a(body) != sum) {
    return Status(StatusCode::kProtocolError, what + " checksum mismatch (corrupted)");
  }
  return body;
}

}  // namespace

std::vector<uint8_t> frameKey(std::span<const uint8_t> ucx_bytes) {
  return frame(kKeyMagic, ucx_bytes);
}

Result<std::span<const uint8_t>> unframeKey(std::span<const uint8_t> framed) {
  return unframe(kKeyMagic, "ucx remote key", framed);
}

std::vector<uint8_t> frameCheckedKey(CheckedKey key) {
  uint8_t body[16];
  std::memcpy(body, &key.id, 8);
  std::memcpy(body + 8, &key.cookie, 8);
  return frame(kCheckedKeyMagic, body);
}

Result<CheckedKey> unframeCheckedKey(std::span<const uint8_t> framed) {
  auto body = unframe(kCheckedKeyMagic, "ucx checked-RMA key", framed);
  if (!body.ok()) return body.status();
  if (body->size() != 16) {
    return Status(StatusCode::kProtocolError, "ucx checked-RMA key of " +
                                                  std::to_string(body->size()) +
                                                  " bytes (expected 16)");
  }
  CheckedKey key;
  std::memcpy(&key.id, body->data(), 8);
  std::memcpy(&key.cookie, body->data() + 8, 8);
  return key;
}

bool looksLikeCheckedKey(std::span<const uint8_t> framed) {
  uint32_t magic = 0;
  if (framed.size() < 4) return false;
  std::memcpy(&magic, framed.data(), 4);
  return magic == kCheckedKeyMagic;
}

std::vector<uint8_t> frameAddress(std::span<const uint8_t> ucx_bytes) {
  return frame(kAddressMagic, ucx_bytes);
}

Result<std::span<const uint8_t>> unframeAddress(std::span<const uint8_t> framed) {
  return unframe(kAddressMagic, "ucx worker address", framed);
}

}  // namespace zcx::transport::ucx

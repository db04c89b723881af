#include "verbs/verbs_rails_wire.h"

#include <cstring>
#include <string>

namespace zcx::transport::verbs {
namespace {

constexpr uint8_t kRailsMagic[3] = {'Z', 'V', 'R'};
constexpr uint8_t kRailsVersion = 1;
constexpr size_t kHeader = 5;  // magic, version, count

Status malformed(const std::string& why) {
  return Status(StatusCode::kProtocolError, "peer's multi-rail verbs bytes: " + why);
}

}  // namespace

std::vector<uint8_t> packRails(const std::vector<std::vector<uint8_t>>& entries) {
  std::vector<uint8_t> out(kHeader);
  std::memcpy(out.data(), kRailsMagic, 3);
  out[3] = kRailsVersion;
  out[4] = static_cast<uint8_t>(entries.size());
  for (const auto& e : entries) {
    out.push_back(static_cast<uint8_t>(e.size()));
    out.insert(out.end(), e.begin(), e.end());
  }
  return out;
}

bool isRailsBlob(std::span<const uint8_t> bytes) {
  return bytes.size() >= 3 && std::memcmp(bytes.data(), kRailsMagic, 3) == 0;
}

Result<std::vector<std::span<const uint8_t>>> unpackRails(std::span<const uint8_t> bytes) {
  if (!isRailsBlob(bytes) || bytes.size() < kHeader) return malformed("not a rails blob");
  if (bytes[3] != kRailsVersion) {
    return malformed("version " + std::to_string(bytes[3]) + ", expected " +
                     std::to_string(kRailsVersion));
  }
  const size_t count = bytes[4];
  if (count == 0 || count > kMaxRails) {
    return malformed(std::to_string(count) + " rails (1 to " + std::to_string(kMaxRails) +
                     " allowed)");
  }
  std::vector<std::span<const uint8_t>> out;
  size_t at = kHeader;
  for (size_t i = 0; i < count; ++i) {
    if (at >= bytes.size()) return malformed("rail " + std::to_string(i) + " is missing");
    const size_t len = bytes[at++];
    if (len == 0 || len > bytes.size() - at) {
      return malformed("rail " + std::to_string(i) + " has a bad length " + std::to_string(len));
    }
    out.push_back(bytes.subspan(at, len));
    at += len;
  }
  if (at != bytes.size()) return malformed(std::to_string(bytes.size() - at) + " trailing bytes");
  return out;
}

std::span<const uint8_t> firstRail(std::span<const uint8_t> bytes) {
  if (!isRailsBlob(bytes)) return bytes;
  auto r = unpackRails(bytes);
  return r.ok() ? (*r)[0] : bytes;
}

}  // namespace zcx::transport::verbs

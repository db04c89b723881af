#include "verbs/verbs_wire.h"

#include <cstring>
#include <string>

namespace zcx::transport::verbs {
namespace {

constexpr uint8_t kAddrMagic[3] = {'Z', 'V', 'A'};
constexpr uint8_t kAddrVersion = 1;
constexpr uint8_t kConnMagic[3] = {'Z', 'V', 'C'};
constexpr uint8_t kConnVersion = 1;
constexpr uint8_t kKeyMagic[3] = {'Z', 'V', 'K'};
constexpr uint8_t kKeyVersion = 1;

}  // namespace

std::vector<uint8_t> packAddress(const sockaddr_in& addr) {
  std::vector<uint8_t> out(10);
  std::memcpy(out.data(), kAddrMagic, 3);
  out[3] = kAddrVersion;
  std::memcpy(&out[4], &addr.sin_addr.s_addr, 4);
  std::memcpy(&out[8], &addr.sin_port, 2);
  return out;
}

Result<sockaddr_in> unpackAddress(std::span<const uint8_t> bytes) {
  if (bytes.size() != 10 || std::memcmp(bytes.data(), kAddrMagic, 3) != 0) {
    return Status(StatusCode::kProtocolError,
                  "peer address (" + std::to_string(bytes.size()) +
                      " bytes) is not a verbs transport address: does the peer use another "
                      "transport?");
  }
  if (bytes[3] != kAddrVersion) {
    return Status(StatusCode::kVersionMismatch, "peer verbs address version " +
                                                    std::to_string(bytes[3]) + ", expected " +
                                                    std::to_string(kAddrVersion));
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  std::memcpy(&a.sin_addr.s_addr, &bytes[4], 4);
  std::memcpy(&a.sin_port, &bytes[8], 2);
  return a;
}

std::vector<uint8_t> packConnectData(const ConnectData& data) {
  std::vector<uint8_t> out(kConnectDataSize, 0);
  std::memcpy(out.data(), kConnMagic, 3);
  out[3] = kConnVersion;
  out[4] = static_cast<uint8_t>(kConnectDataSize);
  putLe(&out[8], data.token, 8);
  putLe(&out[16], data.max_message_size, 4);
  return out;
}

Result<ConnectData> unpackConnectData(const void* data, size_t length) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (p == nullptr || length < kConnectDataSize || std::memcmp(p, kConnMagic, 3) != 0) {
    return Status(StatusCode::kProtocolError, "rdma_cm private data (" + std::to_string(length) +
                                                  " bytes) is not from a zcx verbs peer");
  }
  if (p[3] != kConnVersion || p[4] < kConnectDataSize) {
    return Status(StatusCode::kVersionMismatch, "zcx verbs connect data version " +
                                                    std::to_string(p[3]) + ", expected " +
                                                    std::to_string(kConnVersion));
  }
  ConnectData d;
  d.token = getLe(&p[8], 8);
  d.max_message_size = static_cast<uint32_t>(getLe(&p[16], 4));
  return d;
}

std::vector<uint8_t> packKey(uint32_t rkey, uint64_t addr, uint64_t length) {
  std::vector<uint8_t> out(kPackedKeySize);
  std::memcpy(out.data(), kKeyMagic, 3);
  out[3] = kKeyVersion;
  putLe(&out[4], rkey, 4);
  putLe(&out[8], addr, 8);
  putLe(&out[16], length, 8);
  return out;
}

Result<PackedKey> decodeKey(std::span<const uint8_t> bytes) {
  if (bytes.size() != kPackedKeySize) {
    return Status(StatusCode::kProtocolError,
                  "verbs packed key has " + std::to_string(bytes.size()) + " bytes, expected " +
                      std::to_string(kPackedKeySize) + " (a key from another transport?)");
  }
  if (std::memcmp(bytes.data(), kKeyMagic, 3) != 0) {
    return Status(StatusCode::kProtocolError,
                  "bytes are not a verbs packed key (bad magic; a key from another transport?)");
  }
  if (bytes[3] != kKeyVersion) {
    return Status(StatusCode::kProtocolError, "verbs packed key version " +
                                                  std::to_string(bytes[3]) + ", expected " +
                                                  std::to_string(kKeyVersion));
  }
  PackedKey k;
  k.rkey = static_cast<uint32_t>(getLe(&bytes[4], 4));
  k.addr = getLe(&bytes[8], 8);
  k.length = getLe(&bytes[16], 8);
  if (k.length == 0 || k.addr + k.length < k.addr) {
    return Status(StatusCode::kProtocolError, "verbs packed key describes an invalid range");
  }
  return k;
}

}  // namespace zcx::transport::verbs

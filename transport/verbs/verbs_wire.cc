#include "verbs/verbs_wire.h"

#include <arpa/inet.h>
#include <net/if.h>

#include <cstring>
#include <string>

namespace zcx::transport::verbs {
namespace {

constexpr uint8_t kAddrMagic[3] = {'Z', 'V', 'A'};
constexpr uint8_t kAddrVersionIpv4 = 1;  // IPv4 only, 10 bytes
constexpr uint8_t kAddrVersion = 2;      // family-tagged
constexpr uint8_t kFamilyIpv4 = 4;
constexpr uint8_t kFamilyIpv6 = 6;
constexpr uint8_t kConnMagic[3] = {'Z', 'V', 'C'};
constexpr uint8_t kConnVersion = 1;
constexpr uint8_t kKeyMagic[3] = {'Z', 'V', 'K'};
constexpr uint8_t kKeyVersion = 1;

}  // namespace

CmAddress CmAddress::ipv4(const in_addr& addr, uint16_t port) {
  CmAddress a;
  auto* sa = reinterpret_cast<sockaddr_in*>(&a.storage_);
  sa->sin_family = AF_INET;
  sa->sin_addr = addr;
  sa->sin_port = htons(port);
  return a;
}

CmAddress CmAddress::ipv6(const in6_addr& addr, uint16_t port, uint32_t scope_id) {
  CmAddress a;
  auto* sa = reinterpret_cast<sockaddr_in6*>(&a.storage_);
  sa->sin6_family = AF_INET6;
  sa->sin6_addr = addr;
  sa->sin6_port = htons(port);
  sa->sin6_scope_id = scope_id;
  return a;
}

CmAddress CmAddress::fromSockaddr(const sockaddr* sa) {
  CmAddress a;
  if (sa == nullptr) return a;
  if (sa->sa_family == AF_INET) {
    std::memcpy(&a.storage_, sa, sizeof(sockaddr_in));
  } else if (sa->sa_family == AF_INET6) {
    std::memcpy(&a.storage_, sa, sizeof(sockaddr_in6));
  }
  return a;
}

std::optional<CmAddress> CmAddress::parse(std::string_view host) {
  std::string h(host);
  in_addr a4{};
  if (inet_pton(AF_INET, h.c_str(), &a4) == 1) return ipv4(a4);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  in6_addr a6{};
  if (inet_pton(AF_INET6, h.c_str(), &a6) == 1) return ipv6(a6);
  return std::nullopt;
}

uint16_t CmAddress::port() const {
  if (family() == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  if (family() == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  }
  return 0;
}

void CmAddress::setPort(uint16_t port) {
  if (family() == AF_INET) reinterpret_cast<sockaddr_in*>(&storage_)->sin_port = htons(port);
  if (family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_port = htons(port);
}

uint32_t CmAddress::scopeId() const {
  if (family() != AF_INET6) return 0;
  return reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_scope_id;
}

void CmAddress::setScopeId(uint32_t scope_id) {
  if (family() == AF_INET6) reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_scope_id = scope_id;
}

bool CmAddress::isLinkLocal() const {
  if (family() != AF_INET6) return false;
  const uint8_t* b = reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr.s6_addr;
  return b[0] == 0xfe && (b[1] & 0xc0) == 0x80;
}

std::span<const uint8_t> CmAddress::bytes() const {
  if (family() == AF_INET) {
    const auto* sa = reinterpret_cast<const sockaddr_in*>(&storage_);
    return {reinterpret_cast<const uint8_t*>(&sa->sin_addr.s_addr), 4};
  }
  if (family() == AF_INET6) {
    return {reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr.s6_addr, 16};
  }
  return {};
}

bool CmAddress::sameHost(const CmAddress& other) const {
  if (empty() || family() != other.family()) return false;
  const auto a = bytes();
  const auto b = other.bytes();
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string CmAddress::host() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family() == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf,
              sizeof(buf));
    return buf;
  }
  if (family() == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, buf,
              sizeof(buf));
    std::string s = buf;
    if (const uint32_t scope = scopeId(); scope != 0) {
      char name[IF_NAMESIZE] = {};
      s += "%";
      s += if_indextoname(scope, name) != nullptr ? std::string(name) : std::to_string(scope);
    }
    return s;
  }
  return "(no address)";
}

std::string CmAddress::toString() const {
  if (family() == AF_INET6) return "[" + host() + "]:" + std::to_string(port());
  if (family() == AF_INET) return host() + ":" + std::to_string(port());
  return host();
}

std::string CmAddress::familyName() const {
  if (family() == AF_INET) return "IPv4";
  if (family() == AF_INET6) return isLinkLocal() ? "IPv6 link-local" : "IPv6";
  return "no address";
}

std::vector<uint8_t> packAddress(const CmAddress& addr) {
  if (addr.empty()) return {};
  const auto ip = addr.bytes();
  const uint16_t port_be = htons(addr.port());
  if (addr.family() == AF_INET) {
    std::vector<uint8_t> out(10);
    std::memcpy(out.data(), kAddrMagic, 3);
    out[3] = kAddrVersionIpv4;
    std::memcpy(&out[4], ip.data(), 4);
    std::memcpy(&out[8], &port_be, 2);
    return out;
  }
  std::vector<uint8_t> out(7 + ip.size());
  std::memcpy(out.data(), kAddrMagic, 3);
  out[3] = kAddrVersion;
  out[4] = kFamilyIpv6;
  std::memcpy(&out[5], &port_be, 2);
  std::memcpy(&out[7], ip.data(), ip.size());
  return out;
}

Result<CmAddress> unpackAddress(std::span<const uint8_t> bytes) {
  if (bytes.size() < 4 || std::memcmp(bytes.data(), kAddrMagic, 3) != 0) {
    return Status(StatusCode::kProtocolError,
                  "peer address (" + std::to_string(bytes.size()) +
                      " bytes) is not a verbs transport address: does the peer use another "
                      "transport?");
  }
  const auto bad_length = [&](const std::string& what, size_t expected) {
    return Status(StatusCode::kProtocolError, "peer verbs address (" + what + ") has " +
                                                  std::to_string(bytes.size()) +
                                                  " bytes, expected " + std::to_string(expected));
  };
  uint16_t port_be = 0;
  if (bytes[3] == kAddrVersionIpv4) {
    if (bytes.size() != 10) return bad_length("version 1", 10);
    in_addr a{};
    std::memcpy(&a.s_addr, &bytes[4], 4);
    std::memcpy(&port_be, &bytes[8], 2);
    return CmAddress::ipv4(a, ntohs(port_be));
  }
  if (bytes[3] != kAddrVersion) {
    return Status(StatusCode::kVersionMismatch,
                  "peer verbs address version " + std::to_string(bytes[3]) + ", expected " +
                      std::to_string(kAddrVersionIpv4) + " or " + std::to_string(kAddrVersion) +
                      " (is the peer a newer zcx?)");
  }
  if (bytes.size() < 5) return bad_length("version 2 without a family", 11);
  if (bytes[4] != kFamilyIpv4 && bytes[4] != kFamilyIpv6) {
    return Status(StatusCode::kProtocolError, "peer verbs address has unknown address family " +
                                                  std::to_string(bytes[4]) +
                                                  " (4 = IPv4 and 6 = IPv6 are known)");
  }
  const size_t ip_len = bytes[4] == kFamilyIpv4 ? 4 : 16;
  if (bytes.size() != 7 + ip_len) {
    return bad_length(bytes[4] == kFamilyIpv4 ? "version 2, IPv4" : "version 2, IPv6", 7 + ip_len);
  }
  std::memcpy(&port_be, &bytes[5], 2);
  if (ip_len == 4) {
    in_addr a{};
    std::memcpy(&a.s_addr, &bytes[7], 4);
    return CmAddress::ipv4(a, ntohs(port_be));
  }
  in6_addr a{};
  std::memcpy(a.s6_addr, &bytes[7], 16);
  return CmAddress::ipv6(a, ntohs(port_be));
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

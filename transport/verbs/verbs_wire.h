// Bytes exchanged with the peer: the transport address and the rdma_cm private data.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "zcx/status.h"

namespace zcx::transport::verbs {

/// Little-endian field helpers shared by the verbs wire formats (address, connect data, keys).
inline void putLe(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint64_t getLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

/// An IPv4 or IPv6 socket address as rdma_cm binds to or resolves (empty: AF_UNSPEC).
class CmAddress {
 public:
  CmAddress() = default;
  static CmAddress ipv4(const in_addr& addr, uint16_t port = 0);
  /// scope_id: the interface of a link-local address (fe80::/10), 0 otherwise.
  static CmAddress ipv6(const in6_addr& addr, uint16_t port = 0, uint32_t scope_id = 0);
  /// An AF_INET or AF_INET6 sockaddr (anything else, or null: empty).
  static CmAddress fromSockaddr(const sockaddr* sa);
  /// A numeric IPv4 or IPv6 address ("10.0.0.1", "fd00::1", "[fd00::1]"); nullopt otherwise.
  static std::optional<CmAddress> parse(std::string_view host);

  int family() const { return storage_.ss_family; }  ///< AF_INET, AF_INET6 or AF_UNSPEC
  bool empty() const { return family() != AF_INET && family() != AF_INET6; }
  uint16_t port() const;  ///< host order
  void setPort(uint16_t port);
  uint32_t scopeId() const;  ///< IPv6 only (0 for IPv4)
  void setScopeId(uint32_t scope_id);
  bool isLinkLocal() const;  ///< IPv6 fe80::/10
  /// Same family and address (port and scope ignored).
  bool sameHost(const CmAddress& other) const;
  /// The address bytes: 4 (IPv4) or 16 (IPv6), network order; empty span when empty().
  std::span<const uint8_t> bytes() const;

  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage_); }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage_); }
  std::string host() const;        ///< "10.0.0.1", "fd00::1", "fe80::1%dummy0"
  std::string toString() const;    ///< "10.0.0.1:4791", "[fd00::1]:4791"
  std::string familyName() const;  ///< "IPv4", "IPv6", "IPv6 link-local"

 private:
  sockaddr_storage storage_{};
};

/// localAddress() bytes. Version 1 (IPv4 only; what zcx before IPv6 support sends and accepts):
///   "ZVA", 1, IPv4 (4 bytes, network order), port (2 bytes, network order) = 10 bytes.
/// Version 2 (any family): "ZVA", 2, family (4 or 6), port (2 bytes, network order), address
///   (4 or 16 bytes, network order) = 11 or 23 bytes.
/// packAddress writes version 1 for IPv4 (so older peers keep working) and version 2 for IPv6;
/// an empty address packs to no bytes (a peer refuses them). unpackAddress takes both versions,
/// checks the exact length for the version and family, and refuses anything else.
std::vector<uint8_t> packAddress(const CmAddress& addr);
Result<CmAddress> unpackAddress(std::span<const uint8_t> bytes);

/// rdma_connect / rdma_accept private data (RC connect allows 56 bytes; we use 24).
struct ConnectData {
  uint64_t token = 0;
  uint32_t max_message_size = 0;
};
constexpr size_t kConnectDataSize = 24;
std::vector<uint8_t> packConnectData(const ConnectData& data);
/// The received private data may be zero-padded past our length: parse by our own length field.
Result<ConnectData> unpackConnectData(const void* data, size_t length);

/// A packed remote key: "ZVK" magic, version 1, rkey (u32 LE), addr (u64 LE), length (u64 LE) =
/// 24 bytes. VerbsRemoteKey is built from it (verbs_memory.h).
struct PackedKey {
  uint32_t rkey = 0;
  uint64_t addr = 0;
  uint64_t length = 0;
};
constexpr size_t kPackedKeySize = 24;
std::vector<uint8_t> packKey(uint32_t rkey, uint64_t addr, uint64_t length);
/// kProtocolError if the bytes are not a packed key of this version or describe an empty or
/// wrapping range.
Result<PackedKey> decodeKey(std::span<const uint8_t> bytes);

}  // namespace zcx::transport::verbs

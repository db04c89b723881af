// Bytes exchanged with the peer: the transport address and the rdma_cm private data.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <optional>
#include <span>
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

/// localAddress(): "ZVA" magic, version 1, IPv4 (4 bytes, network order), port (2 bytes, network
/// order) = 10 bytes.
std::vector<uint8_t> packAddress(const sockaddr_in& addr);
Result<sockaddr_in> unpackAddress(std::span<const uint8_t> bytes);

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

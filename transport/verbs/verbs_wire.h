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

}  // namespace zcx::transport::verbs

// The framing of packed remote keys and worker addresses: UCX's ucp_ep_rkey_unpack and
// ucp_ep_create take no length and trust their input, so the bytes a peer receives are wrapped in
// a header with a length and a checksum, and anything that does not match is rejected before UCX
// sees it (a malformed handshake must be an error, not a crash).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "zcx/status.h"

namespace zcx::transport::ucx {

/// magic "ZCXK" | u32 length | u64 FNV-1a of the UCX bytes | UCX bytes.
std::vector<uint8_t> frameKey(std::span<const uint8_t> ucx_bytes);

/// The UCX bytes inside a framed key, or kProtocolError explaining what is wrong.
Result<std::span<const uint8_t>> unframeKey(std::span<const uint8_t> framed);

/// A checked-RMA key (magic "ZCXC", same framing): the target's registration id and cookie.
struct CheckedKey {
  uint64_t id = 0;
  uint64_t cookie = 0;
};
std::vector<uint8_t> frameCheckedKey(CheckedKey key);
/// kProtocolError unless `framed` is a well-formed checked key.
Result<CheckedKey> unframeCheckedKey(std::span<const uint8_t> framed);
/// True if the bytes start like a checked key (to tell a peer in the other RMA mode apart).
bool looksLikeCheckedKey(std::span<const uint8_t> framed);

/// The same framing (magic "ZCXA") for the worker address localAddress() hands to peers.
std::vector<uint8_t> frameAddress(std::span<const uint8_t> ucx_bytes);
Result<std::span<const uint8_t>> unframeAddress(std::span<const uint8_t> framed);

}  // namespace zcx::transport::ucx

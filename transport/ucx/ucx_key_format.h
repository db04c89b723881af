// The framing of packed remote keys: UCX's ucp_ep_rkey_unpack takes no length and trusts its
// input, so packedKey() wraps UCX's bytes in a header with a length and a checksum, and
// importKey() rejects anything that does not match before UCX sees it.
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

}  // namespace zcx::transport::ucx

// The bytes a multi-rail verbs transport exchanges: one blob holding every rail's own bytes
// (its address, or its packed key), so each rail's format stays its own business.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "zcx/status.h"

namespace zcx::transport::verbs {

/// Most rails one engine drives (and the most entries a peer's blob may carry).
constexpr size_t kMaxRails = 8;
/// Largest entry: a rail's address or key is a few dozen bytes.
constexpr size_t kMaxRailEntry = 255;

/// "ZVR" magic, version 1, count (1 byte), then per rail: length (1 byte) and its bytes.
std::vector<uint8_t> packRails(const std::vector<std::vector<uint8_t>>& entries);
/// True if `bytes` starts like a rails blob (then unpackRails decides whether it is valid).
bool isRailsBlob(std::span<const uint8_t> bytes);
/// Every entry of a rails blob. kProtocolError unless the bytes are exactly a blob of 1 to
/// kMaxRails non-empty entries (a peer's bytes: lengths checked before use).
Result<std::vector<std::span<const uint8_t>>> unpackRails(std::span<const uint8_t> bytes);
/// Rail 0's bytes of a rails blob, or `bytes` itself if it is not one: what a single-rail
/// transport uses of a multi-rail peer's address or key. Invalid blobs come back unchanged
/// (the rail's own parser then rejects them).
std::span<const uint8_t> firstRail(std::span<const uint8_t> bytes);

}  // namespace zcx::transport::verbs

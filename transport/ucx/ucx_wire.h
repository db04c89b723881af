// What one zcx UCX transport sends to another in active messages.
#pragma once

#include <cstdint>

namespace zcx::transport::ucx {

/// Active message ids (per worker, so they cannot clash with other UCX users of the process).
enum AmId : unsigned {
  kAmMessage = 0x11,  ///< a two-sided message; payload = the bytes
  kAmNotify = 0x12,   ///< a write notification; no payload
  /// The active side's endpoint is wired up; the passive side may now create its own endpoint,
  /// which UCX matches with the one it made for the active side's wireup (no crossing wireup).
  kAmHello = 0x13,
};

inline constexpr uint8_t kWireVersion = 1;

/// The header of every active message. Sent in host byte order (both peers are on one host
/// for shm, and UCX itself does not support mixed-endian peers).
struct AmHeader {
  uint64_t token = 0;  ///< EndpointSetup::token of the connection
  uint64_t value = 0;  ///< kAmMessage: sequence number; kAmNotify: the notify value
  uint8_t role = 0;    ///< the sender's Role (the receiver routes to the opposite role)
  uint8_t version = kWireVersion;
  uint8_t reserved[6] = {};
};
static_assert(sizeof(AmHeader) == 24);

}  // namespace zcx::transport::ucx

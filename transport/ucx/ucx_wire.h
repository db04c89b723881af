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
  /// Checked RMA (UcxSettings::checked_rma): a write of the payload to the target's memory, a
  /// read request, and the target's reply to either (status; a granted read carries the data).
  kAmPut = 0x14,
  kAmGet = 0x15,
  kAmRmaReply = 0x16,
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

/// kAmPut / kAmGet: which of the target's registrations (key id + cookie, from its packed key),
/// where and how much. A put carries exactly `length` payload bytes, a get none.
struct RmaHeader {
  uint64_t token = 0;
  uint64_t op_id = 0;  ///< the initiator's id for the reply
  uint64_t key_id = 0;
  uint64_t cookie = 0;
  uint64_t remote_addr = 0;
  uint64_t length = 0;
  uint8_t role = 0;
  uint8_t version = kWireVersion;
  uint8_t reserved[6] = {};
};
static_assert(sizeof(RmaHeader) == 56);

/// kAmRmaReply: `refusal` 0 = done (a put's data is in the target's memory; a get's reply
/// carries exactly the requested bytes), else an AccessRefusal and no data.
struct RmaReplyHeader {
  uint64_t token = 0;
  uint64_t op_id = 0;
  uint8_t role = 0;
  uint8_t version = kWireVersion;
  uint8_t refusal = 0;
  uint8_t reserved[5] = {};
};
static_assert(sizeof(RmaReplyHeader) == 24);

}  // namespace zcx::transport::ucx

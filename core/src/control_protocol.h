// The out-of-band control protocol spoken over TCP between two engines.
//
//   client                          server
//   HELLO(version, transport, token, address, regions) ->
//                                <- HELLO (same fields)  or  REJECT(code, reason)
//   (both create their transport endpoint and wait until it is ready)
//   READY ->                     <- READY
//   ... later, either side: LOOKUP(id, name) / LOOKUP_REPLY(id, found, descriptor), BYE.
// The socket stays open for the life of the connection: its EOF tells that the peer is gone.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "socket.h"
#include "zcx/status.h"

namespace zcx::detail {

// 2: CREDIT frames (send/recv flow control); UCX endpoints wired up by the active side first.
// 3: UNEXPOSE frames; UCX remote writes/reads as target-checked active messages.
constexpr uint16_t kProtocolVersion = 3;
constexpr uint32_t kHelloMagic = 0x4858435a;  // "ZCXH"
constexpr size_t kMaxNameLength = 256;        ///< engine, transport and region names

/// kCredit: the receiver's grant of two-sided messages (send/recv flow control).
/// kAuth*: the challenge-response of engines with an auth_secret (auth.h), before HELLO; only
/// such engines send them, so peers without a secret speak the protocol as before.
/// kUnexpose: the sender no longer exposes the named region; drop what the handshake carried.
enum class FrameType : uint8_t {
  kHello = 1,
  kReject,
  kReady,
  kLookup,
  kLookupReply,
  kBye,
  kCredit,
  kAuthInit,
  kAuthChallenge,
  kAuthProof,
  kUnexpose
};

/// Messages a sender may have sent before the receiver's first CREDIT frame (both sides know
/// it without negotiating; EngineOptions::recv_window may not be smaller).
constexpr uint64_t kInitialCredits = 16;

/// Every frame: u32 length (type byte + body) | u8 type | body.
constexpr size_t kFrameHeaderSize = 5;
struct FrameHeader {
  FrameType type = FrameType::kBye;
  uint32_t body_size = 0;
};
/// Body limits per type, checked on the header before anything is allocated. HELLO carries the
/// exposed region descriptors: a side exposing more than fits sends none and peers look them up.
constexpr size_t kMaxHelloBody = 1u << 20;
constexpr size_t kMaxRejectBody = 8 * 1024;
constexpr size_t kMaxLookupBody = 4 * 1024 + kMaxNameLength;
constexpr size_t kMaxLookupReplyBody = 16 * 1024;
constexpr size_t kMaxRejectReason = 4096;

constexpr size_t kMaxAuthBody = 64;  ///< AUTH_INIT, AUTH_CHALLENGE, AUTH_PROOF
/// On an authenticated channel every body ends with a MAC of this many bytes (auth.h), on top of
/// its type's limit.
constexpr size_t kFrameMacSize = 32;

/// The largest body a frame of `type` may carry (without a MAC); nullopt for an unknown type.
std::optional<size_t> maxFrameBody(uint8_t type);
const char* frameTypeName(uint8_t type);
/// Checks a received header: a known type whose announced body fits that type's limit plus
/// `trailer` bytes (kFrameMacSize on an authenticated channel).
Status checkFrameHeader(uint32_t length, uint8_t type, size_t trailer = 0);
/// Header + body, ready to be sent.
std::vector<uint8_t> frameBytes(FrameType type, const std::vector<uint8_t>& body);

struct Frame {
  FrameType type = FrameType::kBye;
  std::vector<uint8_t> body;
};

struct Hello {
  uint16_t version = kProtocolVersion;
  std::string name;       ///< engine name for logs
  std::string transport;  ///< "ucx", "verbs"
  uint64_t token = 0;
  uint64_t max_message_size = 0;
  std::vector<uint8_t> address;                         ///< transport address
  std::map<std::string, std::vector<uint8_t>> regions;  ///< name -> encoded descriptor
};

struct Reject {
  uint8_t code = 0;  ///< a StatusCode
  std::string reason;
};

struct Lookup {
  uint64_t id = 0;
  std::string name;
};

struct LookupReply {
  uint64_t id = 0;
  bool found = false;
  std::vector<uint8_t> descriptor;
};

std::vector<uint8_t> encode(const Hello& h);
/// HELLO within kMaxHelloBody: without the region list if the regions do not fit.
std::vector<uint8_t> encodeBounded(const Hello& h);
std::vector<uint8_t> encode(const Reject& r);
std::vector<uint8_t> encode(const Lookup& l);
std::vector<uint8_t> encode(const LookupReply& l);
/// CREDIT body: the total number of messages the peer may have sent on this connection so far.
std::vector<uint8_t> encodeCredit(uint64_t limit);
Result<uint64_t> decodeCredit(const std::vector<uint8_t>& body);
Result<Hello> decodeHello(const std::vector<uint8_t>& body);
Result<Reject> decodeReject(const std::vector<uint8_t>& body);
Result<Lookup> decodeLookup(const std::vector<uint8_t>& body);
Result<LookupReply> decodeLookupReply(const std::vector<uint8_t>& body);

std::vector<uint8_t> encodeFrameHeader(FrameType type, size_t body_size);
/// Validates a received header (length bound, known type) before any body is allocated.
Result<FrameHeader> decodeFrameHeader(std::span<const uint8_t, kFrameHeaderSize> header,
                                      size_t trailer = 0);

class FrameMac;
/// Blocking frame I/O (the active side's handshake). With `mac`, the frame is sealed/opened
/// with it (an authenticated channel).
Status writeFrame(int fd, FrameType type, const std::vector<uint8_t>& body,
                  Clock::time_point deadline, FrameMac* mac = nullptr);
Result<Frame> readFrame(int fd, Clock::time_point deadline, FrameMac* mac = nullptr);

}  // namespace zcx::detail

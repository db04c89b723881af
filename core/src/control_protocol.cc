#include "control_protocol.h"

#include "auth.h"
#include "wire.h"

namespace zcx::detail {
namespace {
constexpr size_t kMaxName = kMaxNameLength;
constexpr size_t kMaxAddress = 64 * 1024;
constexpr size_t kMaxDescriptor = 8 * 1024;
constexpr uint32_t kMaxRegions = 65536;

Status malformed(const char* what) {
  return Status(
      StatusCode::kProtocolError,
      std::string("malformed ") + what + " from peer; is it a zcx engine of the same version?");
}
}  // namespace

std::vector<uint8_t> encode(const Hello& h) {
  WireWriter w;
  w.u32(kHelloMagic);
  w.u16(h.version);
  w.str(h.name);
  w.str(h.transport);
  w.u64(h.token);
  w.u64(h.max_message_size);
  w.bytes(h.address);
  w.u32(static_cast<uint32_t>(h.regions.size()));
  for (const auto& [name, desc] : h.regions) {
    w.str(name);
    w.bytes(desc);
  }
  return std::move(w.data());
}

Result<Hello> decodeHello(const std::vector<uint8_t>& body) {
  WireReader r(body);
  if (r.u32() != kHelloMagic) return malformed("handshake (bad magic)");
  Hello h;
  h.version = r.u16();
  if (r.ok() && h.version != kProtocolVersion) {
    return Status(StatusCode::kVersionMismatch, "peer speaks zcx protocol version " +
                                                    std::to_string(h.version) + ", this side " +
                                                    std::to_string(kProtocolVersion) +
                                                    "; run the same zcx version on both sides");
  }
  h.name = r.str(kMaxName);
  // The name goes into our logs and error messages: control characters (a newline forging a
  // log line, terminal escapes) become '?'.
  for (char& c : h.name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  h.transport = r.str(kMaxName);
  h.token = r.u64();
  h.max_message_size = r.u64();
  h.address = r.bytes(kMaxAddress);
  uint32_t n = r.u32();
  if (n > kMaxRegions) return malformed("handshake (region count)");
  for (uint32_t i = 0; r.ok() && i < n; ++i) {
    std::string name = r.str(kMaxName);
    // A second entry of one name would silently replace the first.
    if (!h.regions.emplace(std::move(name), r.bytes(kMaxDescriptor)).second && r.ok())
      return malformed("handshake (duplicate region name)");
  }
  if (!r.ok() || r.remaining() != 0) return malformed("handshake");
  return h;
}

std::vector<uint8_t> encodeBounded(const Hello& h) {
  auto body = encode(h);
  if (body.size() <= kMaxHelloBody) return body;
  Hello lean = h;
  lean.regions.clear();  // the peer looks regions up by name instead
  return encode(lean);
}

std::vector<uint8_t> encode(const Reject& x) {
  WireWriter w;
  w.u8(x.code);
  w.str(std::string_view(x.reason).substr(0, kMaxRejectReason));
  return std::move(w.data());
}

Result<Reject> decodeReject(const std::vector<uint8_t>& body) {
  WireReader r(body);
  Reject x;
  x.code = r.u8();
  x.reason = r.str(kMaxRejectReason);
  // The code becomes the Status the handshake fails with: kOk would read as success.
  if (!r.ok() || x.code == static_cast<uint8_t>(StatusCode::kOk)) return malformed("rejection");
  return x;
}

std::vector<uint8_t> encode(const Lookup& l) {
  WireWriter w;
  w.u64(l.id);
  w.str(l.name);
  return std::move(w.data());
}

Result<Lookup> decodeLookup(const std::vector<uint8_t>& body) {
  WireReader r(body);
  Lookup l;
  l.id = r.u64();
  l.name = r.str(kMaxName);
  if (!r.ok() || r.remaining() != 0) return malformed("lookup");
  return l;
}

std::vector<uint8_t> encode(const LookupReply& l) {
  WireWriter w;
  w.u64(l.id);
  w.u8(l.found ? 1 : 0);
  w.bytes(l.descriptor);
  return std::move(w.data());
}

Result<LookupReply> decodeLookupReply(const std::vector<uint8_t>& body) {
  WireReader r(body);
  LookupReply l;
  l.id = r.u64();
  l.found = r.u8() != 0;
  l.descriptor = r.bytes(kMaxDescriptor);
  if (!r.ok() || r.remaining() != 0) return malformed("lookup reply");
  return l;
}

std::vector<uint8_t> encodeCredit(uint64_t limit) {
  WireWriter w;
  w.u64(limit);
  return std::move(w.data());
}

Result<uint64_t> decodeCredit(const std::vector<uint8_t>& body) {
  WireReader r(body);
  uint64_t limit = r.u64();
  if (!r.ok() || r.remaining() != 0) return malformed("credit");
  return limit;
}

std::optional<size_t> maxFrameBody(uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::kHello: return kMaxHelloBody;
    case FrameType::kReject: return kMaxRejectBody;
    case FrameType::kReady: return 0;
    case FrameType::kLookup: return kMaxLookupBody;
    case FrameType::kLookupReply: return kMaxLookupReplyBody;
    case FrameType::kBye: return 0;
    case FrameType::kCredit: return 8;
    case FrameType::kAuthInit:
    case FrameType::kAuthChallenge:
    case FrameType::kAuthProof: return kMaxAuthBody;
    case FrameType::kUnexpose: return kMaxNameLength;
  }
  return std::nullopt;
}

const char* frameTypeName(uint8_t type) {
  switch (static_cast<FrameType>(type)) {
    case FrameType::kHello: return "HELLO";
    case FrameType::kReject: return "REJECT";
    case FrameType::kReady: return "READY";
    case FrameType::kLookup: return "LOOKUP";
    case FrameType::kLookupReply: return "LOOKUP_REPLY";
    case FrameType::kBye: return "BYE";
    case FrameType::kCredit: return "CREDIT";
    case FrameType::kAuthInit: return "AUTH_INIT";
    case FrameType::kAuthChallenge: return "AUTH_CHALLENGE";
    case FrameType::kAuthProof: return "AUTH_PROOF";
    case FrameType::kUnexpose: return "UNEXPOSE";
  }
  return "unknown";
}

Status checkFrameHeader(uint32_t length, uint8_t type, size_t trailer) {
  auto limit = maxFrameBody(type);
  if (!limit) {
    return Status(StatusCode::kProtocolError,
                  "control frame of unknown type " + std::to_string(type) +
                      " from peer; is it a zcx engine of the same version?");
  }
  if (limit) *limit += trailer;
  if (length == 0 || length - 1 > *limit) {
    return Status(StatusCode::kProtocolError,
                  std::string(frameTypeName(type)) + " frame announces " +
                      std::to_string(length == 0 ? 0 : length - 1) + " body bytes, the limit is " +
                      std::to_string(*limit) + "; is the peer a zcx engine of the same version?");
  }
  return Status::Ok();
}

std::vector<uint8_t> encodeFrameHeader(FrameType type, size_t body_size) {
  WireWriter w;
  w.u32(static_cast<uint32_t>(body_size + 1));
  w.u8(static_cast<uint8_t>(type));
  return std::move(w.data());
}

std::vector<uint8_t> frameBytes(FrameType type, const std::vector<uint8_t>& body) {
  std::vector<uint8_t> out = encodeFrameHeader(type, body.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Result<FrameHeader> decodeFrameHeader(std::span<const uint8_t, kFrameHeaderSize> header,
                                      size_t trailer) {
  WireReader r(header);
  uint32_t len = r.u32();
  uint8_t type = r.u8();
  ZCX_RETURN_IF_ERROR(checkFrameHeader(len, type, trailer));
  return FrameHeader{static_cast<FrameType>(type), len - 1};
}

Status writeFrame(int fd, FrameType type, const std::vector<uint8_t>& body,
                  Clock::time_point deadline, FrameMac* mac) {
  if (mac == nullptr) return writeAll(fd, frameBytes(type, body), deadline);
  std::vector<uint8_t> sealed = body;
  ZCX_RETURN_IF_ERROR(mac->seal(type, sealed));
  return writeAll(fd, frameBytes(type, sealed), deadline);
}

Result<Frame> readFrame(int fd, Clock::time_point deadline, FrameMac* mac) {
  uint8_t header[kFrameHeaderSize];
  ZCX_RETURN_IF_ERROR(readAll(fd, header, deadline));
  auto h = decodeFrameHeader(header, mac ? kFrameMacSize : 0);
  if (!h.ok()) return h.status();
  Frame f;
  f.type = h->type;
  f.body.resize(h->body_size);
  ZCX_RETURN_IF_ERROR(readAll(fd, f.body, deadline));
  if (mac) ZCX_RETURN_IF_ERROR(mac->open(f.type, f.body));
  return f;
}

}  // namespace zcx::detail

// RegionDescriptor encoding: "ZCXR" | version | transport | address | length | access | key |
// crc32c.
#include "wire.h"
#include "zcx/memory.h"

namespace zcx {
namespace {
constexpr uint32_t kMagic = 0x5258435a;  // "ZCXR"
constexpr uint8_t kVersion = 1;
constexpr size_t kMaxTransportName = 32;
constexpr size_t kMaxKey = 4096;
}  // namespace

std::vector<uint8_t> RegionDescriptor::encode() const {
  detail::WireWriter w;
  w.u32(kMagic);
  w.u8(kVersion);
  w.str(transport);
  w.u64(address);
  w.u64(length);
  w.u32(access);
  w.bytes(key);
  w.u32(detail::crc32c(w.data()));
  return std::move(w.data());
}

Result<RegionDescriptor> RegionDescriptor::decode(std::span<const uint8_t> bytes) {
  auto bad = [](const std::string& what) {
    return Status(StatusCode::kProtocolError,
                  "region descriptor is malformed (" + what +
                      "); pass the exact bytes RegionDescriptor::encode() produced");
  };
  if (bytes.size() < 4 + 1 + 4) return bad("only " + std::to_string(bytes.size()) + " bytes");
  detail::WireReader r(bytes);
  if (r.u32() != kMagic) return bad("bad magic");
  uint8_t version = r.u8();
  if (version != kVersion) {
    return Status(StatusCode::kVersionMismatch,
                  "region descriptor version " + std::to_string(version) +
                      ", this zcx reads version " + std::to_string(kVersion) +
                      "; use the same zcx version on both sides");
  }
  RegionDescriptor d;
  d.transport = r.str(kMaxTransportName);
  d.address = r.u64();
  d.length = r.u64();
  d.access = r.u32();
  d.key = r.bytes(kMaxKey);
  size_t body = r.position();
  uint32_t crc = r.u32();
  if (!r.ok()) return bad("truncated");
  if (r.remaining() != 0) return bad(std::to_string(r.remaining()) + " trailing bytes");
  if (crc != detail::crc32c(bytes.subspan(0, body))) return bad("checksum mismatch");
  if (d.access > kRemoteReadWrite) return bad("unknown access bits");
  if (d.address + d.length < d.address) return bad("range wraps around");
  return d;
}

}  // namespace zcx

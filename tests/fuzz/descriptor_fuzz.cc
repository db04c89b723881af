// RegionDescriptor::decode: bytes from a peer (LOOKUP_REPLY, HELLO) or from any user channel.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.h"
#include "zcx/memory.h"

using namespace zcx;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  auto d = RegionDescriptor::decode(in);
  if (!d.ok()) {
    FUZZ_CHECK(d.status().code() == StatusCode::kProtocolError ||
               d.status().code() == StatusCode::kVersionMismatch);
    return 0;
  }
  FUZZ_CHECK(d->access <= kRemoteReadWrite);
  FUZZ_CHECK(d->address + d->length >= d->address);
  // The checksum covers every field, so exactly one byte string encodes a descriptor.
  const auto again = d->encode();
  FUZZ_CHECK(std::vector<uint8_t>(in.begin(), in.end()) == again);
  auto d2 = RegionDescriptor::decode(again);
  FUZZ_CHECK(d2.ok());
  FUZZ_CHECK(d2->transport == d->transport && d2->address == d->address &&
             d2->length == d->length && d2->access == d->access && d2->key == d->key);
  return 0;
}

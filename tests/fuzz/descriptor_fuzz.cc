// RegionDescriptor::decode: bytes from a peer (LOOKUP_REPLY, HELLO) or from any user channel.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.h"
#include "wire.h"
#include "zcx/memory.h"

using namespace zcx;

namespace {
void check(std::span<const uint8_t> in) {
  auto d = RegionDescriptor::decode(in);
  if (!d.ok()) {
    FUZZ_CHECK(d.status().code() == StatusCode::kProtocolError ||
               d.status().code() == StatusCode::kVersionMismatch);
    return;
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
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check({data, size});
  // Mutations almost never keep the checksum right; a second pass with the trailing crc32c
  // recomputed lets the fuzzer reach the checks behind it (access bits, range, trailing bytes).
  if (size >= 4) {
    std::vector<uint8_t> fixed(data, data + size);
    const uint32_t crc = detail::crc32c(std::span<const uint8_t>(fixed).first(size - 4));
    for (int i = 0; i < 4; ++i) fixed[size - 4 + i] = static_cast<uint8_t>(crc >> (8 * i));
    check(fixed);
  }
  return 0;
}

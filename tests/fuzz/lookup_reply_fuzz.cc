// LOOKUP_REPLY bodies (decodeLookupReply): the answer a requester matches to its pending lookup.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "control_protocol.h"
#include "fuzz_check.h"

using namespace zcx;
using namespace zcx::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> body(data, data + size);
  auto l = decodeLookupReply(body);
  if (!l.ok()) {
    FUZZ_CHECK(l.status().code() == StatusCode::kProtocolError);
    return 0;
  }
  // Canonical except the `found` byte, which reads any non-zero value as true.
  auto expected = body;
  FUZZ_CHECK(expected.size() > 8);
  expected[8] = expected[8] != 0 ? 1 : 0;
  FUZZ_CHECK(encode(*l) == expected);
  auto l2 = decodeLookupReply(encode(*l));
  FUZZ_CHECK(l2.ok());
  FUZZ_CHECK(l2->id == l->id && l2->found == l->found && l2->descriptor == l->descriptor);
  return 0;
}

// LOOKUP bodies (decodeLookup): a peer asking for an exposed region by name.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "control_protocol.h"
#include "fuzz_check.h"

using namespace zcx;
using namespace zcx::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> body(data, data + size);
  auto l = decodeLookup(body);
  if (!l.ok()) {
    FUZZ_CHECK(l.status().code() == StatusCode::kProtocolError);
    return 0;
  }
  // Every field is exact, so the encoding is canonical.
  FUZZ_CHECK(encode(*l) == body);
  auto l2 = decodeLookup(encode(*l));
  FUZZ_CHECK(l2.ok());
  FUZZ_CHECK(l2->id == l->id && l2->name == l->name);
  return 0;
}

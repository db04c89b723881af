// HELLO bodies (decodeHello): the first bytes a server reads from anyone who connects.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "control_protocol.h"
#include "fuzz_check.h"

using namespace zcx;
using namespace zcx::detail;

namespace {
bool same(const Hello& a, const Hello& b) {
  return a.version == b.version && a.name == b.name && a.transport == b.transport &&
         a.token == b.token && a.max_message_size == b.max_message_size && a.address == b.address &&
         a.regions == b.regions;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> body(data, data + size);
  auto h = decodeHello(body);
  if (!h.ok()) {
    FUZZ_CHECK(h.status().code() == StatusCode::kProtocolError ||
               h.status().code() == StatusCode::kVersionMismatch);
    return 0;
  }
  FUZZ_CHECK(h->version == kProtocolVersion);
  const auto again = encode(*h);
  // Regions may arrive in any order (the encoder sorts them), so the bytes can differ; their
  // count cannot: a shorter re-encoding means the decoder dropped something the peer sent.
  FUZZ_CHECK(again.size() == body.size());
  auto h2 = decodeHello(again);
  FUZZ_CHECK(h2.ok());
  FUZZ_CHECK(same(*h2, *h));
  return 0;
}

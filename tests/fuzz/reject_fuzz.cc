// REJECT bodies (decodeReject): the client turns one into the Status its connect() returns.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "control_protocol.h"
#include "fuzz_check.h"

using namespace zcx;
using namespace zcx::detail;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> body(data, data + size);
  auto r = decodeReject(body);
  if (!r.ok()) {
    FUZZ_CHECK(r.status().code() == StatusCode::kProtocolError);
    return 0;
  }
  // The engine returns Status(code, reason) as the failure of the handshake: it must be an error.
  FUZZ_CHECK(!Status(static_cast<StatusCode>(r->code), r->reason).ok());
  // REJECT tolerates trailing bytes (it must stay readable across versions): the re-encoding is
  // a prefix of the input.
  const auto again = encode(*r);
  FUZZ_CHECK(again.size() <= body.size());
  FUZZ_CHECK(std::equal(again.begin(), again.end(), body.begin()));
  auto r2 = decodeReject(again);
  FUZZ_CHECK(r2.ok());
  FUZZ_CHECK(r2->code == r->code && r2->reason == r->reason);
  return 0;
}

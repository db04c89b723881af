// The UCX transport's framing of packed remote keys and worker addresses (unframeKey,
// unframeAddress): UCX trusts whatever they let through.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.h"
#include "ucx/ucx_key_format.h"

using namespace zcx;
using namespace zcx::transport::ucx;

namespace {
// What passes the check must be the input minus its header, and framing it again must give the
// input back (length and checksum are functions of the body).
void checkUnframed(const Result<std::span<const uint8_t>>& r, std::span<const uint8_t> in,
                   std::vector<uint8_t> (*frame)(std::span<const uint8_t>)) {
  if (!r.ok()) {
    FUZZ_CHECK(r.status().code() == StatusCode::kProtocolError);
    return;
  }
  FUZZ_CHECK(!r->empty());
  FUZZ_CHECK(r->data() >= in.data() && r->data() + r->size() == in.data() + in.size());
  FUZZ_CHECK(frame(*r) == std::vector<uint8_t>(in.begin(), in.end()));
}

void check(std::span<const uint8_t> in) {
  auto key = unframeKey(in);
  auto address = unframeAddress(in);
  // The magics differ: a key can never be taken for an address or the other way round.
  FUZZ_CHECK(!(key.ok() && address.ok()));
  checkUnframed(key, in, frameKey);
  checkUnframed(address, in, frameAddress);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check({data, size});
  // Mutations almost never keep length and checksum right: a second pass with both recomputed
  // (and the fuzzed magic kept) reaches the paths behind them.
  if (size >= 16) {
    std::vector<uint8_t> fixed(data, data + size);
    const auto framed = frameKey(std::span<const uint8_t>(fixed).subspan(16));
    std::copy(framed.begin() + 4, framed.begin() + 16, fixed.begin() + 4);
    check(fixed);
  }
  return 0;
}

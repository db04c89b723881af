// The verbs transport's wire formats: the transport address from HELLO (unpackAddress), the
// rdma_cm private data of connect/accept (unpackConnectData) and packed remote keys (decodeKey).
#include <arpa/inet.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_check.h"
#include "verbs/verbs_wire.h"

using namespace zcx;
using namespace zcx::transport::verbs;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  const std::vector<uint8_t> bytes(in.begin(), in.end());

  auto a = unpackAddress(in);
  if (a.ok()) {
    FUZZ_CHECK(a->sin_family == AF_INET);
    FUZZ_CHECK(packAddress(*a) == bytes);  // fixed size, every byte meaningful
  }

  // rdma_cm hands over private data zero-padded to its own length: only our 24 bytes count.
  auto c = unpackConnectData(data, size);
  FUZZ_CHECK(!unpackConnectData(nullptr, size).ok());
  if (c.ok()) {
    FUZZ_CHECK(size >= kConnectDataSize);
    const auto packed = packConnectData(*c);
    FUZZ_CHECK(packed.size() == kConnectDataSize);
    auto c2 = unpackConnectData(packed.data(), packed.size());
    FUZZ_CHECK(c2.ok());
    FUZZ_CHECK(c2->token == c->token && c2->max_message_size == c->max_message_size);
    // The fields sit where the packer puts them (magic, version, token, size).
    FUZZ_CHECK(std::equal(packed.begin(), packed.begin() + 4, bytes.begin()));
    FUZZ_CHECK(std::equal(packed.begin() + 8, packed.begin() + 20, bytes.begin() + 8));
  }

  auto k = decodeKey(in);
  if (k.ok()) {
    FUZZ_CHECK(k->length != 0 && k->addr + k->length > k->addr);
    FUZZ_CHECK(packKey(k->rkey, k->addr, k->length) == bytes);
  } else {
    FUZZ_CHECK(k.status().code() == StatusCode::kProtocolError);
  }
  return 0;
}

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
    FUZZ_CHECK(a->family() == AF_INET || a->family() == AF_INET6);
    FUZZ_CHECK(a->scopeId() == 0);  // a scope is local to a host, never taken from a peer
    const auto packed = packAddress(*a);
    // Fixed sizes, every byte meaningful: the packer's own encodings come back byte for byte
    // (IPv4 as version 1, IPv6 as version 2); version 2 with IPv4 means the same address.
    if (bytes[3] == 1 || a->family() == AF_INET6) FUZZ_CHECK(packed == bytes);
    auto again = unpackAddress(packed);
    FUZZ_CHECK(again.ok() && again->toString() == a->toString());
  } else {
    FUZZ_CHECK(a.status().code() == StatusCode::kProtocolError ||
               a.status().code() == StatusCode::kVersionMismatch);
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

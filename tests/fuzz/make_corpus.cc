// Writes the seed corpus (tests/fuzz/corpus/<target>/) from the real encoders, so the seeds stay
// valid when a format changes: make_corpus <corpus dir>. The output is checked in.
#include <arpa/inet.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "auth.h"
#include "control_protocol.h"
#include "ucx/ucx_key_format.h"
#include "verbs/verbs_wire.h"
#include "zcx/memory.h"

using namespace zcx;
using namespace zcx::detail;
namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {
fs::path root;

void put(const std::string& target, const std::string& name, const Bytes& bytes) {
  fs::create_directories(root / target);
  std::ofstream out(root / target / name, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

Bytes frame(FrameType type, const Bytes& body) {
  Bytes out = encodeFrameHeader(type, body.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes cat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  root = argv[1];

  RegionDescriptor ucx_desc{"ucx", 0x7f0000001000, 4096, kRemoteReadWrite, Bytes{1, 2, 3, 4}};
  RegionDescriptor verbs_desc{"verbs", 0x10000, 1 << 20, kRemoteRead,
                              transport::verbs::packKey(0x1234, 0x10000, 1 << 20)};
  RegionDescriptor local_desc{"ucx", 0x2000, 64, kLocalOnly, {}};
  put("descriptor", "ucx", ucx_desc.encode());
  put("descriptor", "verbs", verbs_desc.encode());
  put("descriptor", "local", local_desc.encode());

  Hello empty;
  empty.name = "a";
  empty.transport = "ucx";
  Hello full;
  full.name = "server";
  full.transport = "verbs";
  full.token = 0x0123456789abcdef;
  full.max_message_size = 1 << 20;
  in_addr ip4{};
  ip4.s_addr = htonl(0x0a000001);
  const auto sa = transport::verbs::CmAddress::ipv4(ip4, 18515);
  in6_addr ip6{};
  ip6.s6_addr[0] = 0xfd;
  ip6.s6_addr[15] = 1;
  const auto sa6 = transport::verbs::CmAddress::ipv6(ip6, 18515);
  full.address = transport::verbs::packAddress(sa);
  full.regions["buf"] = verbs_desc.encode();
  full.regions["ro"] = local_desc.encode();
  put("hello", "minimal", encode(empty));
  put("hello", "regions", encode(full));

  Reject reject{static_cast<uint8_t>(StatusCode::kVersionMismatch), "peer uses transport 'ucx'"};
  put("reject", "version", encode(reject));
  put("reject", "empty_reason", encode(Reject{static_cast<uint8_t>(StatusCode::kInternal), ""}));

  put("lookup", "name", encode(Lookup{7, "buf"}));
  put("lookup", "empty", encode(Lookup{0, ""}));

  put("lookup_reply", "found", encode(LookupReply{7, true, ucx_desc.encode()}));
  put("lookup_reply", "missing", encode(LookupReply{8, false, {}}));

  put("control_frame", "hello_ready",
      cat(frame(FrameType::kHello, encode(full)), frame(FrameType::kReady, {})));
  put("control_frame", "reject", frame(FrameType::kReject, encode(reject)));
  put("control_frame", "lookups",
      cat(cat(frame(FrameType::kLookup, encode(Lookup{1, "buf"})),
              frame(FrameType::kLookupReply, encode(LookupReply{1, true, ucx_desc.encode()}))),
          frame(FrameType::kBye, {})));

  // auth_frames: a type byte, then the body (auth_frames_fuzz.cc).
  AuthNonce nonce_c{}, nonce_s{};
  for (size_t i = 0; i < nonce_c.size(); ++i) {
    nonce_c[i] = static_cast<uint8_t>(i);
    nonce_s[i] = static_cast<uint8_t>(0xff - i);
  }
  const SecretBytes secret(Bytes{'s', 'e', 'e', 'd', '-', 's', 'e', 'c', 'r', 'e', 't'});
  const AuthMac server_proof = *serverProof(secret, nonce_c, nonce_s);
  const AuthMac client_proof = *clientProof(secret, nonce_c, nonce_s);
  auto typed = [](FrameType t, Bytes body) {
    body.insert(body.begin(), static_cast<uint8_t>(static_cast<uint8_t>(t) - 1));
    return body;
  };
  const Bytes init = encode(AuthInit{kProtocolVersion, nonce_c});
  const Bytes challenge = encode(AuthChallenge{nonce_s, server_proof});
  const Bytes proof = encode(AuthProof{client_proof});
  put("auth_frames", "init", typed(FrameType::kAuthInit, init));
  put("auth_frames", "challenge", typed(FrameType::kAuthChallenge, challenge));
  put("auth_frames", "proof", typed(FrameType::kAuthProof, proof));
  FrameMac fuzz_mac(SecretBytes(Bytes(32, 0x5a)), AuthDirection::kClientToServer);
  Bytes sealed_lookup = encode(Lookup{1, "buf"});
  (void)fuzz_mac.seal(FrameType::kLookup, sealed_lookup);
  put("auth_frames", "sealed_lookup", typed(FrameType::kLookup, sealed_lookup));
  put("control_frame", "auth",
      cat(cat(frame(FrameType::kAuthInit, init), frame(FrameType::kAuthChallenge, challenge)),
          frame(FrameType::kAuthProof, proof)));

  const Bytes ucx_key{0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80};
  const Bytes ucx_addr(40, 0xa5);
  put("ucx_frame", "key", transport::ucx::frameKey(ucx_key));
  put("ucx_frame", "address", transport::ucx::frameAddress(ucx_addr));

  put("verbs_wire", "address", transport::verbs::packAddress(sa));
  put("verbs_wire", "address_ipv6", transport::verbs::packAddress(sa6));
  put("verbs_wire", "connect_data", transport::verbs::packConnectData({0xfeedface, 65536}));
  Bytes padded = transport::verbs::packConnectData({42, 4096});
  padded.resize(56, 0);  // RC private data as rdma_cm delivers it
  put("verbs_wire", "connect_data_padded", padded);
  put("verbs_wire", "key", transport::verbs::packKey(0xabcd, 0x7f0000000000, 8192));
  return 0;
}

// Unit tests of the verbs transport that need no RDMA device (they run on every host): the
// transport address exchanged with peers (packAddress/unpackAddress, IPv4 and IPv6, old and new
// versions, hostile bytes) and the GID choice (pickGid: type, family, bind host, gid_index).
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "verbs/verbs_device.h"
#include "verbs/verbs_wire.h"

namespace zcx::transport::verbs {
namespace {

CmAddress addr(const std::string& host, uint16_t port = 0) {
  auto a = CmAddress::parse(host);
  EXPECT_TRUE(a.has_value()) << host;
  CmAddress r = a.value_or(CmAddress());
  r.setPort(port);
  return r;
}

// ---------------------------------------------------------------- addresses

TEST(VerbsAddress, ParsesNumericIpv4AndIpv6AndNothingElse) {
  EXPECT_EQ(addr("10.11.0.1").family(), AF_INET);
  EXPECT_EQ(addr("fd00::1").family(), AF_INET6);
  EXPECT_EQ(addr("[fd00::1]").host(), "fd00::1");
  EXPECT_TRUE(addr("fe80::1").isLinkLocal());
  EXPECT_FALSE(addr("fd00::1").isLinkLocal());
  EXPECT_FALSE(addr("10.0.0.1").isLinkLocal());
  for (const char* bad : {"", "rxe0", "localhost", "10.0.0", "[10.0.0.1]", "fd00::1%eth0", "[]"}) {
    EXPECT_FALSE(CmAddress::parse(bad).has_value()) << bad;
  }
  EXPECT_EQ(addr("10.11.0.1", 4791).toString(), "10.11.0.1:4791");
  EXPECT_EQ(addr("fd00::1", 4791).toString(), "[fd00::1]:4791");
  EXPECT_EQ(addr("fd00::1").familyName(), "IPv6");
  EXPECT_EQ(addr("fe80::1").familyName(), "IPv6 link-local");
  EXPECT_TRUE(addr("fd00::1", 1).sameHost(addr("fd00::1", 2)));
  EXPECT_FALSE(addr("fd00::1").sameHost(addr("fd00::2")));
  EXPECT_FALSE(addr("0.0.0.1").sameHost(addr("::1")));
  EXPECT_FALSE(CmAddress().sameHost(CmAddress()));
}

TEST(VerbsAddress, Ipv4PacksAsVersion1WhichOlderPeersRead) {
  const std::vector<uint8_t> bytes = packAddress(addr("10.11.0.1", 0x1234));
  const std::vector<uint8_t> v1 = {'Z', 'V', 'A', 1, 10, 11, 0, 1, 0x12, 0x34};
  EXPECT_EQ(bytes, v1);  // the format of zcx before IPv6: older peers keep working
  auto back = unpackAddress(v1);
  ASSERT_TRUE(back.ok()) << back.status().toString();
  EXPECT_EQ(back->family(), AF_INET);
  EXPECT_EQ(back->toString(), "10.11.0.1:4660");
}

TEST(VerbsAddress, Ipv6PacksAsVersion2WithItsFamily) {
  const std::vector<uint8_t> bytes = packAddress(addr("fd00::1:2", 18515));
  std::vector<uint8_t> want = {'Z', 'V', 'A', 2, 6, 0x48, 0x53, 0xfd, 0};
  want.resize(7 + 16, 0);
  want[7 + 13] = 1;
  want[7 + 15] = 2;
  EXPECT_EQ(bytes, want);
  auto back = unpackAddress(bytes);
  ASSERT_TRUE(back.ok()) << back.status().toString();
  EXPECT_EQ(back->family(), AF_INET6);
  EXPECT_EQ(back->toString(), "[fd00::1:2]:18515");
  EXPECT_EQ(back->scopeId(), 0u);  // a scope is local to a host: never on the wire
  // Version 2 may carry IPv4 too (11 bytes).
  auto v2v4 = unpackAddress(std::vector<uint8_t>{'Z', 'V', 'A', 2, 4, 0, 80, 192, 168, 0, 9});
  ASSERT_TRUE(v2v4.ok()) << v2v4.status().toString();
  EXPECT_EQ(v2v4->toString(), "192.168.0.9:80");
  EXPECT_TRUE(packAddress(CmAddress()).empty());
}

TEST(VerbsAddress, HostileBytesAreRefusedByLengthFamilyVersionAndMagic) {
  const std::vector<uint8_t> v4 = packAddress(addr("10.0.0.1", 1));
  const std::vector<uint8_t> v6 = packAddress(addr("fd00::1", 1));
  const std::vector<uint8_t> v2v4 = {'Z', 'V', 'A', 2, 4, 0, 1, 10, 0, 0, 1};
  for (const auto& good : {v4, v6, v2v4}) {
    ASSERT_TRUE(unpackAddress(good).ok());
    // Every shorter and longer length.
    for (size_t n = 0; n < good.size() + 8; ++n) {
      if (n == good.size()) continue;
      std::vector<uint8_t> b(good);
      b.resize(n, 0);
      auto r = unpackAddress(b);
      ASSERT_FALSE(r.ok()) << n << " bytes accepted";
      EXPECT_EQ(r.status().code(), StatusCode::kProtocolError) << r.status().toString();
    }
    std::vector<uint8_t> magic(good);
    magic[1] = 'X';
    EXPECT_EQ(unpackAddress(magic).status().code(), StatusCode::kProtocolError);
  }
  for (uint8_t family : {0, 1, 2, 5, 10, 23, 41, 255}) {
    std::vector<uint8_t> b(v6);
    b[4] = family;
    auto r = unpackAddress(b);
    ASSERT_FALSE(r.ok()) << "family " << int{family};
    EXPECT_EQ(r.status().code(), StatusCode::kProtocolError);
    EXPECT_NE(r.status().message().find("unknown address family"), std::string::npos)
        << r.status().toString();
  }
  // An IPv6 length with the IPv4 family and the other way round.
  std::vector<uint8_t> mixed(v6);
  mixed[4] = 4;
  EXPECT_EQ(unpackAddress(mixed).status().code(), StatusCode::kProtocolError);
  std::vector<uint8_t> mixed2(v2v4);
  mixed2[4] = 6;
  EXPECT_EQ(unpackAddress(mixed2).status().code(), StatusCode::kProtocolError);
  for (uint8_t version : {0, 3, 9, 255}) {
    std::vector<uint8_t> b(v6);
    b[3] = version;
    auto r = unpackAddress(b);
    EXPECT_EQ(r.status().code(), StatusCode::kVersionMismatch) << r.status().toString();
  }
}

TEST(VerbsAddress, RandomBytesNeverCrashAndWhatIsAcceptedRoundTrips) {
  std::mt19937 rng(12345);
  int accepted = 0;
  for (int i = 0; i < 200000; ++i) {
    std::vector<uint8_t> b(rng() % 26);
    for (auto& x : b) x = static_cast<uint8_t>(rng());
    // Mostly well-formed headers, so the deeper checks are reached.
    if (b.size() >= 5 && rng() % 4 != 0) {
      b[0] = 'Z';
      b[1] = 'V';
      b[2] = 'A';
      b[3] = static_cast<uint8_t>(1 + rng() % 2);
      b[4] = rng() % 2 ? 4 : 6;
    }
    auto r = unpackAddress(b);
    if (!r.ok()) continue;
    ++accepted;
    ASSERT_TRUE(r->family() == AF_INET || r->family() == AF_INET6);
    auto again = unpackAddress(packAddress(*r));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->toString(), r->toString());
  }
  EXPECT_GT(accepted, 100);  // the generator does reach the accepting paths
}

// ---------------------------------------------------------------- choosing a GID

GidCandidate gid(int index, GidType type, const std::string& ip, size_t device = 0) {
  GidCandidate c;
  c.device = device;
  c.device_name = "dev" + std::to_string(device);
  c.port = 1;
  c.index = index;
  c.type = type;
  c.netdev = "eth" + std::to_string(device);
  if (!ip.empty()) c.ip = addr(ip);
  if (c.ip.isLinkLocal()) c.ip.setScopeId(7);
  return c;
}

/// What rxe0 shows with an IPv4 and an IPv6 address on its netdev (RoCE v2 only).
std::vector<GidCandidate> rxeTable() {
  return {gid(0, GidType::kRoceV2, "fe80::4881:3fff:fec2:3c40"),
          gid(1, GidType::kRoceV2, "10.11.0.1"), gid(2, GidType::kRoceV2, "fd00::1")};
}

/// A ConnectX-style RoCE port: v1 and v2 entries for every address.
std::vector<GidCandidate> dualTable(GidType cm_type) {
  std::vector<GidCandidate> t = {
      gid(0, GidType::kRoceV1, "fe80::1"),  gid(1, GidType::kRoceV2, "fe80::1"),
      gid(2, GidType::kRoceV1, "fd00::5"),  gid(3, GidType::kRoceV2, "fd00::5"),
      gid(4, GidType::kRoceV1, "10.0.0.5"), gid(5, GidType::kRoceV2, "10.0.0.5")};
  for (auto& c : t) {
    c.cm_roce_type = cm_type;
    c.cm_roce_type_configured = cm_type == GidType::kRoceV1;
  }
  return t;
}

int chosen(const std::vector<GidCandidate>& t, const std::string& bind_host = "", int pinned = -1) {
  auto p = pickGid(t, bind_host, pinned);
  EXPECT_TRUE(p.ok()) << p.status().toString();
  return p.ok() ? t[p->chosen].index : -1;
}

TEST(VerbsGidChoice, PreferenceOrderIsV2Ipv4ThenV2Ipv6ThenLinkLocal) {
  auto t = rxeTable();
  auto p = pickGid(t, "", -1);
  ASSERT_TRUE(p.ok()) << p.status().toString();
  EXPECT_EQ(t[p->chosen].index, 1);
  // The log line says which, why, and what else there was.
  EXPECT_NE(p->reason.find("dev0 port 1 gid 1 (RoCE v2 IPv4 10.11.0.1 on eth0)"), std::string::npos)
      << p->reason;
  EXPECT_NE(p->reason.find("first by preference"), std::string::npos) << p->reason;
  EXPECT_NE(p->reason.find("also usable: dev0 port 1 gid 2 (RoCE v2 IPv6 fd00::1"),
            std::string::npos)
      << p->reason;
  t.erase(t.begin() + 1);  // an IPv6-only fabric
  EXPECT_EQ(chosen(t), 2);
  t.erase(t.begin() + 1);  // only the link-local default GID is left
  EXPECT_EQ(chosen(t), 0);
}

TEST(VerbsGidChoice, BindHostPicksItsGidInEitherFamily) {
  auto t = rxeTable();
  EXPECT_EQ(chosen(t, "fd00::1"), 2);
  EXPECT_EQ(chosen(t, "[fd00::1]"), 2);
  EXPECT_EQ(chosen(t, "10.11.0.1"), 1);
  auto p = pickGid(t, "fd00::1", -1);
  ASSERT_TRUE(p.ok());
  EXPECT_NE(p->reason.find("bind host fd00::1 is its address"), std::string::npos) << p->reason;
  // Not a GID's address (loopback, wildcard, a name): the preference decides, and says so.
  for (const char* other : {"127.0.0.1", "0.0.0.0", "::", "fd00::99", "node1"}) {
    auto q = pickGid(t, other, -1);
    ASSERT_TRUE(q.ok());
    EXPECT_EQ(t[q->chosen].index, 1) << other;
  }
  auto q = pickGid(t, "fd00::99", -1);
  EXPECT_NE(q->reason.find("bind host fd00::99 is not the address of a usable GID"),
            std::string::npos)
      << q->reason;
}

TEST(VerbsGidChoice, GidIndexPinsAnyUsableEntryAndExplainsAnEmptyOne) {
  auto t = rxeTable();
  EXPECT_EQ(chosen(t, "", 0), 0);
  EXPECT_EQ(chosen(t, "", 2), 2);
  EXPECT_EQ(chosen(t, "10.11.0.1", 2), 2);  // the pin wins over the bind host
  auto p = pickGid(t, "", 2);
  EXPECT_NE(p->reason.find("gid_index 2 was asked for"), std::string::npos) << p->reason;
  auto empty = pickGid(t, "", 9);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(empty.status().message().find("gid_index 9 is an empty GID table entry"),
            std::string::npos)
      << empty.status().toString();
}

TEST(VerbsGidChoice, RoceTypeMustBeTheOneRdmaCmUsesOnThePort) {
  // rdma_cm's default is RoCE v2: v1 entries are skipped, and a pinned one is refused with how
  // to switch rdma_cm (configfs) or what to pick instead.
  auto v2 = dualTable(GidType::kRoceV2);
  EXPECT_EQ(chosen(v2), 5);
  EXPECT_EQ(chosen(v2, "fd00::5"), 3);
  auto p = pickGid(v2, "", 4);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kUnavailable);
  const std::string m = p.status().message();
  EXPECT_NE(m.find("gid 4 (RoCE v1 IPv4 10.0.0.5 on eth0): a RoCE v1 GID, but rdma_cm on dev0 "
                   "port 1 uses RoCE v2 (the kernel's default)"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("echo 'IB/RoCE v1' > /sys/kernel/config/rdma_cm/dev0/ports/1/default_roce_mode"),
            std::string::npos)
      << m;
  // With rdma_cm switched to RoCE v1 (default_roce_mode), the v1 entries are the usable ones.
  auto v1 = dualTable(GidType::kRoceV1);
  EXPECT_EQ(chosen(v1), 4);
  EXPECT_EQ(chosen(v1, "", 4), 4);
  EXPECT_EQ(chosen(v1, "fd00::5"), 2);
  auto q = pickGid(v1, "", 5);
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("uses RoCE v1 (configfs default_roce_mode)"),
            std::string::npos)
      << q.status().toString();
}

TEST(VerbsGidChoice, AcrossDevicesTheBetterKindWinsThenTheEarlierDevice) {
  // dev0: RoCE v1 only (rdma_cm switched to v1); dev1: RoCE v2 IPv6; dev2: RoCE v2 IPv4.
  GidCandidate a = gid(0, GidType::kRoceV1, "10.1.0.1", 0);
  a.cm_roce_type = GidType::kRoceV1;
  std::vector<GidCandidate> t = {a, gid(3, GidType::kRoceV2, "fd01::1", 1),
                                 gid(1, GidType::kRoceV2, "10.2.0.1", 2),
                                 gid(2, GidType::kRoceV2, "10.3.0.1", 3)};
  auto p = pickGid(t, "", -1);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(t[p->chosen].device_name, "dev2");  // IPv4 v2, and dev2 comes before dev3
  EXPECT_EQ(chosen({t[0], t[1]}), 3);           // RoCE v2 IPv6 beats RoCE v1 IPv4
  EXPECT_EQ(chosen(t, "10.1.0.1"), 0);          // a bind host reaches any usable one
  EXPECT_EQ(chosen(t, "10.3.0.1"), 2);
}

TEST(VerbsGidChoice, InfinibandNeedsAnIpoibAddress) {
  GidCandidate bare = gid(0, GidType::kIb, "");  // no address on the IPoIB netdev
  auto p = pickGid({bare}, "", -1);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("an InfiniBand GID without an IP address"), std::string::npos)
      << p.status().toString();
  EXPECT_NE(p.status().message().find("IPoIB"), std::string::npos);
  // One candidate per IPoIB address: IPv4 first, then IPv6, link-local last.
  std::vector<GidCandidate> t = {gid(0, GidType::kIb, "fe80::2:c903:1"),
                                 gid(0, GidType::kIb, "fd02::7"),
                                 gid(0, GidType::kIb, "192.168.7.1")};
  auto q = pickGid(t, "", -1);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(t[q->chosen].ip.host(), "192.168.7.1");
  EXPECT_NE(q->reason.find("(IB IPv4 192.168.7.1 on eth0)"), std::string::npos) << q->reason;
  EXPECT_EQ(t[pickGid(t, "fd02::7", -1)->chosen].ip.host(), "fd02::7");
  EXPECT_EQ(t[pickGid({t[0], t[1]}, "", -1)->chosen].ip.host(), "fd02::7");
  // A RoCE GID is preferred to IB (the type order), whatever rdma_cm's RoCE type is.
  EXPECT_EQ(chosen({t[2], gid(4, GidType::kRoceV2, "fd00::1", 1)}), 4);
}

TEST(VerbsGidChoice, NothingUsableSaysWhyForEachGid) {
  GidCandidate unscoped = gid(0, GidType::kRoceV2, "fe80::9");
  unscoped.ip.setScopeId(0);
  auto p = pickGid({unscoped, gid(1, GidType::kIb, "")}, "", -1);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kUnavailable);
  const std::string m = p.status().message();
  EXPECT_NE(m.find("gid 0 (RoCE v2 IPv6 link-local fe80::9 on eth0): a link-local address whose "
                   "network device is unknown"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("gid 1 (IB on eth0): an InfiniBand GID without an IP address"),
            std::string::npos)
      << m;
  EXPECT_FALSE(pickGid({}, "", -1).ok());
}

}  // namespace
}  // namespace zcx::transport::verbs

// Discovery through etcd (EngineOptions::metadata): the strict parsers and the HTTP client
// against hostile servers, then real etcd processes on loopback: one member (publish, connect by
// name, move bytes, unexpose, a killed server's keys expire with its lease) and a 3-member
// cluster that loses a member. The etcd tests skip only when no etcd binary is installed.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "base64.h"
#include "etcd_client.h"
#include "etcd_cluster.h"
#include "json.h"
#include "peer_process.h"
#include "zcx/zcx.h"

namespace zcx::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using detail::EtcdClient;

constexpr const char* kNoEtcd =
    "no etcd binary (install etcd-server: scripts/install-deps.sh, or set ZCX_ETCD)";

long long msSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

EngineOptions options(bool listen, const std::string& metadata = "", const std::string& name = "") {
  EngineOptions o;
  o.transport = "ucx";
  o.transport_params = {{"ucx.tls", "tcp,self"}, {"ucx.net_devices", "lo"}};
  o.listen_address = listen ? "127.0.0.1:0" : "";
  o.connect_timeout = 5s;
  o.metadata = metadata;
  o.name = name;
  return o;
}

std::unique_ptr<EtcdClient> etcdClient(const std::string& url) {
  auto c = EtcdClient::create(url, 3s);
  EXPECT_TRUE(c.ok()) << c.status().toString();
  return c.ok() ? std::move(*c) : nullptr;
}

/// The value of `key`, or nullopt if etcd does not have it (a failed read fails the test).
std::optional<std::string> getKey(EtcdClient& c, const std::string& key) {
  auto r = c.range(key);
  EXPECT_TRUE(r.ok()) << r.status().toString();
  if (!r.ok() || r->kvs.empty()) return std::nullopt;
  return r->kvs[0].value;
}

size_t countPrefix(EtcdClient& c, const std::string& prefix) {
  auto r = c.range(prefix, detail::prefixEnd(prefix));
  EXPECT_TRUE(r.ok()) << r.status().toString();
  return r.ok() ? r->kvs.size() : 0;
}

/// Polls `done` every 20 ms; whether it became true within `limit`.
bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  auto until = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

/// Writes a pattern into the peer's region "buf" (from offset 0, `n` bytes) and reads it back
/// into another buffer: "" if every byte came back, else what differed.
std::string writeAndReadBack(Engine& e, Connection& c, size_t n, uint64_t seed) {
  auto remote = c.remoteRegion("buf");
  if (!remote.ok()) return "remoteRegion: " + remote.status().toString();
  std::vector<uint8_t> out(n), in(n, kPoison);
  fillPattern(out.data(), n, seed);
  auto lo = e.registerMemory(out.data(), n, kLocalOnly);
  auto li = e.registerMemory(in.data(), n, kLocalOnly);
  if (!lo.ok() || !li.ok()) return "registerMemory failed";
  Status w = c.write(*lo, 0, *remote, 0, n).wait(10s);
  if (!w.ok()) return "write: " + w.toString();
  Status r = c.read(*li, 0, *remote, 0, n).wait(10s);
  if (!r.ok()) return "read: " + r.toString();
  return checkPattern(in.data(), n, seed);
}

// ------------------------------------------------------------------ parsers (no etcd needed)

TEST(EtcdJson, ParsesGatewayReplies) {
  auto j = detail::parseJson(
      R"({"header":{"revision":"12"},"kvs":[{"key":"Zm9v","value":"YmFy","lease":"7"}],)"
      R"("count":"1","more":false,"code":5,"s":"a\"\\\/\u00e9\ud83d\ude00"})");
  ASSERT_TRUE(j.ok()) << j.status().toString();
  EXPECT_EQ(j->get("header")->get("revision")->int64(), 12);
  EXPECT_EQ(j->get("code")->int64(), 5);
  EXPECT_FALSE(j->get("more")->boolean());
  EXPECT_EQ(j->get("kvs")->items().size(), 1u);
  EXPECT_EQ(j->get("s")->text(), "a\"\\/\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(j->get("missing"), nullptr);
}

TEST(EtcdJson, RejectsMalformedInput) {
  for (const char* bad :
       {"", "{", "{\"a\":1,}", "{\"a\":1} x", "[1,2", "{\"a\":\"\x01\"}", "{\"a\":\"\\x\"}",
        "{\"a\":\"\\ud800\"}", "{\"a\":1,\"a\":2}", "01x", "-", "1.", "tru", "{a:1}"}) {
    EXPECT_FALSE(detail::parseJson(bad).ok()) << "accepted: " << bad;
  }
  std::string deep(100, '[');
  deep += std::string(100, ']');
  auto d = detail::parseJson(deep);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("deeply"), std::string::npos) << d.status().toString();
  // A short reply of many tiny values is refused, not parsed into 100x its size.
  std::string many = "[0";
  for (int i = 0; i < 200000; ++i) many += ",0";
  many += "]";
  auto m = detail::parseJson(many);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("values"), std::string::npos) << m.status().toString();
  auto big = detail::parseJson("{\"n\":\"99999999999999999999\"}");
  ASSERT_TRUE(big.ok());
  EXPECT_FALSE(big->get("n")->int64().has_value());  // out of int64 range: not a number to use
}

TEST(EtcdBase64, RoundTripsAndIsStrict) {
  std::string bytes;
  for (int i = 0; i < 40; ++i) {
    auto enc = detail::base64Encode(bytes);
    auto dec = detail::base64Decode(enc);
    ASSERT_TRUE(dec.has_value()) << enc;
    EXPECT_EQ(*dec, bytes);
    bytes.push_back(static_cast<char>(i * 37 + 200));
  }
  EXPECT_EQ(detail::base64Encode("foo"), "Zm9v");
  EXPECT_EQ(detail::base64Encode("/zcx/"), "L3pjeC8=");
  for (const char* bad : {"Zm9", "Zm9v!", "Zg=a", "Zh==", "Z===", "Zm 9v", "=Zm9"})
    EXPECT_FALSE(detail::base64Decode(bad).has_value()) << "accepted: " << bad;
}

TEST(EtcdUrl, ParsesMembersAndRejectsTheRest) {
  auto m = detail::parseEtcdUrl("etcd://127.0.0.1:2379,10.0.0.2:2380,[::1]:2381");
  ASSERT_TRUE(m.ok()) << m.status().toString();
  ASSERT_EQ(m->size(), 3u);
  EXPECT_EQ((*m)[1].host, "10.0.0.2");
  EXPECT_EQ((*m)[2].host, "::1");
  EXPECT_EQ((*m)[2].port, 2381);
  for (const char* bad : {"", "http://127.0.0.1:2379", "etcd://", "etcd://host", "etcd://h:0",
                          "etcd://h:1,", "etcd://:1", "etcd://h:1,,h:2", "etcd://h:99999"}) {
    auto r = detail::parseEtcdUrl(bad);
    EXPECT_FALSE(r.ok()) << "accepted: " << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    }
  }
  EXPECT_EQ(detail::prefixEnd("/zcx/"), "/zcx0");
  EXPECT_EQ(detail::prefixEnd("a\xff"), "b");
}

TEST(EtcdOptions, EngineCreateChecksMetadataOptions) {
  const std::string url = "etcd://127.0.0.1:" + std::to_string(freePort());
  auto expectInvalid = [](EngineOptions o, const std::string& mentions) {
    auto e = Engine::create(o);
    ASSERT_FALSE(e.ok());
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument) << e.status().toString();
    EXPECT_NE(e.status().message().find(mentions), std::string::npos) << e.status().toString();
  };
  EngineOptions wildcard = options(true, url, "srv");
  wildcard.listen_address = "0.0.0.0:0";
  expectInvalid(wildcard, "advertise_host");
  expectInvalid(options(true, url, ""), "EngineOptions::name");
  expectInvalid(options(true, url, "host:1"), "cannot be published");
  expectInvalid(options(true, url, "a/b"), "cannot be published");
  EngineOptions ttl = options(true, url, "srv");
  ttl.metadata_lease_ttl = 30s;
  expectInvalid(ttl, "metadata_lease_ttl");
  EngineOptions prefix = options(true, url, "srv");
  prefix.metadata_prefix = "zcx";
  expectInvalid(prefix, "metadata_prefix");
  expectInvalid(options(true, "etcd:/127.0.0.1:2379", "srv"), "etcd URL");
  EngineOptions advertise = options(true);
  advertise.advertise_host = "10.0.0.1";
  expectInvalid(advertise, "set metadata too");
  // Without metadata a name cannot be resolved: the error says how to connect.
  auto plain = Engine::create(options(false));
  ASSERT_TRUE(plain.ok()) << plain.status().toString();
  auto byName = (*plain)->connect("server-a");
  ASSERT_FALSE(byName.ok());
  EXPECT_EQ(byName.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(byName.status().message().find("EngineOptions::metadata"), std::string::npos)
      << byName.status().toString();
}

TEST(EtcdOptions, UnreachableEtcdFailsCreateWithinItsDeadline) {
  const std::string url =
      "etcd://127.0.0.1:" + std::to_string(freePort()) + ",127.0.0.1:" + std::to_string(freePort());
  auto start = Clock::now();
  auto e = Engine::create(options(true, url, "lonely"));
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kUnavailable) << e.status().toString();
  EXPECT_NE(e.status().message().find(url), std::string::npos) << e.status().toString();
  EXPECT_LT(msSince(start), 6000);
  // A client (no listener) starts without etcd, and its lookups fail with the reason.
  auto c = Engine::create(options(false, url));
  ASSERT_TRUE(c.ok()) << c.status().toString();
  auto conn = (*c)->connect("somebody");
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), StatusCode::kUnavailable) << conn.status().toString();
  EXPECT_NE(conn.status().message().find("/zcx/somebody/address"), std::string::npos)
      << conn.status().toString();
}

/// A TCP server on loopback that answers every connection with `reply` (then keeps it open
/// until the test ends, or closes it when `close_after` is set).
class FakeServer {
 public:
  FakeServer(std::string reply, bool close_after) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    ::listen(fd_, 16);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this, reply = std::move(reply), close_after] {
      std::vector<int> open;
      for (;;) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0 || stop_) {
          if (c >= 0) ::close(c);
          break;
        }
        char buf[4096];
        (void)!::recv(c, buf, sizeof(buf), 0);
        (void)!::send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
        if (close_after)
          ::close(c);
        else
          open.push_back(c);
      }
      for (int c : open) ::close(c);
    });
  }
  ~FakeServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "etcd://127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(EtcdClientHostile, BadRepliesAreErrorsWithinTheDeadline) {
  struct Case {
    std::string reply;
    bool close_after;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", false, "larger than the limit"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, "bad chunk size"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\":", true, "closed the connection"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n[1,2,3]", true, "non-object"},
      {"SSH-2.0-OpenSSH\r\n\r\n", true, "not an HTTP response"},
      {"HTTP/1.1 200 OK\r\nX: " + std::string(20000, 'a'), false, "header block too large"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false, "no answer before the deadline"},
      {"HTTP/1.1 200 OK\r\nContent-Length: "
       "43\r\n\r\n{\"kvs\":[{\"key\":\"!!\",\"value\":\"YmFy\"}]}  "
       "     ",
       true, "not base64"},
  };
  for (const Case& c : cases) {
    FakeServer server(c.reply, c.close_after);
    auto client = EtcdClient::create(server.url(), 1s);
    ASSERT_TRUE(client.ok());
    auto start = Clock::now();
    auto r = (*client)->range("/zcx/x/address");
    EXPECT_LT(msSince(start), 3000);
    ASSERT_FALSE(r.ok()) << "accepted: " << c.reply.substr(0, 60);
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos)
        << "want '" << c.expect << "' in: " << r.status().toString();
  }
}

// ------------------------------------------------------------------ one etcd member

TEST(EtcdOneMember, PublishConnectByNameMoveBytesUnexpose) {
  if (etcdBinary().empty()) GTEST_SKIP() << kNoEtcd;
  EtcdCluster etcd(1);
  ASSERT_TRUE(etcd.ok()) << etcd.error();
  auto kv = etcdClient(etcd.url());
  ASSERT_TRUE(kv);

  auto server = Engine::create(options(true, etcd.url(), "server-a"));
  ASSERT_TRUE(server.ok()) << server.status().toString();
  constexpr size_t kSize = 256 * 1024;
  std::vector<uint8_t> target(kSize, kPoison);
  auto region = (*server)->registerMemory(target.data(), kSize, kRemoteReadWrite);
  ASSERT_TRUE(region.ok());
  ASSERT_TRUE((*server)->expose("buf", *region).ok());

  // What the server published.
  EXPECT_EQ(getKey(*kv, "/zcx/server-a/address"), (*server)->listenAddress());
  EXPECT_EQ(getKey(*kv, "/zcx/server-a/regions/buf"), "size=262144 access=rw");
  auto lease = kv->range("/zcx/server-a/address");
  ASSERT_TRUE(lease.ok() && !lease->kvs.empty());
  EXPECT_NE(lease->kvs[0].lease, 0) << "the address must hang on a lease";

  // A second engine cannot take a live engine's name.
  auto twin = Engine::create(options(true, etcd.url(), "server-a"));
  ASSERT_FALSE(twin.ok());
  EXPECT_NE(twin.status().message().find("already published"), std::string::npos)
      << twin.status().toString();
  EXPECT_EQ(getKey(*kv, "/zcx/server-a/address"), (*server)->listenAddress());

  // A client connects by name and moves bytes, both ways.
  auto client = Engine::create(options(false, etcd.url()));
  ASSERT_TRUE(client.ok()) << client.status().toString();
  auto conn = (*client)->connect("server-a");
  ASSERT_TRUE(conn.ok()) << conn.status().toString();
  auto accepted = (*server)->accept(5s);
  ASSERT_TRUE(accepted.ok()) << accepted.status().toString();
  EXPECT_EQ(writeAndReadBack(**client, *conn, kSize, 11), "");
  EXPECT_EQ(checkPattern(target.data(), kSize, 11), "") << "the bytes in the server's memory";

  // "host:port" still connects directly.
  auto direct = (*client)->connect((*server)->listenAddress());
  ASSERT_TRUE(direct.ok()) << direct.status().toString();

  // An unknown name: NotFound, saying which etcd and which key.
  auto missing = (*client)->connect("no-such-engine");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().toString();
  EXPECT_NE(missing.status().message().find(etcd.url()), std::string::npos)
      << missing.status().toString();
  EXPECT_NE(missing.status().message().find("/zcx/no-such-engine/address"), std::string::npos)
      << missing.status().toString();

  // A scoped exposure stays out of etcd; unexpose removes the key.
  ASSERT_TRUE((*server)->expose("scoped", *region, {.access = kRemoteRead, .peers = {"x"}}).ok());
  ASSERT_TRUE((*server)->expose("second", *region, {.access = kRemoteRead, .peers = {}}).ok());
  EXPECT_EQ(getKey(*kv, "/zcx/server-a/regions/second"), "size=262144 access=r");
  EXPECT_EQ(getKey(*kv, "/zcx/server-a/regions/scoped"), std::nullopt);
  (*server)->unexpose("buf");
  EXPECT_TRUE(waitFor([&] { return !getKey(*kv, "/zcx/server-a/regions/buf"); }, 5s))
      << "unexpose left /zcx/server-a/regions/buf in etcd";
  EXPECT_TRUE(getKey(*kv, "/zcx/server-a/regions/second").has_value());

  // Re-exposing a name: an unscoped replacement keeps the key (with the new value); a scoped one
  // takes it out of etcd.
  ASSERT_TRUE((*server)->expose("second", *region).ok());
  std::this_thread::sleep_for(300ms);  // a wrongly queued delete would have run by now
  EXPECT_EQ(getKey(*kv, "/zcx/server-a/regions/second"), "size=262144 access=rw");
  ASSERT_TRUE((*server)->expose("second", *region, {.access = kRemoteRead, .peers = {"x"}}).ok());
  EXPECT_TRUE(waitFor([&] { return !getKey(*kv, "/zcx/server-a/regions/second"); }, 5s))
      << "a scoped replacement left /zcx/server-a/regions/second in etcd";

  // Destroying the engine revokes its lease: every key goes at once.
  *conn = Connection();
  *direct = Connection();
  *accepted = Connection();
  *region = MemoryRegion();
  server->reset();
  EXPECT_EQ(countPrefix(*kv, "/zcx/server-a/"), 0u) << "keys left after the engine was destroyed";
  auto gone = (*client)->connect("server-a");
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.status().code(), StatusCode::kNotFound) << gone.status().toString();
}

TEST(EtcdOneMember, WatchFollowsAnEngineThatMoved) {
  if (etcdBinary().empty()) GTEST_SKIP() << kNoEtcd;
  EtcdCluster etcd(1);
  ASSERT_TRUE(etcd.ok()) << etcd.error();
  auto client = Engine::create(options(false, etcd.url()));
  ASSERT_TRUE(client.ok()) << client.status().toString();
  for (int round = 0; round < 3; ++round) {
    EngineOptions so = options(true, etcd.url(), "mover");
    so.name = "mover";
    auto server = Engine::create(so);
    ASSERT_TRUE(server.ok()) << server.status().toString();
    std::vector<uint8_t> target(4096, kPoison);
    auto region = (*server)->registerMemory(target.data(), target.size(), kRemoteReadWrite);
    ASSERT_TRUE(region.ok());
    ASSERT_TRUE((*server)->expose("buf", *region).ok());
    auto conn = (*client)->connect("mover");
    ASSERT_TRUE(conn.ok()) << "round " << round << ": " << conn.status().toString();
    EXPECT_EQ(writeAndReadBack(**client, *conn, 4096, 20 + round), "");
    EXPECT_EQ(checkPattern(target.data(), 4096, 20 + round), "") << "round " << round;
    *conn = Connection();
    *region = MemoryRegion();
    server->reset();  // the next round's engine listens on another port
  }
}

// A server in its own process, so that the test can SIGKILL it: publishes "victim" with a
// region "buf" holding pattern 5, says "ready ADDRESS", and serves until killed.
ZCX_TEST_PEER(etcdServer) {
  EngineOptions o = options(true, args.at(0), args.at(1));
  o.metadata_lease_ttl = std::chrono::seconds(std::stoi(args.at(2)));
  auto e = Engine::create(o);
  if (!e.ok()) {
    pipe.send("error " + e.status().toString());
    return 1;
  }
  std::vector<uint8_t> mem(65536);
  fillPattern(mem.data(), mem.size(), 5);
  auto r = (*e)->registerMemory(mem.data(), mem.size(), kRemoteReadWrite);
  if (!r.ok() || !(*e)->expose("buf", *r).ok()) {
    pipe.send("error expose");
    return 1;
  }
  pipe.send("ready " + (*e)->listenAddress());
  for (;;) {
    auto c = (*e)->accept(100ms);  // takes connections so they do not pile up
    (void)c;
    if (!pipe.recv(10ms) && ::getppid() == 1) return 0;
  }
}

TEST(EtcdOneMember, KilledServerKeysVanishWithinLeaseTtl) {
  if (etcdBinary().empty()) GTEST_SKIP() << kNoEtcd;
  EtcdCluster etcd(1);
  ASSERT_TRUE(etcd.ok()) << etcd.error();
  auto kv = etcdClient(etcd.url());
  ASSERT_TRUE(kv);
  constexpr int kTtl = 4;
  PeerProcess peer("etcdServer", {etcd.url(), "victim", std::to_string(kTtl)});
  auto line = peer.pipe().recv(30s);
  ASSERT_TRUE(line && line->rfind("ready ", 0) == 0) << (line ? *line : "no answer");
  const std::string address = line->substr(6);
  EXPECT_EQ(getKey(*kv, "/zcx/victim/address"), address);
  EXPECT_EQ(getKey(*kv, "/zcx/victim/regions/buf"), "size=65536 access=rw");

  // It serves: a client reaches it by name and reads its bytes.
  auto client = Engine::create(options(false, etcd.url()));
  ASSERT_TRUE(client.ok()) << client.status().toString();
  {
    auto conn = (*client)->connect("victim");
    ASSERT_TRUE(conn.ok()) << conn.status().toString();
    auto remote = conn->remoteRegion("buf");
    ASSERT_TRUE(remote.ok()) << remote.status().toString();
    std::vector<uint8_t> in(65536, kPoison);
    auto li = (*client)->registerMemory(in.data(), in.size(), kLocalOnly);
    ASSERT_TRUE(li.ok());
    ASSERT_TRUE(conn->read(*li, 0, *remote, 0, in.size()).wait(10s).ok());
    EXPECT_EQ(checkPattern(in.data(), in.size(), 5), "");
  }
  // Kept alive past its TTL while it lives.
  std::this_thread::sleep_for(std::chrono::seconds(kTtl) + 500ms);
  ASSERT_EQ(getKey(*kv, "/zcx/victim/address"), address) << "the lease was not kept alive";

  peer.kill(SIGKILL);
  auto killed = Clock::now();
  EXPECT_EQ(peer.join(5s), 128 + SIGKILL);
  const auto bound = std::chrono::seconds(kTtl) + 2500ms;  // etcd checks expiry every 500 ms
  bool vanished = waitFor([&] { return countPrefix(*kv, "/zcx/victim/") == 0; }, bound + 10s);
  const long long took = msSince(killed);
  std::printf(
      "[ measured ] keys of a SIGKILLed engine (lease TTL %d s) vanished %lld ms after "
      "the kill\n",
      kTtl, took);
  RecordProperty("keys_vanished_ms", std::to_string(took));
  ASSERT_TRUE(vanished) << "keys still there " << took << " ms after the kill";
  EXPECT_LE(took, std::chrono::duration_cast<std::chrono::milliseconds>(bound).count())
      << "keys outlived the lease TTL (" << kTtl << " s) plus slack";
  // Lookups follow: the name is not found any more (the watch saw the deletions).
  EXPECT_TRUE(waitFor(
      [&] {
        auto c = (*client)->connect("victim");
        return !c.ok() && c.status().code() == StatusCode::kNotFound;
      },
      5s));
}

// ------------------------------------------------------------------ three etcd members

/// How the first member is lost: killed (its sockets close), or frozen with SIGSTOP (its sockets
/// stay open and nothing answers: every call to it must run into its deadline).
class EtcdThreeMembers : public ::testing::TestWithParam<int> {};

TEST_P(EtcdThreeMembers, LeaseAndLookupsSurviveTheLossOfAMember) {
  if (etcdBinary().empty()) GTEST_SKIP() << kNoEtcd;
  const int signal = GetParam();
  EtcdCluster etcd(3);
  ASSERT_TRUE(etcd.ok()) << etcd.error();
  constexpr int kTtl = 3;
  EngineOptions so = options(true, etcd.url(), "survivor");
  so.metadata_lease_ttl = std::chrono::seconds(kTtl);
  auto server = Engine::create(so);
  ASSERT_TRUE(server.ok()) << server.status().toString();
  std::vector<uint8_t> target(65536, kPoison);
  auto region = (*server)->registerMemory(target.data(), target.size(), kRemoteReadWrite);
  ASSERT_TRUE(region.ok());
  ASSERT_TRUE((*server)->expose("buf", *region).ok());
  // A client whose watch runs before the loss (on the first member, which everyone tries first).
  auto early = Engine::create(options(false, etcd.url()));
  ASSERT_TRUE(early.ok()) << early.status().toString();
  auto first = (*early)->connect("survivor");
  ASSERT_TRUE(first.ok()) << first.status().toString();

  auto kv0 = etcdClient(etcd.url());
  auto before = kv0->range("/zcx/survivor/address");
  ASSERT_TRUE(before.ok() && before->kvs.size() == 1);
  const int64_t lease = before->kvs[0].lease;

  // The member every client talks to first.
  if (signal == SIGKILL)
    etcd.kill(etcd.members()[0]);
  else
    ASSERT_EQ(::kill(etcd.members()[0].pid, SIGSTOP), 0);
  auto lost = Clock::now();
  // Three TTLs later the lease is still the same one: kept alive through the other members.
  std::this_thread::sleep_for(std::chrono::seconds(3 * kTtl));
  auto kv = etcdClient("etcd://" + etcd.members()[1].client() + "," + etcd.members()[2].client());
  auto after = kv->range("/zcx/survivor/address");
  ASSERT_TRUE(after.ok()) << after.status().toString();
  ASSERT_EQ(after->kvs.size(), 1u) << "the key expired after a member was lost";
  EXPECT_EQ(after->kvs[0].lease, lease) << "the engine had to publish itself again";
  EXPECT_EQ(after->kvs[0].value, (*server)->listenAddress());
  EXPECT_EQ(getKey(*kv, "/zcx/survivor/regions/buf"), "size=65536 access=rw");
  std::printf("[ measured ] lease %lld alive %lld ms after member m0 got %s\n",
              static_cast<long long>(lease), msSince(lost),
              signal == SIGKILL ? "SIGKILL" : "SIGSTOP");

  // Clients still resolve the name: the one from before, and a new one given the dead member
  // first.
  auto again = (*early)->connect("survivor");
  ASSERT_TRUE(again.ok()) << again.status().toString();
  EXPECT_EQ(writeAndReadBack(**early, *again, 65536, 31), "");
  auto late = Engine::create(options(false, etcd.url()));
  ASSERT_TRUE(late.ok()) << late.status().toString();
  auto conn = (*late)->connect("survivor");
  ASSERT_TRUE(conn.ok()) << conn.status().toString();
  EXPECT_EQ(writeAndReadBack(**late, *conn, 65536, 32), "");
  EXPECT_EQ(checkPattern(target.data(), target.size(), 32), "");

  // An engine published after the loss is seen by the client whose watch was on the dead member.
  auto newcomer = Engine::create(options(true, etcd.url(), "newcomer"));
  ASSERT_TRUE(newcomer.ok()) << newcomer.status().toString();
  std::vector<uint8_t> t2(4096, kPoison);
  auto r2 = (*newcomer)->registerMemory(t2.data(), t2.size(), kRemoteReadWrite);
  ASSERT_TRUE(r2.ok());
  ASSERT_TRUE((*newcomer)->expose("buf", *r2).ok());
  auto c2 = (*early)->connect("newcomer");
  ASSERT_TRUE(c2.ok()) << c2.status().toString();
  EXPECT_EQ(writeAndReadBack(**early, *c2, 4096, 33), "");
}

INSTANTIATE_TEST_SUITE_P(MemberLoss, EtcdThreeMembers, ::testing::Values(SIGKILL, SIGSTOP),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return std::string(i.param == SIGKILL ? "Killed" : "Frozen");
                         });

}  // namespace
}  // namespace zcx::test

int main(int argc, char** argv) {
  int peer = zcx::test::runPeerIfAsked(argc, argv);
  if (peer >= 0) return peer;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

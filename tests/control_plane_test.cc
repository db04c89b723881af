// The control plane under hostile and heavy load: idle and trickling sockets, floods of clients,
// oversized frames, limits, keepalive. Engines use UCX over TCP on the loopback, in-process.
#include <arpa/inet.h>
#include <dirent.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "control_protocol.h"
#include "frame_buffer.h"
#include "wire.h"
#include "zcx/zcx.h"

namespace zcx::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

long long msSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

EngineOptions options(bool listen) {
  EngineOptions o;
  o.transport = "ucx";
  o.transport_params = {{"ucx.tls", "tcp,self"}, {"ucx.net_devices", "lo"}};
  o.listen_address = listen ? "127.0.0.1:0" : "";
  o.connect_timeout = 5s;
  return o;
}

std::unique_ptr<Engine> makeEngine(const EngineOptions& o) {
  auto e = Engine::create(o);
  EXPECT_TRUE(e.ok()) << e.status().toString();
  return e.ok() ? std::move(*e) : nullptr;
}

uint16_t portOf(const std::string& host_port) {
  return static_cast<uint16_t>(std::stoi(host_port.substr(host_port.rfind(':') + 1)));
}

/// A plain TCP socket connected to 127.0.0.1:port (not a zcx engine).
int rawConnect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

struct RawSockets {
  std::vector<int> fds;
  ~RawSockets() {
    for (int fd : fds) ::close(fd);
  }
};

/// Local and peer TCP ports of a socket; 0 where there is none.
std::pair<uint16_t, uint16_t> ports(int fd) {
  sockaddr_in local{}, peer{};
  socklen_t len = sizeof(local);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 ||
      local.sin_family != AF_INET)
    return {0, 0};
  len = sizeof(peer);
  uint16_t peer_port = 0;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) == 0)
    peer_port = ntohs(peer.sin_port);
  return {ntohs(local.sin_port), peer_port};
}

/// This process's TCP sockets whose (local, peer) ports satisfy `match`.
template <class Match>
std::vector<int> socketsWhere(Match match) {
  std::vector<int> out;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return out;
  int self = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    int fd = std::atoi(e->d_name);
    if (e->d_name[0] == '.' || fd == self) continue;
    int type = 0;
    socklen_t len = sizeof(type);
    if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) continue;
    auto [local, peer] = ports(fd);
    if (local && match(local, peer)) out.push_back(fd);
  }
  ::closedir(d);
  return out;
}

/// Client-side control sockets to a listener on `port`.
std::vector<int> clientControlSockets(uint16_t port) {
  return socketsWhere([&](uint16_t local, uint16_t peer) { return peer == port && local != port; });
}
/// Server-side control sockets of a listener on `port` (accepted, so they have a peer).
std::vector<int> serverControlSockets(uint16_t port) {
  return socketsWhere([&](uint16_t local, uint16_t peer) { return local == port && peer != 0; });
}

std::vector<uint8_t> frameHeader(uint32_t length, detail::FrameType type) {
  detail::WireWriter w;
  w.u32(length);
  w.u8(static_cast<uint8_t>(type));
  return w.data();
}

void sendAll(int fd, const std::vector<uint8_t>& bytes) {
  ASSERT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(bytes.size()));
}

/// True if the peer closes `fd` (EOF or reset) within `timeout`.
bool closedByPeerWithin(int fd, std::chrono::milliseconds timeout) {
  auto until = Clock::now() + timeout;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    int left = static_cast<int>(std::max<long long>(0, -msSince(until)));
    if (::poll(&p, 1, left) <= 0) return false;
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return true;  // data (e.g. a REJECT) is skipped
  }
}

void raiseFdLimit() {
  rlimit r{};
  ::getrlimit(RLIMIT_NOFILE, &r);
  r.rlim_cur = r.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &r);
}

// ---------------------------------------------------------------- frame reader

TEST(FrameReader, ChecksTheHeaderBeforeReservingTheBody) {
  using detail::FrameType;
  struct Case {
    uint32_t length;
    FrameType type;
    bool ok;
  };
  const Case cases[] = {
      {0xFFFFFFFFu, FrameType::kHello, false},
      {detail::kMaxHelloBody + 2, FrameType::kHello, false},
      {detail::kMaxHelloBody + 1, FrameType::kHello, true},
      {detail::kMaxLookupBody + 2, FrameType::kLookup, false},
      {2, FrameType::kReady, false},
      {2, FrameType::kBye, false},
      {0, FrameType::kBye, false},
      {5, static_cast<FrameType>(77), false},
  };
  for (const Case& c : cases) {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    sendAll(sv[0], frameHeader(c.length, c.type));
    detail::FrameReader reader;
    auto f = reader.read(sv[1]);
    if (c.ok) {
      ASSERT_TRUE(f.ok()) << f.status().toString();
      EXPECT_FALSE(f->has_value());  // the body has not arrived
      EXPECT_TRUE(reader.partial());
      EXPECT_EQ(reader.reserved(), c.length - 1);
    } else {
      EXPECT_EQ(f.status().code(), StatusCode::kProtocolError) << c.length;
      EXPECT_EQ(reader.reserved(), 0u) << c.length;
    }
    ::close(sv[0]);
    ::close(sv[1]);
  }
}

TEST(FrameReader, AssemblesFramesFromSingleBytes) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  auto bytes =
      detail::frameBytes(detail::FrameType::kLookup, detail::encode(detail::Lookup{7, "x"}));
  auto ready = detail::frameBytes(detail::FrameType::kReady, {});
  bytes.insert(bytes.end(), ready.begin(), ready.end());
  detail::FrameReader reader;
  std::vector<detail::Frame> got;
  for (uint8_t b : bytes) {
    ASSERT_EQ(::send(sv[0], &b, 1, 0), 1);
    auto f = reader.read(sv[1]);
    ASSERT_TRUE(f.ok()) << f.status().toString();
    if (f->has_value()) got.push_back(std::move(**f));
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, detail::FrameType::kLookup);
  EXPECT_EQ(detail::decodeLookup(got[0].body)->name, "x");
  EXPECT_EQ(got[1].type, detail::FrameType::kReady);
  auto f = reader.read(sv[1]);  // nothing more: not an error
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->has_value());
  ::close(sv[0]);
  f = reader.read(sv[1]);
  EXPECT_EQ(f.status().code(), StatusCode::kConnectionBroken);
  ::close(sv[1]);
}

TEST(FrameWriter, BoundsWhatAPeerThatDoesNotReadCanPileUp) {
  detail::FrameWriter w;
  std::vector<uint8_t> body(60 * 1024);
  Status s;
  size_t frames = 0;
  while ((s = w.queue(detail::FrameType::kLookupReply, body)).ok()) ++frames;
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_LE(frames * (body.size() + detail::kFrameHeaderSize), detail::FrameWriter::kMaxQueued);
}

TEST(Hello, TooManyRegionsToFitAreLeftToLookups) {
  detail::Hello h;
  h.name = "n";
  h.transport = "ucx";
  h.address.assign(100, 7);
  for (int i = 0; i < 300; ++i) h.regions["r" + std::to_string(i)] = std::vector<uint8_t>(4096);
  ASSERT_GT(detail::encode(h).size(), detail::kMaxHelloBody);
  auto body = detail::encodeBounded(h);
  EXPECT_LE(body.size(), detail::kMaxHelloBody);
  auto back = detail::decodeHello(body);
  ASSERT_TRUE(back.ok()) << back.status().toString();
  EXPECT_TRUE(back->regions.empty());
  EXPECT_EQ(back->address, h.address);
  h.regions.erase(h.regions.begin(), std::next(h.regions.begin(), 290));
  back = detail::decodeHello(detail::encodeBounded(h));  // small enough: sent as it is
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->regions.size(), 10u);
}

// ---------------------------------------------------------------- engines

TEST(ControlPlane, IdleAndTricklingSocketsDoNotDelayARealClient) {
  auto server = makeEngine(options(true));
  auto client = makeEngine(options(false));
  ASSERT_TRUE(server && client);
  uint16_t port = portOf(server->listenAddress());

  // What a connection costs on this machine without any junk around.
  auto start = Clock::now();
  auto warm = client->connect(server->listenAddress());
  ASSERT_TRUE(warm.ok()) << warm.status().toString();
  auto kept1 = server->accept(5s);  // kept open: dropping it closes it
  ASSERT_TRUE(kept1.ok()) << kept1.status().toString();
  long long baseline_ms = msSince(start);

  RawSockets junk;
  for (int i = 0; i < 64; ++i) junk.fds.push_back(rawConnect(port));  // connect, say nothing
  for (int i = 0; i < 8; ++i) {  // one byte of a header, then nothing
    int fd = rawConnect(port);
    junk.fds.push_back(fd);
    ASSERT_EQ(::send(fd, "\x10", 1, MSG_NOSIGNAL), 1);
  }
  ASSERT_EQ(std::count(junk.fds.begin(), junk.fds.end(), -1), 0);
  std::this_thread::sleep_for(50ms);  // the server has taken them all into handshakes

  start = Clock::now();
  auto c = client->connect(server->listenAddress());
  ASSERT_TRUE(c.ok()) << c.status().toString();
  auto a = server->accept(5s);
  long long took_ms = msSince(start);
  ASSERT_TRUE(a.ok()) << a.status().toString();
  std::printf(
      "[ figures  ] connect+accept: %lld ms alone, %lld ms behind 72 idle/trickling "
      "sockets\n",
      baseline_ms, took_ms);
  EXPECT_LT(took_ms, 500) << "the control loop waits on silent sockets";
  EXPECT_TRUE(c->status().ok());
}

TEST(ControlPlane, SilentHandshakesAreClosedAtTheirDeadline) {
  EngineOptions o = options(true);
  o.connect_timeout = 300ms;
  auto server = makeEngine(o);
  ASSERT_TRUE(server);
  RawSockets idle;
  idle.fds.push_back(rawConnect(portOf(server->listenAddress())));
  ASSERT_GE(idle.fds[0], 0);
  auto start = Clock::now();
  EXPECT_TRUE(closedByPeerWithin(idle.fds[0], 3s));
  long long took = msSince(start);
  EXPECT_GE(took, 250);
  EXPECT_LT(took, 1500);
}

// Many clients at once against a server whose handshake slots are fewer than the clients: those
// beyond max_pending_handshakes wait in the listen backlog and are all served, none is refused.
void manyClientsAtOnce(int clients, size_t handshake_slots) {
  raiseFdLimit();
  EngineOptions so = options(true);
  so.connect_timeout = 30s;
  so.max_pending_handshakes = handshake_slots;
  auto server = makeEngine(so);
  ASSERT_TRUE(server);
  constexpr int kEngines = 4;
  EngineOptions co = options(false);
  co.connect_timeout = 30s;
  std::vector<std::unique_ptr<Engine>> engines;
  for (int i = 0; i < kEngines; ++i) {
    engines.push_back(makeEngine(co));
    ASSERT_TRUE(engines.back());
  }

  std::vector<Connection> accepted;
  std::atomic<bool> clients_done{false};
  std::atomic<int> failures{0};
  std::thread acceptor([&] {
    // Until every client has been accepted, or every client has finished and nothing more came.
    while (accepted.size() + failures.load() < static_cast<size_t>(clients)) {
      bool done = clients_done.load();
      auto a = server->accept(done ? 2s : 60s);
      if (!a.ok()) {
        if (done) break;
        continue;
      }
      accepted.push_back(std::move(*a));
    }
  });
  std::atomic<bool> go{false};
  std::vector<Connection> conns(clients);
  std::vector<std::string> errors(clients);
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      while (!go.load()) std::this_thread::yield();
      auto c = engines[i % kEngines]->connect(server->listenAddress());
      if (c.ok()) {
        conns[i] = std::move(*c);
      } else {
        errors[i] = c.status().toString();
        ++failures;
      }
    });
  }
  auto start = Clock::now();
  go = true;
  for (auto& t : threads) t.join();
  long long connected_ms = msSince(start);
  clients_done = true;
  acceptor.join();
  long long accepted_ms = msSince(start);
  std::printf(
      "[ figures  ] %d clients at once, %zu handshake slots: all connected after %lld ms, "
      "accepted after %lld ms\n",
      clients, handshake_slots, connected_ms, accepted_ms);
  EXPECT_EQ(failures.load(), 0) << *std::find_if(errors.begin(), errors.end(),
                                                 [](auto& e) { return !e.empty(); });
  EXPECT_EQ(accepted.size(), static_cast<size_t>(clients));
  for (auto& c : conns) EXPECT_TRUE(c.status().ok());
}

TEST(ControlPlane, FiveHundredClientsAtOnceAreAllAccepted) { manyClientsAtOnce(500, 256); }

TEST(ControlPlane, ClientsBeyondTheHandshakeSlotsWaitInTheBacklogAndAreServed) {
  manyClientsAtOnce(200, 8);
}

TEST(ControlPlane, SilentSocketsHoldingEveryHandshakeSlotGiveWayToARealClient) {
  EngineOptions so = options(true);
  so.max_pending_handshakes = 16;
  so.connect_timeout = 30s;  // the silent sockets would hold their slots this long
  auto server = makeEngine(so);
  auto client = makeEngine(options(false));
  ASSERT_TRUE(server && client);
  RawSockets junk;
  for (int i = 0; i < 40; ++i) junk.fds.push_back(rawConnect(portOf(server->listenAddress())));
  ASSERT_EQ(std::count(junk.fds.begin(), junk.fds.end(), -1), 0);
  std::this_thread::sleep_for(50ms);  // 16 in handshakes, 24 in the backlog ahead of the client

  auto start = Clock::now();
  auto c = client->connect(server->listenAddress());
  ASSERT_TRUE(c.ok()) << c.status().toString();
  auto a = server->accept(10s);
  long long took_ms = msSince(start);
  ASSERT_TRUE(a.ok()) << a.status().toString();
  std::printf("[ figures  ] connect+accept behind 40 silent sockets and 16 slots: %lld ms\n",
              took_ms);
  // Each silent socket gets about a second before it must give way; three rounds of them are
  // ahead of the client (16 + 16 + 8), so it is served in about 3 s, not after connect_timeout.
  EXPECT_LT(took_ms, 8000);
}

TEST(ControlPlane, OversizedFrameHeaderIsRejectedAndTheListenerKeepsServing) {
  auto server = makeEngine(options(true));
  auto client = makeEngine(options(false));
  ASSERT_TRUE(server && client);
  int fd = rawConnect(portOf(server->listenAddress()));
  ASSERT_GE(fd, 0);
  auto start = Clock::now();
  // A HELLO announcing 4 GiB: allocating that would take the server down.
  sendAll(fd, frameHeader(0xFFFFFFFFu, detail::FrameType::kHello));
  auto f = detail::readFrame(fd, detail::Clock::now() + 3s);
  ASSERT_TRUE(f.ok()) << f.status().toString();
  EXPECT_LT(msSince(start), 1000);
  ASSERT_EQ(f->type, detail::FrameType::kReject);
  auto rej = detail::decodeReject(f->body);
  ASSERT_TRUE(rej.ok());
  EXPECT_EQ(static_cast<StatusCode>(rej->code), StatusCode::kProtocolError) << rej->reason;
  EXPECT_NE(rej->reason.find("limit"), std::string::npos) << rej->reason;
  EXPECT_TRUE(closedByPeerWithin(fd, 2s));
  ::close(fd);

  auto c = client->connect(server->listenAddress());
  ASSERT_TRUE(c.ok()) << c.status().toString();
  auto kept7 = server->accept(5s);  // kept open: dropping it closes it
  EXPECT_TRUE(kept7.ok()) << kept7.status().toString();
}

TEST(ControlPlane, RandomBytesNeverHurtTheListener) {
  auto server = makeEngine(options(true));
  auto client = makeEngine(options(false));
  ASSERT_TRUE(server && client);
  uint16_t port = portOf(server->listenAddress());
  std::mt19937 rng(42);
  RawSockets peers;
  for (int i = 0; i < 100; ++i) {
    std::vector<uint8_t> bytes(1 + rng() % 3000);
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    if (i % 3 == 1) {  // a well-formed header in front of garbage
      bytes = detail::frameBytes(detail::FrameType::kHello, bytes);
    } else if (i % 3 == 2) {  // a whole HELLO announced, half of it sent
      auto whole = detail::frameBytes(detail::FrameType::kHello, bytes);
      bytes.assign(whole.begin(), whole.begin() + static_cast<long>(whole.size() / 2));
    }
    int fd = rawConnect(port);
    ASSERT_GE(fd, 0);
    (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (i % 2) {
      ::close(fd);  // half of them hang up at once, the others stay until the end
    } else {
      peers.fds.push_back(fd);
    }
  }
  auto start = Clock::now();
  auto c = client->connect(server->listenAddress());
  ASSERT_TRUE(c.ok()) << c.status().toString();
  auto a = server->accept(5s);
  ASSERT_TRUE(a.ok()) << a.status().toString();
  EXPECT_LT(msSince(start), 500);
  EXPECT_TRUE(c->status().ok());
}

TEST(ControlPlane, OversizedFrameOnAnEstablishedConnectionBreaksOnlyThatConnection) {
  auto server = makeEngine(options(true));
  auto bad = makeEngine(options(false));
  auto good = makeEngine(options(false));
  ASSERT_TRUE(server && bad && good);
  uint16_t port = portOf(server->listenAddress());
  auto b = bad->connect(server->listenAddress());
  ASSERT_TRUE(b.ok()) << b.status().toString();
  auto sb = server->accept(5s);
  ASSERT_TRUE(sb.ok());
  auto fds = clientControlSockets(port);
  ASSERT_EQ(fds.size(), 1u);
  auto g = good->connect(server->listenAddress());
  ASSERT_TRUE(g.ok()) << g.status().toString();
  auto kept2 = server->accept(5s);  // kept open: dropping it closes it
  ASSERT_TRUE(kept2.ok()) << kept2.status().toString();

  sendAll(fds[0], frameHeader(0x7FFFFFFFu, detail::FrameType::kLookup));
  auto until = Clock::now() + 3s;
  while (sb->status().ok() && Clock::now() < until) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(sb->status().code(), StatusCode::kProtocolError) << sb->status().toString();
  auto r = g->remoteRegion("nothing", 2s);
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status().toString();
}

TEST(ControlPlane, TricklingPeerDoesNotDelayLookupsOfAnother) {
  auto server = makeEngine(options(true));
  auto slow = makeEngine(options(false));
  auto fast = makeEngine(options(false));
  ASSERT_TRUE(server && slow && fast);
  uint16_t port = portOf(server->listenAddress());
  auto s = slow->connect(server->listenAddress());
  ASSERT_TRUE(s.ok()) << s.status().toString();
  auto kept3 = server->accept(5s);  // kept open: dropping it closes it
  ASSERT_TRUE(kept3.ok()) << kept3.status().toString();
  auto fds = clientControlSockets(port);  // the slow engine's control socket, only one so far
  ASSERT_EQ(fds.size(), 1u);
  int trickle = fds[0];
  auto f = fast->connect(server->listenAddress());
  ASSERT_TRUE(f.ok()) << f.status().toString();
  auto kept4 = server->accept(5s);  // kept open: dropping it closes it
  ASSERT_TRUE(kept4.ok()) << kept4.status().toString();
  auto buf = server->allocate(4096, kRemoteReadWrite);
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(server->expose("late", *buf).ok());  // after both HELLOs: found by LOOKUP only

  // A LOOKUP from the slow side, one byte at a time, while the fast side looks regions up.
  auto frame =
      detail::frameBytes(detail::FrameType::kLookup, detail::encode(detail::Lookup{999999, "x"}));
  long long worst_ms = 0;
  for (size_t i = 0; i < frame.size(); ++i) {
    ASSERT_EQ(::send(trickle, &frame[i], 1, MSG_NOSIGNAL), 1);
    auto start = Clock::now();
    auto r = f->remoteRegion(i % 2 ? "missing" : "late", 2s);
    worst_ms = std::max(worst_ms, msSince(start));
    if (i % 2)
      EXPECT_EQ(r.status().code(), StatusCode::kNotFound) << r.status().toString();
    else
      EXPECT_TRUE(r.ok()) << r.status().toString();
  }
  std::printf("[ figures  ] slowest lookup while another peer trickles a frame: %lld ms\n",
              worst_ms);
  EXPECT_LT(worst_ms, 500);
  // The trickled frame was understood (its reply, for an id the slow side never used, is
  // dropped there) and the slow side's channel is still in step.
  auto late = s->remoteRegion("late", 2s);
  ASSERT_TRUE(late.ok()) << late.status().toString();
  EXPECT_TRUE(s->status().ok());

  // Both connections still move bytes.
  auto fast_late = f->remoteRegion("late", 2s);
  ASSERT_TRUE(fast_late.ok()) << fast_late.status().toString();
  auto from_slow = slow->allocate(64, kLocalOnly);
  auto from_fast = fast->allocate(64, kLocalOnly);
  ASSERT_TRUE(from_slow.ok() && from_fast.ok());
  std::memset(from_slow->data(), 0x51, 64);
  std::memset(from_fast->data(), 0xFA, 64);
  EXPECT_TRUE(s->write(*from_slow, 0, *late, 0, 64).wait(10s).ok());
  EXPECT_TRUE(f->write(*from_fast, 0, *fast_late, 64, 64).wait(10s).ok());
  EXPECT_EQ(buf->data()[0], 0x51);
  EXPECT_EQ(buf->data()[63], 0x51);
  EXPECT_EQ(buf->data()[64], 0xFA);
  EXPECT_EQ(buf->data()[127], 0xFA);
}

TEST(ControlPlane, KeepaliveIsSetOnControlSocketsOfBothSides) {
  EngineOptions so = options(true);
  so.peer_timeout = 7000ms;
  EngineOptions co = options(false);
  co.peer_timeout = 7000ms;
  auto server = makeEngine(so);
  auto client = makeEngine(co);
  ASSERT_TRUE(server && client);
  uint16_t port = portOf(server->listenAddress());
  auto c = client->connect(server->listenAddress());
  ASSERT_TRUE(c.ok()) << c.status().toString();
  auto kept5 = server->accept(5s);  // kept open: dropping it closes it
  ASSERT_TRUE(kept5.ok()) << kept5.status().toString();
  auto fds = clientControlSockets(port);
  auto server_fds = serverControlSockets(port);
  ASSERT_EQ(fds.size(), 1u);
  ASSERT_EQ(server_fds.size(), 1u);
  fds.push_back(server_fds[0]);
  for (int fd : fds) {
    auto get = [&](int level, int name) {
      int v = -1;
      socklen_t len = sizeof(v);
      EXPECT_EQ(::getsockopt(fd, level, name, &v, &len), 0);
      return v;
    };
    EXPECT_EQ(get(SOL_SOCKET, SO_KEEPALIVE), 1);
    EXPECT_EQ(get(IPPROTO_TCP, TCP_USER_TIMEOUT), 7000);
    int idle = get(IPPROTO_TCP, TCP_KEEPIDLE);
    int interval = get(IPPROTO_TCP, TCP_KEEPINTVL);
    int count = get(IPPROTO_TCP, TCP_KEEPCNT);
    EXPECT_GE(idle, 1);
    EXPECT_LE(idle, 3);
    EXPECT_GE(interval, 1);
    EXPECT_GE(count, 1);
    EXPECT_LE(idle + interval * count, 7) << "a silent peer must be detected within peer_timeout";
  }
}

TEST(ControlPlane, PeerTimeoutMustBePositive) {
  EngineOptions o = options(false);
  o.peer_timeout = 0ms;
  EXPECT_EQ(Engine::create(o).status().code(), StatusCode::kInvalidArgument);
  o.peer_timeout = -5ms;
  EXPECT_EQ(Engine::create(o).status().code(), StatusCode::kInvalidArgument);
}

TEST(ControlPlane, SocketsBeyondThePendingHandshakeLimitWaitAndSilentOnesGiveWay) {
  EngineOptions o = options(true);
  o.max_pending_handshakes = 4;
  o.connect_timeout = 30s;
  auto server = makeEngine(o);
  auto client = makeEngine(options(false));
  ASSERT_TRUE(server && client);
  uint16_t port = portOf(server->listenAddress());
  RawSockets idle;
  for (int i = 0; i < 4; ++i) idle.fds.push_back(rawConnect(port));
  std::this_thread::sleep_for(50ms);
  RawSockets extra;
  extra.fds.push_back(rawConnect(port));
  ASSERT_GE(extra.fds[0], 0);
  // Beyond the limit a connection waits in the backlog: not reset, and nobody evicted yet
  // (the silent ones are younger than their one-second grace).
  EXPECT_FALSE(closedByPeerWithin(extra.fds[0], 300ms));
  for (int fd : idle.fds) EXPECT_FALSE(closedByPeerWithin(fd, 0ms));

  auto start = Clock::now();  // a real client is served once the silent ones gave way
  auto c = client->connect(server->listenAddress());
  long long took_ms = msSince(start);
  ASSERT_TRUE(c.ok()) << c.status().toString();
  EXPECT_LT(took_ms, 5000);
  auto a = server->accept(5s);
  EXPECT_TRUE(a.ok()) << a.status().toString();
  int evicted = 0;
  for (int fd : idle.fds) evicted += closedByPeerWithin(fd, 0ms);
  EXPECT_GE(evicted, 1) << "the client got a slot without any silent peer giving way";
}

TEST(ControlPlane, PeersBeyondTheUnacceptedLimitGetAClearRejection) {
  EngineOptions o = options(true);
  o.max_pending_accepts = 1;
  auto server = makeEngine(o);
  auto client = makeEngine(options(false));
  ASSERT_TRUE(server && client);
  auto first = client->connect(server->listenAddress());
  ASSERT_TRUE(first.ok()) << first.status().toString();
  auto second = client->connect(server->listenAddress());
  EXPECT_EQ(second.status().code(), StatusCode::kResourceExhausted) << second.status().toString();
  EXPECT_NE(second.status().message().find("accept"), std::string::npos);
  auto kept6 = server->accept(5s);  // kept open: dropping it closes it
  ASSERT_TRUE(kept6.ok()) << kept6.status().toString();
  auto third = client->connect(server->listenAddress());
  EXPECT_TRUE(third.ok()) << third.status().toString();
  auto kept8 = server->accept(5s);  // kept open: dropping it closes it
  EXPECT_TRUE(kept8.ok()) << kept8.status().toString();
}

}  // namespace
}  // namespace zcx::test

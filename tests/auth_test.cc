// Authentication of peers (EngineOptions::auth_secret): engines with the same secret connect and
// move bytes; a missing or wrong secret on either side is refused quickly and clearly on both
// sides while the listener keeps serving; after authentication a control frame that is altered,
// replayed or reordered in transit closes the connection; secrets never reach the logs.
// Engines use UCX over TCP on the loopback, in-process; a test proxy sits on the control channel.
#include <arpa/inet.h>
#include <glog/logging.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "auth.h"
#include "auth_client.h"
#include "control_protocol.h"
#include "wire.h"
#include "zcx/zcx.h"

namespace zcx::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Bytes = std::vector<uint8_t>;

long long msSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

std::string hex(std::string_view s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

/// Every glog line while it lives (all severities).
class LogCapture : public google::LogSink {
 public:
  LogCapture() { google::AddLogSink(this); }
  ~LogCapture() override { google::RemoveLogSink(this); }
  using google::LogSink::send;
  void send(google::LogSeverity, const char*, const char*, int, const google::LogMessageTime&,
            const char* message, size_t length) override {
    std::lock_guard<std::mutex> lock(mu_);
    lines_.emplace_back(message, length);
  }
  std::vector<std::string> lines() {
    std::lock_guard<std::mutex> lock(mu_);
    return lines_;
  }
  size_t count(std::string_view needle) {
    size_t n = 0;
    for (const auto& l : lines()) n += l.find(needle) != std::string::npos;
    return n;
  }
  /// Waits up to `timeout` for a line holding every needle.
  bool waitFor(std::initializer_list<std::string_view> needles,
               std::chrono::milliseconds timeout = 3s) {
    auto until = Clock::now() + timeout;
    do {
      for (const auto& l : lines()) {
        bool all = true;
        for (auto n : needles) all &= l.find(n) != std::string::npos;
        if (all) return true;
      }
      std::this_thread::sleep_for(10ms);
    } while (Clock::now() < until);
    return false;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> lines_;
};

EngineOptions options(bool listen, std::string secret = "") {
  EngineOptions o;
  o.transport = "ucx";
  o.transport_params = {{"ucx.tls", "tcp,self"}, {"ucx.net_devices", "lo"}};
  o.listen_address = listen ? "127.0.0.1:0" : "";
  o.connect_timeout = 5s;
  o.auth_secret = std::move(secret);
  return o;
}

uint16_t portOf(const std::string& host_port) {
  return static_cast<uint16_t>(std::stoi(host_port.substr(host_port.rfind(':') + 1)));
}

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

/// Everything the peer sends until it closes the connection (or `timeout`).
Bytes readUntilClosed(int fd, std::chrono::milliseconds timeout, bool* closed) {
  Bytes got;
  *closed = false;
  auto until = Clock::now() + timeout;
  for (;;) {
    int left = static_cast<int>(std::max<long long>(0, -msSince(until)));
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) return got;
    uint8_t buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      *closed = true;
      return got;
    }
    got.insert(got.end(), buf, buf + n);
  }
}

bool contains(const Bytes& hay, std::string_view needle) {
  return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

/// Waits until `c` reports an error (its connection closed) or `timeout` passes.
Status waitClosed(Connection& c, std::chrono::milliseconds timeout) {
  auto until = Clock::now() + timeout;
  while (c.status().ok() && Clock::now() < until) std::this_thread::sleep_for(5ms);
  return c.status();
}

/// A man in the middle on the control channel: forwards both directions, frame by frame from the
/// client, and can flip a bit in, or send twice, the first frame of one type; records what the
/// client sent.
class ControlProxy {
 public:
  enum class Mode { kForward, kFlipBit, kDuplicate, kSwapWithNext };

  ControlProxy(uint16_t server_port, Mode mode, detail::FrameType target)
      : server_port_(server_port), mode_(mode), target_(target) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    ::inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int one = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    EXPECT_EQ(::listen(listener_, 4), 0);
    socklen_t len = sizeof(sa);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~ControlProxy() {
    stop_ = true;
    ::shutdown(listener_, SHUT_RDWR);
    if (client_ >= 0) ::shutdown(client_, SHUT_RDWR);
    if (server_ >= 0) ::shutdown(server_, SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
    if (back_.joinable()) back_.join();
    ::close(listener_);
    if (client_ >= 0) ::close(client_);
    if (server_ >= 0) ::close(server_);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  bool tampered() const { return tampered_; }
  /// The client's frames as they arrived (before any change).
  std::vector<Bytes> clientFrames() {
    std::lock_guard<std::mutex> lock(mu_);
    return frames_;
  }

 private:
  static bool readFull(int fd, uint8_t* p, size_t n) {
    while (n > 0) {
      ssize_t r = ::recv(fd, p, n, 0);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }
  static bool sendFull(int fd, const Bytes& b) {
    return ::send(fd, b.data(), b.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(b.size());
  }

  void run() {
    client_ = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client_ < 0 || stop_) return;
    server_ = rawConnect(server_port_);
    if (server_ < 0) return;
    back_ = std::thread([this] {  // server -> client, unchanged
      uint8_t buf[4096];
      for (;;) {
        ssize_t n = ::recv(server_, buf, sizeof(buf), 0);
        if (n <= 0 || ::send(client_, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
      }
      ::shutdown(client_, SHUT_WR);
    });
    Bytes held;  // kSwapWithNext: the target frame, sent after the next one
    for (;;) {
      uint8_t header[detail::kFrameHeaderSize];
      if (!readFull(client_, header, sizeof(header))) break;
      detail::WireReader r(std::span<const uint8_t>(header, sizeof(header)));
      uint32_t len = r.u32();
      auto type = static_cast<detail::FrameType>(r.u8());
      if (len == 0 || len > (2u << 20)) break;
      Bytes frame(header, header + sizeof(header));
      frame.resize(sizeof(header) + len - 1);
      if (!readFull(client_, frame.data() + sizeof(header), len - 1)) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        frames_.push_back(frame);
      }
      bool ok = true;
      if (!held.empty()) {
        ok = sendFull(server_, frame) && sendFull(server_, held);
        held.clear();
      } else if (type == target_ && !tampered_) {
        tampered_ = true;
        switch (mode_) {
          case Mode::kForward: ok = sendFull(server_, frame); break;
          case Mode::kFlipBit:
            frame[sizeof(header) + 2] ^= 0x04;  // inside the body, before any MAC
            ok = sendFull(server_, frame);
            break;
          case Mode::kDuplicate: ok = sendFull(server_, frame) && sendFull(server_, frame); break;
          case Mode::kSwapWithNext: held = frame; break;
        }
      } else {
        ok = sendFull(server_, frame);
      }
      if (!ok) break;
    }
    ::shutdown(server_, SHUT_WR);
  }

  uint16_t server_port_;
  Mode mode_;
  detail::FrameType target_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::atomic<int> client_{-1};
  std::atomic<int> server_{-1};
  std::atomic<bool> stop_{false};
  std::atomic<bool> tampered_{false};
  std::mutex mu_;
  std::vector<Bytes> frames_;
  std::thread thread_;
  std::thread back_;
};

class AuthTest : public ::testing::Test {
 protected:
  /// A fresh random secret (printable, so it is easy to grep for), remembered for TearDown.
  std::string newSecret() {
    static std::mt19937_64 rng(std::random_device{}());
    std::string s = "zcx-test-secret-";
    for (int i = 0; i < 24; ++i) s += static_cast<char>('a' + rng() % 26);
    secrets_.insert(s);
    return s;
  }
  std::unique_ptr<Engine> make(const EngineOptions& o) {
    auto e = Engine::create(o);
    EXPECT_TRUE(e.ok()) << e.status().toString();
    return e.ok() ? std::move(*e) : nullptr;
  }
  /// Checks a connect() refused by authentication: fast, kPermissionDenied, says what to do,
  /// and reveals no secret.
  void expectAuthFailure(const Result<Connection>& c, Clock::time_point started) {
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kPermissionDenied) << c.status().toString();
    EXPECT_EQ(c.status().message().rfind("authentication failed: ", 0), 0u)
        << c.status().toString();
    EXPECT_NE(c.status().message().find("auth_secret"), std::string::npos) << c.status().toString();
    EXPECT_LT(msSince(started), 2000) << "refused only at a timeout";
    for (const auto& s : secrets_) EXPECT_EQ(c.status().message().find(s), std::string::npos);
  }
  /// The engines' sides of one authenticated connection.
  void connectPair(Engine& server, Engine& client, Connection* c, Connection* a) {
    auto cc = client.connect(server.listenAddress());
    ASSERT_TRUE(cc.ok()) << cc.status().toString();
    auto aa = server.accept(5s);
    ASSERT_TRUE(aa.ok()) << aa.status().toString();
    *c = std::move(*cc);
    *a = std::move(*aa);
  }

  void TearDown() override {
    // Neither a secret nor its hex form ever reaches a log line.
    for (const auto& line : logs_.lines()) {
      for (const auto& s : secrets_) {
        EXPECT_EQ(line.find(s), std::string::npos) << "secret in the log: " << line;
        EXPECT_EQ(line.find(hex(s)), std::string::npos) << "secret (hex) in the log: " << line;
      }
    }
  }

  LogCapture logs_;
  std::set<std::string> secrets_;
};

// ---------------------------------------------------------------- the MAC itself

TEST(FrameMac, OpensWhatItsPeerSealedOnceInOrderAndNothingElse) {
  detail::SecretBytes key(Bytes(32, 7));
  detail::SecretBytes other(Bytes(32, 8));
  auto client = detail::channelMacs(key, true);
  auto server = detail::channelMacs(key, false);
  Bytes a = detail::encode(detail::Lookup{1, "alpha"});
  Bytes b = detail::encode(detail::Lookup{2, "beta"});
  Bytes sa = a, sb = b;
  ASSERT_TRUE(client.send.seal(detail::FrameType::kLookup, sa).ok());
  ASSERT_TRUE(client.send.seal(detail::FrameType::kLookup, sb).ok());
  EXPECT_EQ(sa.size(), a.size() + detail::kMacSize);

  // Reordered: b first fails (it is frame 1, the server expects frame 0).
  Bytes x = sb;
  EXPECT_EQ(server.receive.open(detail::FrameType::kLookup, x).code(),
            StatusCode::kPermissionDenied);
  // Reflected: the client's own frame does not open as one from the server.
  x = sa;
  EXPECT_FALSE(client.receive.open(detail::FrameType::kLookup, x).ok());
  // Another type, another key, one flipped bit: refused.
  x = sa;
  EXPECT_FALSE(server.receive.open(detail::FrameType::kHello, x).ok());
  auto foreign = detail::channelMacs(other, false);
  x = sa;
  EXPECT_FALSE(foreign.receive.open(detail::FrameType::kLookup, x).ok());
  for (size_t bit = 0; bit < sa.size() * 8; bit += 7) {
    x = sa;
    x[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_FALSE(server.receive.open(detail::FrameType::kLookup, x).ok()) << bit;
  }
  // Truncated to less than a MAC.
  x = Bytes(detail::kMacSize - 1, 0);
  EXPECT_FALSE(server.receive.open(detail::FrameType::kLookup, x).ok());
  // In order: both open, once.
  x = sa;
  ASSERT_TRUE(server.receive.open(detail::FrameType::kLookup, x).ok());
  EXPECT_EQ(x, a);
  x = sa;  // replayed
  EXPECT_FALSE(server.receive.open(detail::FrameType::kLookup, x).ok());
  x = sb;
  ASSERT_TRUE(server.receive.open(detail::FrameType::kLookup, x).ok());
  EXPECT_EQ(x, b);
}

TEST(FrameMac, ProofsAndSessionKeysDependOnSecretAndBothNonces) {
  detail::SecretBytes s1(Bytes{1, 2, 3}), s2(Bytes{1, 2, 4});
  auto n1 = detail::randomNonce(), n2 = detail::randomNonce();
  ASSERT_TRUE(n1.ok() && n2.ok());
  EXPECT_NE(*n1, *n2);
  auto sp = *detail::serverProof(s1, *n1, *n2);
  EXPECT_TRUE(detail::sameMac(sp, *detail::serverProof(s1, *n1, *n2)));
  EXPECT_FALSE(detail::sameMac(sp, *detail::clientProof(s1, *n1, *n2)));  // labels differ
  EXPECT_FALSE(detail::sameMac(sp, *detail::serverProof(s2, *n1, *n2)));
  EXPECT_FALSE(detail::sameMac(sp, *detail::serverProof(s1, *n2, *n1)));
  auto k = *detail::sessionKey(s1, *n1, *n2);
  EXPECT_EQ(k.size(), 32u);
  EXPECT_FALSE(std::equal(k.bytes().begin(), k.bytes().end(), sp.begin()));
}

TEST(FrameMac, AuthFramesDecodeExactlyAndCheckTheVersion) {
  detail::AuthInit init;
  init.nonce.fill(9);
  auto body = detail::encode(init);
  auto back = detail::decodeAuthInit(body);
  ASSERT_TRUE(back.ok()) << back.status().toString();
  EXPECT_EQ(back->nonce, init.nonce);
  init.version = detail::kProtocolVersion + 1;
  EXPECT_EQ(detail::decodeAuthInit(detail::encode(init)).status().code(),
            StatusCode::kVersionMismatch);
  body.push_back(0);
  EXPECT_EQ(detail::decodeAuthInit(body).status().code(), StatusCode::kProtocolError);
  EXPECT_FALSE(detail::decodeAuthChallenge(Bytes(63)).ok());
  EXPECT_TRUE(detail::decodeAuthChallenge(Bytes(64)).ok());
  EXPECT_FALSE(detail::decodeAuthProof(Bytes(33)).ok());
  EXPECT_TRUE(detail::decodeAuthProof(Bytes(32)).ok());
}

// ---------------------------------------------------------------- engines

TEST_F(AuthTest, SameSecretConnectsAndMovesBytes) {
  const std::string secret = newSecret();
  char path[] = "/tmp/zcx-auth-secret-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string line = secret + "\n";  // as `echo` writes it: the newline is not the secret
  ASSERT_EQ(::write(fd, line.data(), line.size()), static_cast<ssize_t>(line.size()));
  ::close(fd);
  EngineOptions so = options(true);
  so.auth_secret_file = path;  // the server reads it from a file, the client has it in memory
  auto server = make(so);
  auto client = make(options(false, secret));
  ::unlink(path);
  ASSERT_TRUE(server && client);
  constexpr size_t kSize = 1 << 20;
  auto target = server->allocate(kSize, kRemoteReadWrite);
  ASSERT_TRUE(target.ok());
  std::memset(target->data(), 0, kSize);
  ASSERT_TRUE(server->expose("buf", *target).ok());

  Connection c, a;
  ASSERT_NO_FATAL_FAILURE(connectPair(*server, *client, &c, &a));
  auto remote = c.remoteRegion("buf", 2s);  // from the (authenticated) HELLO
  ASSERT_TRUE(remote.ok()) << remote.status().toString();

  auto src = client->allocate(kSize, kLocalOnly);
  auto back = client->allocate(kSize, kLocalOnly);
  ASSERT_TRUE(src.ok() && back.ok());
  std::mt19937 rng(7);
  for (size_t i = 0; i < kSize; ++i) src->data()[i] = static_cast<uint8_t>(rng());
  std::memset(back->data(), 0xA5, kSize);
  ASSERT_TRUE(c.write(*src, 0, *remote, 0, kSize).wait(10s).ok());
  EXPECT_EQ(std::memcmp(target->data(), src->data(), kSize), 0);
  ASSERT_TRUE(c.read(*back, 0, *remote, 0, kSize).wait(10s).ok());
  EXPECT_EQ(std::memcmp(back->data(), src->data(), kSize), 0);

  // A region exposed after the handshake: LOOKUP / LOOKUP_REPLY on the authenticated channel.
  auto late = server->allocate(4096, kRemoteRead);
  ASSERT_TRUE(late.ok());
  std::memset(late->data(), 0x3C, 4096);
  ASSERT_TRUE(server->expose("late", *late).ok());
  auto late_remote = c.remoteRegion("late", 2s);
  ASSERT_TRUE(late_remote.ok()) << late_remote.status().toString();
  ASSERT_TRUE(c.read(*back, 0, *late_remote, 0, 4096).wait(10s).ok());
  EXPECT_EQ(back->data()[0], 0x3C);
  EXPECT_EQ(back->data()[4095], 0x3C);
  EXPECT_EQ(c.remoteRegion("missing", 2s).status().code(), StatusCode::kNotFound);

  // send/recv, more messages than the initial credits: CREDIT frames go both ways too.
  auto out = client->allocate(256, kLocalOnly);
  auto in = server->allocate(256, kLocalOnly);
  ASSERT_TRUE(out.ok() && in.ok());
  for (int i = 0; i < 40; ++i) {
    auto r = a.recv(*in, 0, 256);
    std::memset(out->data(), i, 256);
    ASSERT_TRUE(c.send(*out, 0, 256).wait(10s).ok()) << i;
    ASSERT_TRUE(r.wait(10s).ok()) << i;
    EXPECT_EQ(in->data()[255], static_cast<uint8_t>(i));
  }
  auto reply_in = client->allocate(64, kLocalOnly);
  auto reply_out = server->allocate(64, kLocalOnly);
  ASSERT_TRUE(reply_in.ok() && reply_out.ok());
  std::memset(reply_out->data(), 0x77, 64);
  auto r = c.recv(*reply_in, 0, 64);
  ASSERT_TRUE(a.send(*reply_out, 0, 64).wait(10s).ok());
  ASSERT_TRUE(r.wait(10s).ok());
  EXPECT_EQ(reply_in->data()[63], 0x77);
  EXPECT_TRUE(c.status().ok());
  EXPECT_TRUE(a.status().ok());

  // The client's BYE verifies: the server sees a clean close, not a forged frame.
  c.close();
  Status closed = waitClosed(a, 3s);
  EXPECT_EQ(closed.code(), StatusCode::kCancelled) << closed.toString();
}

TEST_F(AuthTest, ClientWithoutSecretIsRefusedAndLearnsNothing) {
  auto server = make(options(true, newSecret()));
  auto nosecret = make(options(false));
  ASSERT_TRUE(server && nosecret);
  auto region = server->allocate(4096, kRemoteReadWrite);
  ASSERT_TRUE(region.ok());
  ASSERT_TRUE(server->expose("private-region-name", *region).ok());

  auto start = Clock::now();
  auto c = nosecret->connect(server->listenAddress());
  expectAuthFailure(c, start);
  EXPECT_NE(c.status().message().find("the client sent none"), std::string::npos)
      << c.status().toString();
  EXPECT_TRUE(logs_.waitFor({"rejected an incoming connection", "authentication failed"}));
  EXPECT_EQ(server->accept(200ms).status().code(), StatusCode::kTimedOut);

  // On the wire: what a peer without the secret gets is one REJECT, nothing about the server.
  Bytes hello_frame;
  {
    detail::Hello h;
    h.name = "nosecret";
    h.transport = "ucx";
    hello_frame = detail::frameBytes(detail::FrameType::kHello, detail::encode(h));
  }
  int fd = rawConnect(portOf(server->listenAddress()));
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::send(fd, hello_frame.data(), hello_frame.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(hello_frame.size()));
  bool closed = false;
  Bytes got = readUntilClosed(fd, 3s, &closed);
  ::close(fd);
  EXPECT_TRUE(closed);
  ASSERT_GE(got.size(), detail::kFrameHeaderSize);
  EXPECT_EQ(got[4], static_cast<uint8_t>(detail::FrameType::kReject));
  EXPECT_FALSE(contains(got, "private-region-name"));
  EXPECT_FALSE(contains(got, "ZCXH"));  // no HELLO of the server's

  // A peer that starts authenticating with a wrong proof gets the challenge and a REJECT only.
  fd = rawConnect(portOf(server->listenAddress()));
  ASSERT_GE(fd, 0);
  detail::AuthInit init;
  init.nonce.fill(1);
  auto deadline = detail::Clock::now() + 3s;
  ASSERT_TRUE(
      detail::writeFrame(fd, detail::FrameType::kAuthInit, detail::encode(init), deadline).ok());
  auto challenge = detail::readFrame(fd, deadline);
  ASSERT_TRUE(challenge.ok()) << challenge.status().toString();
  EXPECT_EQ(challenge->type, detail::FrameType::kAuthChallenge);
  EXPECT_EQ(challenge->body.size(), detail::kAuthNonceSize + detail::kMacSize);
  ASSERT_TRUE(detail::writeFrame(fd, detail::FrameType::kAuthProof,
                                 detail::encode(detail::AuthProof{}), deadline)
                  .ok());
  got = readUntilClosed(fd, 3s, &closed);
  ::close(fd);
  EXPECT_TRUE(closed);
  ASSERT_GE(got.size(), detail::kFrameHeaderSize);
  EXPECT_EQ(got[4], static_cast<uint8_t>(detail::FrameType::kReject));
  EXPECT_FALSE(contains(got, "private-region-name"));
  EXPECT_TRUE(logs_.waitFor({"authentication failed", "proof does not match"}));
  EXPECT_EQ(server->accept(200ms).status().code(), StatusCode::kTimedOut);
}

TEST_F(AuthTest, ServerWithoutSecretRefusesAClientWithOne) {
  auto server = make(options(true));
  auto client = make(options(false, newSecret()));
  ASSERT_TRUE(server && client);
  auto start = Clock::now();
  auto c = client->connect(server->listenAddress());
  expectAuthFailure(c, start);
  EXPECT_NE(c.status().message().find("the server has none"), std::string::npos)
      << c.status().toString();
  EXPECT_TRUE(logs_.waitFor({"rejected an incoming connection", "authentication failed"}));
  EXPECT_EQ(server->accept(200ms).status().code(), StatusCode::kTimedOut);
}

TEST_F(AuthTest, WrongSecretIsRefusedAndTheListenerKeepsServing) {
  const std::string good = newSecret();
  auto server = make(options(true, good));
  auto wrong = make(options(false, newSecret()));
  auto none = make(options(false));
  auto client = make(options(false, good));
  ASSERT_TRUE(server && wrong && none && client);
  auto region = server->allocate(4096, kRemoteReadWrite);
  ASSERT_TRUE(region.ok());
  std::memset(region->data(), 0, 4096);
  ASSERT_TRUE(server->expose("buf", *region).ok());

  auto start = Clock::now();
  auto c = wrong->connect(server->listenAddress());
  expectAuthFailure(c, start);
  EXPECT_NE(c.status().message().find("server's proof does not match"), std::string::npos)
      << c.status().toString();
  // The server logs it too (the client told it why it hung up).
  EXPECT_TRUE(logs_.waitFor({"authentication failed", "client refused the server's proof"}));

  for (int i = 0; i < 6; ++i) {  // bad peers in a row
    start = Clock::now();
    auto bad = (i % 2 ? none : wrong)->connect(server->listenAddress());
    expectAuthFailure(bad, start);
  }
  EXPECT_EQ(server->accept(200ms).status().code(), StatusCode::kTimedOut);

  Connection ok_c, ok_a;
  ASSERT_NO_FATAL_FAILURE(connectPair(*server, *client, &ok_c, &ok_a));
  auto remote = ok_c.remoteRegion("buf", 2s);
  ASSERT_TRUE(remote.ok()) << remote.status().toString();
  auto src = client->allocate(4096, kLocalOnly);
  ASSERT_TRUE(src.ok());
  std::memset(src->data(), 0x42, 4096);
  ASSERT_TRUE(ok_c.write(*src, 0, *remote, 0, 4096).wait(10s).ok());
  EXPECT_EQ(region->data()[0], 0x42);
  EXPECT_EQ(region->data()[4095], 0x42);
}

TEST_F(AuthTest, TamperedHelloAfterAuthenticationIsRejected) {
  const std::string secret = newSecret();
  auto server = make(options(true, secret));
  ASSERT_TRUE(server);
  const uint16_t port = portOf(server->listenAddress());
  detail::SecretBytes key(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()));
  detail::Hello h;
  h.name = "raw";
  h.transport = "verbs";  // verified and decoded, an untampered HELLO is refused for this
  h.token = 1;

  // helloFrame(flip): authenticates, sends a sealed HELLO (one bit flipped after sealing if
  // `flip`), returns the server's answer opened with the session key.
  auto exchange = [&](bool flip) -> Result<detail::Reject> {
    int fd = rawConnect(port);
    if (fd < 0) return Status(StatusCode::kConnectionRefused, "connect");
    auto deadline = detail::Clock::now() + 3s;
    auto macs = detail::authenticateAsClient(fd, key, deadline);
    if (!macs.ok()) {
      ::close(fd);
      return macs.status();
    }
    Bytes body = detail::encode(h);
    EXPECT_TRUE(macs->send.seal(detail::FrameType::kHello, body).ok());
    if (flip) body[10] ^= 0x10;  // inside the name field
    Status sent =
        detail::writeAll(fd, detail::frameBytes(detail::FrameType::kHello, body), deadline);
    auto f =
        sent.ok() ? detail::readFrame(fd, deadline, &macs->receive) : Result<detail::Frame>(sent);
    bool closed = false;
    if (f.ok()) readUntilClosed(fd, 2s, &closed);
    ::close(fd);
    if (!f.ok()) return f.status();
    EXPECT_TRUE(closed);
    if (f->type != detail::FrameType::kReject)
      return Status(StatusCode::kInternal, "expected a REJECT");
    return detail::decodeReject(f->body);
  };

  auto control = exchange(false);
  ASSERT_TRUE(control.ok()) << control.status().toString();
  EXPECT_EQ(static_cast<StatusCode>(control->code), StatusCode::kVersionMismatch)
      << control->reason;

  auto tampered = exchange(true);
  ASSERT_TRUE(tampered.ok()) << tampered.status().toString();  // the REJECT itself verifies
  EXPECT_EQ(static_cast<StatusCode>(tampered->code), StatusCode::kPermissionDenied)
      << tampered->reason;
  EXPECT_NE(tampered->reason.find("does not verify"), std::string::npos) << tampered->reason;
  EXPECT_TRUE(logs_.waitFor({"rejected an incoming connection", "HELLO", "does not verify"}));

  auto client = make(options(false, secret));  // and the listener still serves
  ASSERT_TRUE(client);
  Connection c, a;
  ASSERT_NO_FATAL_FAILURE(connectPair(*server, *client, &c, &a));
}

// An established connection: a frame altered, replayed or reordered by a man in the middle
// closes it on the receiving side. Without a secret the same interference goes unnoticed (the
// control case: what the MAC is for).
struct Interference {
  ControlProxy::Mode mode;
  bool with_secret;
  bool detected;
};

class AuthInterferenceTest : public AuthTest, public ::testing::WithParamInterface<Interference> {};

TEST_P(AuthInterferenceTest, OnTheControlChannel) {
  const Interference p = GetParam();
  const std::string secret = p.with_secret ? newSecret() : "";
  auto server = make(options(true, secret));
  auto client = make(options(false, secret));
  ASSERT_TRUE(server && client);
  ControlProxy proxy(portOf(server->listenAddress()), p.mode, detail::FrameType::kLookup);
  auto c = client->connect(proxy.address());
  ASSERT_TRUE(c.ok()) << c.status().toString();
  auto a = server->accept(5s);
  ASSERT_TRUE(a.ok()) << a.status().toString();
  auto r1 = server->allocate(4096, kRemoteRead);
  auto r2 = server->allocate(4096, kRemoteRead);
  ASSERT_TRUE(r1.ok() && r2.ok());
  ASSERT_TRUE(server->expose("late1", *r1).ok());  // after the HELLO: looked up
  ASSERT_TRUE(server->expose("late2", *r2).ok());

  // Two lookups at once (two LOOKUP frames back to back: one can be swapped with the next).
  std::thread second([&] { (void)c->remoteRegion("late2", 1500ms); });
  std::this_thread::sleep_for(20ms);
  (void)c->remoteRegion("late1", 1500ms);
  second.join();
  EXPECT_TRUE(proxy.tampered());
  Status server_side = waitClosed(*a, p.detected ? 3000ms : 300ms);
  if (p.detected) {
    EXPECT_EQ(server_side.code(), StatusCode::kPermissionDenied) << server_side.toString();
    EXPECT_NE(server_side.message().find("does not verify"), std::string::npos)
        << server_side.toString();
    EXPECT_TRUE(logs_.waitFor({"closing the connection", "LOOKUP", "does not verify"}));
  } else {
    EXPECT_TRUE(server_side.ok()) << server_side.toString();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Auth, AuthInterferenceTest,
    ::testing::Values(Interference{ControlProxy::Mode::kFlipBit, true, true},
                      Interference{ControlProxy::Mode::kDuplicate, true, true},
                      Interference{ControlProxy::Mode::kSwapWithNext, true, true},
                      Interference{ControlProxy::Mode::kDuplicate, false, false},
                      Interference{ControlProxy::Mode::kSwapWithNext, false, false}),
    [](const auto& info) {
      const char* mode = info.param.mode == ControlProxy::Mode::kFlipBit     ? "FlippedBit"
                         : info.param.mode == ControlProxy::Mode::kDuplicate ? "Replayed"
                                                                             : "Reordered";
      return std::string(mode) + (info.param.with_secret ? "WithSecret" : "WithoutSecret");
    });

TEST_F(AuthTest, ReplayedHandshakeIsRefused) {
  const std::string secret = newSecret();
  auto server = make(options(true, secret));
  auto client = make(options(false, secret));
  ASSERT_TRUE(server && client);
  std::vector<Bytes> recorded;
  {
    ControlProxy proxy(portOf(server->listenAddress()), ControlProxy::Mode::kForward,
                       detail::FrameType::kBye);
    auto c = client->connect(proxy.address());
    ASSERT_TRUE(c.ok()) << c.status().toString();
    auto a = server->accept(5s);
    ASSERT_TRUE(a.ok()) << a.status().toString();
    recorded = proxy.clientFrames();
  }
  ASSERT_GE(recorded.size(), 3u);  // AUTH_INIT, AUTH_PROOF, HELLO (, READY)
  EXPECT_EQ(recorded[0][4], static_cast<uint8_t>(detail::FrameType::kAuthInit));
  EXPECT_EQ(recorded[1][4], static_cast<uint8_t>(detail::FrameType::kAuthProof));

  // The recorded client, byte for byte, on a new connection: the server's nonce is new, so the
  // old proof does not verify.
  int fd = rawConnect(portOf(server->listenAddress()));
  ASSERT_GE(fd, 0);
  auto deadline = detail::Clock::now() + 3s;
  ASSERT_TRUE(detail::writeAll(fd, recorded[0], deadline).ok());
  auto challenge = detail::readFrame(fd, deadline);
  ASSERT_TRUE(challenge.ok()) << challenge.status().toString();
  ASSERT_EQ(challenge->type, detail::FrameType::kAuthChallenge);
  for (size_t i = 1; i < recorded.size(); ++i) (void)detail::writeAll(fd, recorded[i], deadline);
  bool closed = false;
  readUntilClosed(fd, 3s, &closed);
  ::close(fd);
  EXPECT_TRUE(closed);
  EXPECT_TRUE(logs_.waitFor({"authentication failed", "proof does not match"}));
  EXPECT_EQ(server->accept(300ms).status().code(), StatusCode::kTimedOut);
}

TEST_F(AuthTest, SecretFileProblemsAreClearErrors) {
  EngineOptions o = options(false);
  o.auth_secret_file = "/nonexistent/zcx-secret";
  auto e = Engine::create(o);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("/nonexistent/zcx-secret"), std::string::npos);
  EXPECT_NE(e.status().message().find("cannot open"), std::string::npos) << e.status().toString();

  char path[] = "/tmp/zcx-auth-empty-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "\n", 1), 1);  // only a newline: empty
  ::close(fd);
  o.auth_secret_file = path;
  e = Engine::create(o);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("empty"), std::string::npos) << e.status().toString();

  const std::string secret = newSecret();
  {
    std::ofstream out(path, std::ios::trunc);
    out << secret;
  }
  ::chmod(path, 0644);  // readable by everyone: works, with a warning
  auto warned = make(o);
  EXPECT_TRUE(warned);
  EXPECT_EQ(logs_.count("readable by its group or by others"), 1u);

  o.auth_secret = secret;  // both set
  EXPECT_EQ(Engine::create(o).status().code(), StatusCode::kInvalidArgument);
  ::unlink(path);
}

TEST_F(AuthTest, ListenersNameTheirHostAndWarnOnceWithoutASecretBeyondLoopback) {
  EngineOptions o = options(true);
  o.listen_address = ":0";
  auto e = Engine::create(o);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("names no host"), std::string::npos) << e.status().toString();

  const std::string_view warning = "without an auth_secret";
  auto loopback = make(options(true));
  ASSERT_TRUE(loopback);
  EXPECT_EQ(logs_.count(warning), 0u);
  o.listen_address = "0.0.0.0:0";
  o.auth_secret = newSecret();
  auto protected_wildcard = make(o);
  ASSERT_TRUE(protected_wildcard);
  EXPECT_EQ(logs_.count(warning), 0u);
  o.auth_secret.clear();
  auto open_wildcard = make(o);
  ASSERT_TRUE(open_wildcard);
  // One engine, one warning, however many peers connect.
  auto client = make(options(false));
  ASSERT_TRUE(client);
  std::string addr = "127.0.0.1:" + std::to_string(portOf(open_wildcard->listenAddress()));
  for (int i = 0; i < 3; ++i) {
    auto c = client->connect(addr);
    ASSERT_TRUE(c.ok()) << c.status().toString();
    EXPECT_TRUE(open_wildcard->accept(5s).ok());
  }
  EXPECT_EQ(logs_.count(warning), 1u);
}

}  // namespace
}  // namespace zcx::test

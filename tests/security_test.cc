// The trust boundary, tried as a hostile peer would: a client that completed the handshake edits
// the descriptors it got (access raised, address and length widened over neighbouring pages) or
// keeps one after the owner revoked the region, and tries to write and read through them. The
// owner of the memory must refuse every such access (UCX: our checked RMA; verbs: the NIC), with
// its memory checked byte by byte afterwards: guard pages untouched, read-only data unchanged,
// no byte of unexposed memory in the client's buffers. A legitimate write still lands.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "peer_process.h"
#include "zcx/zcx.h"

namespace zcx::test {
namespace {

using namespace std::chrono_literals;

constexpr size_t kRegion = 64 * 1024;
constexpr size_t kGuard = 64 * 1024;
constexpr uint8_t kGuardByte = 0xEE;  // "secret" memory nobody exposed

struct Param {
  std::string name;  ///< tcp, verbs
  std::string transport;
  std::map<std::string, std::string> params;
  std::string host;
};

Param paramNamed(const std::string& name) {
  if (name == "tcp")
    return {"tcp", "ucx", {{"ucx.tls", "tcp,self"}, {"ucx.net_devices", "lo"}}, "127.0.0.1"};
  const char* ip = std::getenv("RXE_IP");
  return {"verbs", "verbs", {}, ip ? ip : "127.0.0.1"};
}

void PrintTo(const Param& p, std::ostream* os) { *os << p.name; }

EngineOptions optionsFor(const Param& p, bool listen, std::string name = "mallory") {
  EngineOptions o;
  o.name = std::move(name);
  o.transport = p.transport;
  o.transport_params = p.params;
  o.listen_address = listen ? p.host + ":0" : "";
  o.connect_timeout = 10s;
  o.operation_timeout = 10s;
  return o;
}

uint8_t patternByte(size_t i, unsigned seed) {
  return static_cast<uint8_t>((i * 131 + seed) & 0xff);
}

/// [guard][region][guard] in one mapping; only the middle is ever registered.
struct Guarded {
  uint8_t* base = nullptr;
  uint8_t* region() const { return base + kGuard; }
  Guarded() {
    void* p = ::mmap(nullptr, kGuard * 2 + kRegion, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    base = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
  }
  ~Guarded() {
    if (base) ::munmap(base, kGuard * 2 + kRegion);
  }
  void fill(unsigned seed) {
    std::memset(base, kGuardByte, kGuard);
    std::memset(base + kGuard + kRegion, kGuardByte, kGuard);
    for (size_t i = 0; i < kRegion; ++i) region()[i] = patternByte(i, seed);
  }
  /// "" if guards hold kGuardByte and the region `seed`'s pattern (seed < 0: region not checked).
  std::string check(const std::string& what, int seed) const {
    for (size_t i = 0; i < kGuard; ++i) {
      if (base[i] != kGuardByte) return what + ": guard before changed at " + std::to_string(i);
      if (base[kGuard + kRegion + i] != kGuardByte)
        return what + ": guard after changed at " + std::to_string(i);
    }
    if (seed >= 0) {
      for (size_t i = 0; i < kRegion; ++i)
        if (region()[i] != patternByte(i, static_cast<unsigned>(seed)))
          return what + ": region changed at " + std::to_string(i);
    }
    return "";
  }
};

// The target: exposes "rw" (read-write), "ro" (read-only) and "gone" (read-write, revoked on
// command), each between guard pages, and checks its memory when asked.
ZCX_TEST_PEER(securityTarget) {
  const Param p = paramNamed(args.at(0));
  auto engine = Engine::create(optionsFor(p, true));
  if (!engine.ok()) {
    pipe.send("error " + engine.status().toString());
    return 1;
  }
  Guarded rw, ro, gone;
  rw.fill(1);
  ro.fill(2);
  gone.fill(3);
  auto reg = [&](Guarded& g, uint32_t access) {
    return (*engine)->registerMemory(g.region(), kRegion, access);
  };
  auto mrw = reg(rw, kRemoteReadWrite);
  auto mro = reg(ro, kRemoteRead);
  auto mgone = reg(gone, kRemoteReadWrite);
  if (!mrw.ok() || !mro.ok() || !mgone.ok()) {
    pipe.send("error registration failed");
    return 1;
  }
  MemoryRegion gone_region = std::move(*mgone);
  // rw again: read-only, under a name revoked on command, and for the peer "alice" alone.
  ExposeOptions read_only;
  read_only.access = kRemoteRead;
  ExposeOptions alice_only;
  alice_only.peers = {"alice"};
  if (!(*engine)->expose("rw", *mrw).ok() || !(*engine)->expose("ro", *mro).ok() ||
      !(*engine)->expose("gone", gone_region).ok() ||
      !(*engine)->expose("rw_read_only", *mrw, read_only).ok() ||
      !(*engine)->expose("rw_temp", *mrw).ok() ||
      !(*engine)->expose("rw_alice", *mrw, alice_only).ok()) {
    pipe.send("error expose failed");
    return 1;
  }
  ExposeOptions write_only;
  write_only.access = kRemoteWrite;
  if ((*engine)->expose("ro_widened", *mro, write_only).code() != StatusCode::kInvalidArgument) {
    pipe.send("error exposing a read-only region for writing was not refused");
    return 1;
  }
  pipe.send("addr " + (*engine)->listenAddress());
  std::vector<Connection> conns;
  int rw_seed = 1;
  for (;;) {
    auto line = pipe.recv(120s);
    if (!line) return 2;
    auto w = words(*line);
    if (w.empty()) continue;
    if (w[0] == "exit") {
      conns.clear();
      engine->reset();
      return 0;
    } else if (w[0] == "accept") {
      auto c = (*engine)->accept(30s);
      if (c.ok()) conns.push_back(std::move(*c));
      pipe.send(c.ok() ? "ok" : "error " + c.status().toString());
    } else if (w[0] == "revoke") {
      (*engine)->unexpose("gone");
      gone_region = MemoryRegion();  // deregistered; the memory itself stays mapped and filled
      pipe.send("ok");
    } else if (w[0] == "unexpose") {  // the region stays registered (and exposed as "rw")
      (*engine)->unexpose(w.at(1));
      pipe.send("ok");
    } else if (w[0] == "legit") {  // the client wrote seed N's pattern into rw
      rw_seed = std::atoi(w.at(1).c_str());
      pipe.send("ok");
    } else if (w[0] == "check") {
      std::string bad = rw.check("rw", rw_seed);
      if (bad.empty()) bad = ro.check("ro", 2);
      if (bad.empty()) bad = gone.check("gone", 3);
      pipe.send(bad.empty() ? "ok" : "bad " + bad);
    } else {
      pipe.send("error unknown command " + w[0]);
    }
  }
}

ZCX_TEST_PEER(probeVerbs) { return Engine::probeTransport("verbs").ok() ? 0 : 1; }

std::vector<Param> transportsHere() {
  std::vector<Param> t = {paramNamed("tcp")};
  PeerProcess probe("probeVerbs", {});
  if (probe.join(30s) == 0) t.push_back(paramNamed("verbs"));
  return t;
}

class SecurityTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    peer_ =
        std::make_unique<PeerProcess>("securityTarget", std::vector<std::string>{GetParam().name});
    auto hello = peer_->pipe().recv(30s);
    ASSERT_TRUE(hello && hello->rfind("addr ", 0) == 0)
        << (hello ? *hello : "target did not start");
    addr_ = hello->substr(5);
    auto e = Engine::create(optionsFor(GetParam(), false));
    ASSERT_TRUE(e.ok()) << e.status().toString();
    engine_ = std::move(*e);
    src_.reset(new uint8_t[kRegion * 3]);
    auto r = engine_->registerMemory(src_.get(), kRegion * 3, kLocalOnly);
    ASSERT_TRUE(r.ok()) << r.status().toString();
    local_ = std::move(*r);
    ASSERT_NO_FATAL_FAILURE(connect());
  }

  void TearDown() override {
    conn_ = Connection();
    if (peer_) {
      peer_->pipe().send("exit");
      EXPECT_EQ(peer_->join(20s), 0) << "target process failed";
    }
    local_ = MemoryRegion();
    engine_.reset();
  }

  std::string cmd(const std::string& line) {
    peer_->pipe().send(line);
    auto r = peer_->pipe().recv(60s);
    return r ? *r : "no answer from target";
  }

  void connect() { connectFrom(*engine_, &conn_); }

  /// `engine` connects to the target, which accepts.
  void connectFrom(Engine& engine, Connection* out) {
    peer_->pipe().send("accept");
    auto c = engine.connect(addr_);
    ASSERT_TRUE(c.ok()) << c.status().toString();
    *out = std::move(*c);
    ASSERT_EQ(peer_->pipe().recv(30s).value_or("none"), "ok");
  }

  /// On verbs the NIC's refusal puts the RC QP in error: a new connection for the next attempt.
  void startOverOnVerbs() {
    if (GetParam().transport != "verbs") return;
    conn_ = Connection();
    ASSERT_NO_FATAL_FAILURE(connect());
  }

  /// `remote` grants reads only: the initiator refuses a write itself, and a descriptor with the
  /// access raised gets the target's refusal.
  void expectRaisedAccessWriteRefused(const RemoteRegion& remote, uint8_t fill, const char* what) {
    EXPECT_EQ(conn_.write(local_, 0, remote, 0, 64).wait(5s).code(), StatusCode::kPermissionDenied)
        << "the initiator's own check";
    RegionDescriptor forged = remote.descriptor();
    forged.access = kRemoteReadWrite;
    auto imported = conn_.importRegion(forged);
    ASSERT_TRUE(imported.ok()) << imported.status().toString();
    std::memset(src_.get(), fill, kRegion);
    expectRefused(conn_.write(local_, 0, *imported, 0, kRegion), what);
  }

  /// An attempt the target must refuse: not ok, and a refusal rather than a timeout.
  void expectRefused(Request r, const char* what) {
    Status s = r.wait(20s);
    EXPECT_FALSE(s.ok()) << what << " succeeded";
    EXPECT_NE(s.code(), StatusCode::kStillInFlight) << what;
    EXPECT_NE(s.code(), StatusCode::kTimedOut) << what << ": " << s.toString();
    EXPECT_EQ(s.code(), StatusCode::kRemoteAccessError) << what << ": " << s.toString();
    // The refusal says why (verbs: the NIC's status; UCX checked RMA: the target's reason), also
    // after the engine held it while the connection's fate was open.
    EXPECT_TRUE(s.message().find("refused") != std::string::npos ||
                s.message().find("remote key revoked or wrong") != std::string::npos)
        << what << ": " << s.toString();
  }

  /// After an attempt: the target's memory is intact and a legitimate write still lands (on a
  /// new connection if the attempt broke this one, as a remote access error does on verbs).
  void expectIntactAndUsable() {
    EXPECT_EQ(cmd("check"), "ok");
    // On verbs the NIC's refusal puts the RC QP in error, which the connection learns
    // asynchronously: always start over there.
    if (GetParam().transport == "verbs" || !conn_.status().ok()) {
      conn_ = Connection();
      ASSERT_NO_FATAL_FAILURE(connect());
    }
    auto rw = conn_.remoteRegion("rw");
    ASSERT_TRUE(rw.ok()) << rw.status().toString();
    ++legit_seed_;
    for (size_t i = 0; i < kRegion; ++i) src_[i] = patternByte(i, legit_seed_);
    Status s = conn_.write(local_, 0, *rw, 0, kRegion).wait(20s);
    ASSERT_TRUE(s.ok()) << "a legitimate write failed: " << s.toString();
    EXPECT_EQ(cmd("legit " + std::to_string(legit_seed_)), "ok");
    EXPECT_EQ(cmd("check"), "ok");
  }

  /// The owner's UNEXPOSE frame reaches us asynchronously; until it does, the copy from the
  /// handshake is still handed out (and refused at access). Then lookups say NotFound.
  void expectLookupSaysNotFound(const std::string& name) {
    auto until = std::chrono::steady_clock::now() + 5s;
    Status lookup = conn_.remoteRegion(name).status();
    while (lookup.ok() && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);
      lookup = conn_.remoteRegion(name).status();
    }
    EXPECT_EQ(lookup.code(), StatusCode::kNotFound) << name << ": " << lookup.toString();
  }

  /// `name`'s descriptor with its range widened by one guard on each side.
  RegionDescriptor widened(const std::string& name) {
    auto r = conn_.remoteRegion(name);
    EXPECT_TRUE(r.ok()) << r.status().toString();
    RegionDescriptor d = r.ok() ? r->descriptor() : RegionDescriptor{};
    d.address -= kGuard;
    d.length += 2 * kGuard;
    return d;
  }

  std::unique_ptr<PeerProcess> peer_;
  std::string addr_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<uint8_t[]> src_;
  MemoryRegion local_;
  Connection conn_;
  unsigned legit_seed_ = 10;
};

TEST_P(SecurityTest, WriteToAReadOnlyRegionWithRaisedAccessIsRefused) {
  auto ro = conn_.remoteRegion("ro");
  ASSERT_TRUE(ro.ok()) << ro.status().toString();
  ASSERT_NO_FATAL_FAILURE(expectRaisedAccessWriteRefused(*ro, 0x5A, "write to a read-only region"));
  expectIntactAndUsable();
}

TEST_P(SecurityTest, WritesBeforeAndAfterAnExposedRegionAreRefused) {
  std::memset(src_.get(), 0x5B, kRegion);
  auto before = conn_.importRegion(widened("rw"));
  ASSERT_TRUE(before.ok()) << before.status().toString();
  expectRefused(conn_.write(local_, 0, *before, 0, kGuard), "write of 64 KiB before the region");
  expectIntactAndUsable();
  auto after = conn_.importRegion(widened("rw"));
  ASSERT_TRUE(after.ok()) << after.status().toString();
  expectRefused(conn_.write(local_, 0, *after, kGuard + kRegion, kGuard),
                "write of 64 KiB after the region");
  expectIntactAndUsable();
  // Straddling the end: most of it inside, the last byte outside.
  auto straddle = conn_.importRegion(widened("rw"));
  ASSERT_TRUE(straddle.ok());
  expectRefused(conn_.write(local_, 0, *straddle, kGuard + 1, kRegion), "write straddling the end");
  expectIntactAndUsable();
}

TEST_P(SecurityTest, ReadOutsideAnyExposedRegionLeaksNothing) {
  auto forged = conn_.importRegion(widened("ro"));
  ASSERT_TRUE(forged.ok()) << forged.status().toString();
  std::memset(src_.get(), 0x00, kRegion * 3);
  expectRefused(conn_.read(local_, 0, *forged, 0, kGuard), "read of the guard before");
  expectRefused(conn_.read(local_, kGuard, *forged, kGuard + kRegion, kGuard),
                "read of the guard after");
  for (size_t i = 0; i < 2 * kGuard; ++i)
    ASSERT_NE(src_[i], kGuardByte) << "a byte of unexposed memory reached us at " << i;
  expectIntactAndUsable();
  // The exposed part itself still reads fine through an honest descriptor.
  auto ro = conn_.remoteRegion("ro");
  ASSERT_TRUE(ro.ok());
  ASSERT_TRUE(conn_.read(local_, 0, *ro, 0, kRegion).wait(20s).ok());
  for (size_t i = 0; i < kRegion; ++i) ASSERT_EQ(src_[i], patternByte(i, 2)) << i;
}

TEST_P(SecurityTest, RevokedRegionIsUnreachableEvenWithACachedDescriptor) {
  auto gone = conn_.remoteRegion("gone");
  ASSERT_TRUE(gone.ok()) << gone.status().toString();
  RegionDescriptor cached = gone->descriptor();
  ASSERT_EQ(cmd("revoke"), "ok");
  std::memset(src_.get(), 0x5C, kRegion);
  expectRefused(conn_.write(local_, 0, *gone, 0, kRegion), "write to a revoked region");
  expectIntactAndUsable();
  auto again = conn_.importRegion(cached);
  ASSERT_TRUE(again.ok()) << again.status().toString();
  expectRefused(conn_.read(local_, 0, *again, 0, kRegion), "read of a revoked region");
  expectLookupSaysNotFound("gone");
  expectIntactAndUsable();
}

TEST_P(SecurityTest, ReadOnlyExposureOfAReadWriteRegionRefusesWrites) {
  auto view = conn_.remoteRegion("rw_read_only");
  ASSERT_TRUE(view.ok()) << view.status().toString();
  EXPECT_EQ(view->descriptor().access, kRemoteRead);
  ASSERT_NO_FATAL_FAILURE(expectRaisedAccessWriteRefused(
      *view, 0x5D, "write through a read-only exposure of a read-write region"));
  expectIntactAndUsable();
  // What it grants, it grants: the region reads back as the last legitimate write left it.
  view = conn_.remoteRegion("rw_read_only");
  ASSERT_TRUE(view.ok()) << view.status().toString();
  std::memset(src_.get(), 0, kRegion);
  ASSERT_TRUE(conn_.read(local_, 0, *view, 0, kRegion).wait(20s).ok());
  for (size_t i = 0; i < kRegion; ++i) ASSERT_EQ(src_[i], patternByte(i, legit_seed_)) << i;
}

TEST_P(SecurityTest, UnexposeAloneRevokesWhatTheExposureHandedOut) {
  auto temp = conn_.remoteRegion("rw_temp");
  ASSERT_TRUE(temp.ok()) << temp.status().toString();
  RegionDescriptor cached = temp->descriptor();
  for (size_t i = 0; i < kRegion; ++i) src_[i] = patternByte(i, 50);
  ASSERT_TRUE(conn_.write(local_, 0, *temp, 0, kRegion).wait(20s).ok()) << "before unexpose";
  ASSERT_EQ(cmd("legit 50"), "ok");
  ASSERT_EQ(cmd("unexpose rw_temp"), "ok");
  std::memset(src_.get(), 0x22, kRegion);
  expectRefused(conn_.write(local_, 0, *temp, 0, kRegion), "write after unexpose");
  ASSERT_NO_FATAL_FAILURE(startOverOnVerbs());
  auto again = conn_.importRegion(cached);
  ASSERT_TRUE(again.ok()) << again.status().toString();
  expectRefused(conn_.read(local_, 0, *again, 0, kRegion), "read after unexpose");
  ASSERT_NO_FATAL_FAILURE(startOverOnVerbs());
  // The region itself is still registered and exposed as "rw": it holds the first write.
  auto rw = conn_.remoteRegion("rw");
  ASSERT_TRUE(rw.ok()) << rw.status().toString();
  std::memset(src_.get(), 0, kRegion);
  ASSERT_TRUE(conn_.read(local_, 0, *rw, 0, kRegion).wait(20s).ok());
  for (size_t i = 0; i < kRegion; ++i) ASSERT_EQ(src_[i], patternByte(i, 50)) << "byte " << i;
  expectLookupSaysNotFound("rw_temp");
  expectIntactAndUsable();
}

TEST_P(SecurityTest, PeerOutsideTheAllowListCannotLookTheRegionUp) {
  EXPECT_EQ(conn_.remoteRegion("rw_alice", 2s).status().code(), StatusCode::kNotFound)
      << "mallory looked up alice's region";
  // alice can, and her write lands.
  auto alice = Engine::create(optionsFor(GetParam(), false, "alice"));
  ASSERT_TRUE(alice.ok()) << alice.status().toString();
  auto alice_src = (*alice)->allocate(kRegion, kLocalOnly);
  ASSERT_TRUE(alice_src.ok());
  Connection ac;
  ASSERT_NO_FATAL_FAILURE(connectFrom(**alice, &ac));
  // The first lookup makes alice's grant (verbs: registration, window, bind through her QP).
  const auto t0 = std::chrono::steady_clock::now();
  auto region = ac.remoteRegion("rw_alice", 5s);
  ASSERT_TRUE(region.ok()) << region.status().toString();
  const auto t1 = std::chrono::steady_clock::now();
  auto tcp_rtt = ac.remoteRegion("no_such_region", 5s);  // one control round trip, no grant
  const auto t2 = std::chrono::steady_clock::now();
  EXPECT_EQ(tcp_rtt.status().code(), StatusCode::kNotFound);
  std::cout << "[ figures  ] " << GetParam().name << ": first scoped lookup (grant made) "
            << std::chrono::duration<double, std::micro>(t1 - t0).count()
            << " us; a lookup round trip without a grant "
            << std::chrono::duration<double, std::micro>(t2 - t1).count() << " us\n";
  for (size_t i = 0; i < kRegion; ++i) alice_src->data()[i] = patternByte(i, 77);
  ASSERT_TRUE(ac.write(*alice_src, 0, *region, 0, kRegion).wait(20s).ok());
  ASSERT_EQ(cmd("legit 77"), "ok");
  EXPECT_EQ(cmd("check"), "ok");
}

TEST_P(SecurityTest, PeerOutsideTheAllowListIsRefusedWithALeakedDescriptor) {
  if (GetParam().transport == "verbs" &&
      engine_->transportDescription().find("mw=type2") == std::string::npos) {
    // Without type-2 memory windows a per-connection registration's rkey works on every QP of
    // the protection domain (docs/SECURITY.md).
    GTEST_SKIP() << "this RDMA device has no type-2 memory windows: "
                 << engine_->transportDescription();
  }
  auto alice = Engine::create(optionsFor(GetParam(), false, "alice"));
  ASSERT_TRUE(alice.ok()) << alice.status().toString();
  Connection ac;
  ASSERT_NO_FATAL_FAILURE(connectFrom(**alice, &ac));
  auto region = ac.remoteRegion("rw_alice", 5s);
  ASSERT_TRUE(region.ok()) << region.status().toString();
  // alice leaks her descriptor to mallory (or mallory guessed it): the target still refuses.
  auto leaked = conn_.importRegion(region->descriptor());
  ASSERT_TRUE(leaked.ok()) << leaked.status().toString();
  std::memset(src_.get(), 0x66, kRegion);
  expectRefused(conn_.write(local_, 0, *leaked, 0, kRegion), "mallory's write with alice's key");
  ASSERT_NO_FATAL_FAILURE(startOverOnVerbs());
  leaked = conn_.importRegion(region->descriptor());  // for this (maybe new) connection
  ASSERT_TRUE(leaked.ok()) << leaked.status().toString();
  expectRefused(conn_.read(local_, 0, *leaked, 0, kRegion), "mallory's read with alice's key");
  for (size_t i = 0; i < kRegion; ++i)
    ASSERT_EQ(src_[i], 0x66) << "a byte reached mallory at " << i;
  expectIntactAndUsable();
  // alice's own key still works after mallory's attempts.
  auto alice_src = (*alice)->allocate(kRegion, kLocalOnly);
  ASSERT_TRUE(alice_src.ok());
  for (size_t i = 0; i < kRegion; ++i) alice_src->data()[i] = patternByte(i, 78);
  ASSERT_TRUE(ac.write(*alice_src, 0, *region, 0, kRegion).wait(20s).ok());
  ASSERT_EQ(cmd("legit 78"), "ok");
  EXPECT_EQ(cmd("check"), "ok");
}

INSTANTIATE_TEST_SUITE_P(Transports, SecurityTest, ::testing::ValuesIn(transportsHere()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace zcx::test

int main(int argc, char** argv) {
  int peer = zcx::test::runPeerIfAsked(argc, argv);
  if (peer >= 0) return peer;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

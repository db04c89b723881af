// The protocol between zcx_perf's client and server: control messages on connection 0, and the
// layout and data patterns of the test regions both sides must agree on.
//
// The client drives every test; the server learns the test from the client's hello and serves
// the data connections (1..qps). Per size: start -> started, the client runs, done -> result
// (the server's verification and CPU time). Bye ends the session; error carries a failure's
// text to the peer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <type_traits>

#include "perf_common.h"
#include "zcx/zcx.h"

namespace zcx::perf {

constexpr uint32_t kMagic = 0x7a637866;  // "zcxf"
constexpr int kMaxQps = 64;
constexpr uint64_t kMaxSize = 1ull << 30;
/// Salt of the server's replies in verified latency tests (distinct from the client's data).
constexpr uint64_t kServerSalt = 0x5e5e5e5e12345678ull;
constexpr auto kCtlTimeout = std::chrono::milliseconds(600000);

enum MsgType : uint32_t { kHello = 1, kReady, kStart, kStarted, kDone, kResult, kBye, kError };

/// Control message (connection 0). Both ends are this program on the same architecture.
struct Ctl {
  uint32_t magic = kMagic;
  uint32_t type = 0;
  uint32_t test = 0;
  uint32_t qps = 0;
  uint32_t depth = 0;
  uint32_t slots = 0;
  uint32_t verify = 0;
  uint32_t pad = 0;
  uint64_t size = 0;
  uint64_t max_size = 0;
  uint64_t seed = 0;
  uint64_t errors = 0;
  uint64_t checked = 0;
  uint64_t counts[kMaxQps] = {};
  uint64_t cpu_ns = 0;   ///< kResult: the server's CPU time over the round (every thread)
  uint64_t wall_ns = 0;  ///< kResult: the wall time that was measured over
  char text[256] = {};
};
static_assert(std::is_trivially_copyable_v<Ctl>);

/// One side's end of the control connection: a registered two-message buffer (receive, send)
/// and at most one posted receive.
class CtlChannel {
 public:
  Status init(Engine& eng, Connection c);
  Connection& conn() { return conn_; }

  Status send(Ctl m);
  Status sendError(const Status& s);
  /// Posts the control receive if none is posted; true once a message is there.
  bool ready();
  Result<Ctl> recv(std::chrono::milliseconds timeout = kCtlTimeout);
  /// recv() of a message of `type`; another type is a protocol error.
  Result<Ctl> expect(uint32_t type);

 private:
  Connection conn_;
  MemoryRegion region_;
  Request pending_;
};

/// Bytes of the test region on each side.
inline size_t regionBytes(TestKind k, uint64_t max_size, int qps, int slots) {
  if (isLatency(k)) return 2 * max_size;  // [0,max): receive area; [max,2max): send area
  return static_cast<size_t>(qps) * slots * max_size;
}

/// write_lat without --verify: the last byte of message `i`, polled for by the receiver.
inline uint8_t markerOf(uint64_t i) { return static_cast<uint8_t>(i % 255 + 1); }

inline uint8_t loadByte(const uint8_t* p) {
  uint8_t v = *reinterpret_cast<const volatile uint8_t*>(p);
  std::atomic_thread_fence(std::memory_order_acquire);
  return v;
}

}  // namespace zcx::perf

// zcx_perf: perftest-style bandwidth and latency tool for zcx.
//
//   server:  zcx_perf --listen HOST[:PORT] [--auth-secret-file PATH] [options]
//   client:  zcx_perf [--auth-secret-file PATH] [options] SERVER
//   both:    zcx_perf --loopback [options]      (forks its own server on 127.0.0.1)
//   MPI:     mpirun -np N zcx_perf --mpi [options]
//
// The client drives every test; the server learns the test from the client's hello message on a
// control connection (connection 0) and serves the data connections (1..qps). Progress is manual
// (the measuring thread busy-polls, like perftest); the server keeps progressing until the client
// says a round is done, since UCX over tcp emulates one-sided operations in software.
#include <fcntl.h>
#include <gflags/gflags.h>
#include <glog/logging.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#if ZCX_PERF_HAVE_MPI
#include <mpi.h>
#endif

#include "perf_common.h"
#include "zcx/zcx.h"

DEFINE_string(test, "write_bw", "write_bw|read_bw|send_bw|write_lat|read_lat|send_lat");
DEFINE_string(size, "65536", "message size in bytes (suffixes K, M, KiB, MiB allowed)");
DEFINE_bool(all, false, "run every power-of-two size from 2 B to 8 MiB");
DEFINE_int64(iters, 0, "operations per connection and size (0: automatic, perftest-like)");
DEFINE_double(duration, 0, "run each size for this many seconds instead of --iters");
DEFINE_int32(depth, 16, "operations in flight per connection (bandwidth tests)");
DEFINE_int32(qps, 1, "data connections (bandwidth tests)");
DEFINE_bool(unsignaled, false,
            "write_bw: Connection::writeUnsignaled with a flush() every --depth x 64 writes "
            "(at most two outstanding) instead of one Request per write: the raw message rate");
DEFINE_int32(slots, 0,
             "buffers per connection that bandwidth tests cycle through (0: one, shared by the "
             "operations in flight like perftest; with --verify one per operation in flight)");
DEFINE_int32(batch, 1,
             "write_bw/read_bw: messages per request (writeBatch/readBatch; one completion each)");
DEFINE_string(transport, "auto", "auto|ucx|verbs");
DEFINE_string(device, "", "RDMA device (verbs), e.g. rxe0");
DEFINE_int32(gid_index, -1, "GID index (verbs; -1: automatic)");
DEFINE_int32(port, 18515, "TCP port of the zcx control listener");
DEFINE_string(listen, "127.0.0.1",
              "server and --mpi ranks: HOST or HOST:PORT to listen on (PORT: --port; [v6]:PORT "
              "for IPv6). The default serves this machine only: to serve other nodes give this "
              "node's address (or 0.0.0.0 for every interface) together with --auth-secret-file");
DEFINE_string(auth_secret_file, "",
              "--auth-secret-file PATH: shared secret peers must prove they know (the same file "
              "content on every side; chmod 600). Without it anyone who reaches the port may "
              "connect");
DEFINE_string(name, "zcx_perf", "this engine's name, as peers see it (and match --expose_to)");
DEFINE_string(metadata, "",
              "etcd://HOST:PORT[,HOST:PORT...]: the server publishes itself there under --name; "
              "a client then takes that name where it took the server's host");
DEFINE_string(advertise_host, "",
              "with --metadata: the host published for clients to dial (needed with --listen "
              "0.0.0.0)");
DEFINE_string(expose_to, "",
              "NAME,NAME,...: expose this side's buffer only to peers of these --name values "
              "(others cannot look it up, and the target refuses their keys; see "
              "docs/SECURITY.md for what each transport enforces). Default: every peer");
DEFINE_bool(verify, false, "check the bytes that arrived (slows the run)");
DEFINE_bool(json, false, "print one JSON object per result line instead of the table");
DEFINE_int32(progress_spin_us, 50,
             "how long progress polls after the last event before it sleeps on the transport's "
             "fd (EngineOptions::progress_spin; 0-1000000)");
DEFINE_bool(cpu_util, false,
            "report each side's CPU use (% of one core, every thread of the process) and "
            "CPU-seconds per GB moved");
DEFINE_bool(loopback, false, "start a server process on 127.0.0.1 and run the client against it");
DEFINE_bool(persistent, false, "server: keep serving clients instead of exiting after one");
DEFINE_string(ucx_tls, "",
              "UCX transports (transport parameter ucx.tls), e.g. tcp,self or posix,cma,self");
DEFINE_string(ucx_net_devices, "", "UCX network devices (ucx.net_devices), e.g. lo");
DEFINE_string(mem, "alloc",
              "memory: alloc (Engine::allocate) or user (aligned malloc + registerMemory)");
DEFINE_uint64(seed, 1, "seed of the --verify data pattern");
DEFINE_int32(ready_fd, -1,
             "internal (--loopback): server writes its port to this fd when listening");
DEFINE_bool(mpi, false,
            "bootstrap through MPI and measure write_bw between every pair (or a ring)");
DEFINE_string(mpi_pattern, "pairs",
              "--mpi: pairs (every ordered pair, one at a time) or ring (all at once)");
DEFINE_bool(quiet, true, "log only warnings and errors of the library");
DEFINE_bool(metrics, false,
            "print the engine's metrics (Prometheus text, Engine::metricsText()) at the end of "
            "the run, on the client and on the server (stderr with --json)");

namespace zcx::perf {
namespace {

/// The ExposeOptions of every exposure zcx_perf makes (--expose_to).
ExposeOptions exposeOptions() {
  ExposeOptions o;
  std::string list = FLAGS_expose_to;
  for (size_t start = 0; start < list.size();) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    if (comma > start) o.peers.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return o;
}

using namespace std::chrono_literals;

constexpr uint32_t kMagic = 0x7a637866;  // "zcxf"
constexpr int kMaxQps = 64;
constexpr uint64_t kMaxSize = 1ull << 30;
constexpr size_t kMaxMessage = (8u << 20) + 4096;
constexpr uint64_t kServerSalt = 0x5e5e5e5e12345678ull;
constexpr auto kCtlTimeout = std::chrono::milliseconds(600000);
constexpr int kExitUsage = 2, kExitFail = 1, kExitVerify = 3;

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

Status err(StatusCode c, std::string m) { return Status(c, std::move(m)); }

bool parseSize(const std::string& s, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (end == s.c_str() || errno || s[0] == '-') return false;
  std::string suf(end);
  uint64_t mul = 1;
  if (suf.empty() || suf == "B")
    mul = 1;
  else if (suf == "K" || suf == "KiB" || suf == "k")
    mul = 1024;
  else if (suf == "M" || suf == "MiB" || suf == "m")
    mul = 1024 * 1024;
  else if (suf == "G" || suf == "GiB" || suf == "g")
    mul = 1024ull * 1024 * 1024;
  else
    return false;
  *out = v * mul;
  return true;
}

// ------------------------------------------------------------------ engine and control channel

Result<std::unique_ptr<Engine>> makeEngine(const std::string& listen, ProgressMode mode) {
  EngineOptions o;
  o.transport = FLAGS_transport;
  o.device = FLAGS_device;
  o.gid_index = FLAGS_gid_index;
  if (!FLAGS_ucx_tls.empty()) o.transport_params["ucx.tls"] = FLAGS_ucx_tls;
  if (!FLAGS_ucx_net_devices.empty()) o.transport_params["ucx.net_devices"] = FLAGS_ucx_net_devices;
  o.listen_address = listen;
  o.auth_secret_file = FLAGS_auth_secret_file;
  o.name = FLAGS_name;
  o.metadata = FLAGS_metadata;
  o.advertise_host = FLAGS_advertise_host;
  o.progress = mode;
  o.progress_spin = std::chrono::microseconds(FLAGS_progress_spin_us);
  o.connect_timeout = 20s;
  o.operation_timeout = 120s;
  o.max_message_size = kMaxMessage;
  return Engine::create(o);
}

/// --listen as "host:port": a bare host (or bracketed IPv6 address) gets `default_port`.
std::string listenAddress(int default_port) {
  const std::string& l = FLAGS_listen;
  const auto colon = l.rfind(':');
  const bool has_port = l.front() == '[' ? l.find("]:") != std::string::npos
                                         : colon != std::string::npos && l.find(':') == colon;
  if (has_port) return l;
  const bool bare_v6 = l.front() != '[' && l.find(':') != std::string::npos;
  return (bare_v6 ? "[" + l + "]" : l) + ":" + std::to_string(default_port);
}

/// Memory for the test: Engine::allocate (default: what ucx_perftest uses too) or user memory.
struct Buffer {
  MemoryRegion region;
  void* owned = nullptr;
  ~Buffer() {
    region = MemoryRegion();
    std::free(owned);
  }
  uint8_t* data() const { return region.data(); }
};

Status makeBuffer(Engine& eng, size_t len, uint32_t access, Buffer* b) {
  if (FLAGS_mem == "user") {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, len) != 0)
      return err(StatusCode::kResourceExhausted, "posix_memalign failed");
    std::memset(p, 0, len);
    auto r = eng.registerMemory(p, len, access);
    if (!r.ok()) {
      std::free(p);
      return r.status();
    }
    b->owned = p;
    b->region = std::move(r.value());
  } else {
    auto r = eng.allocate(len, access);
    if (!r.ok()) return r.status();
    b->region = std::move(r.value());
    std::memset(b->region.data(), 0, len);
  }
  return Status::Ok();
}

class CtlChannel {
 public:
  Status init(Engine& eng, Connection c) {
    conn_ = std::move(c);
    auto r = eng.allocate(2 * sizeof(Ctl), kLocalOnly);
    if (!r.ok()) return r.status();
    region_ = std::move(r.value());
    return Status::Ok();
  }
  Connection& conn() { return conn_; }

  Status send(Ctl m) {
    m.magic = kMagic;
    std::memcpy(region_.data() + sizeof(Ctl), &m, sizeof m);
    Request r = conn_.send(region_, sizeof(Ctl), sizeof(Ctl));
    return r.wait(kCtlTimeout).withContext("control send");
  }
  Status sendError(const Status& s) {
    Ctl m;
    m.type = kError;
    std::snprintf(m.text, sizeof m.text, "%s", s.toString().c_str());
    return send(m);
  }
  /// Posts the control receive if none is posted; true once a message is there.
  bool ready() {
    if (!pending_.valid()) pending_ = conn_.recv(region_, 0, sizeof(Ctl));
    return pending_.done();
  }
  Result<Ctl> recv(std::chrono::milliseconds timeout = kCtlTimeout) {
    ready();
    Status s = pending_.wait(timeout);
    if (!s.ok()) {
      if (s.code() != StatusCode::kStillInFlight) pending_ = Request();
      return s.withContext("control receive");
    }
    size_t n = pending_.bytes();
    pending_ = Request();
    if (n != sizeof(Ctl))
      return err(StatusCode::kProtocolError, "control message of unexpected size");
    Ctl m;
    std::memcpy(&m, region_.data(), sizeof m);
    if (m.magic != kMagic)
      return err(StatusCode::kProtocolError, "control message with a bad magic");
    if (m.type == kError) {
      m.text[sizeof m.text - 1] = 0;
      return err(StatusCode::kInternal, std::string("peer reported: ") + m.text);
    }
    return m;
  }
  Result<Ctl> expect(uint32_t type) {
    auto m = recv();
    if (!m.ok()) return m;
    if (m->type != type) {
      return err(StatusCode::kProtocolError, "control message " + std::to_string(m->type) +
                                                 " where " + std::to_string(type) +
                                                 " was expected");
    }
    return m;
  }

 private:
  Connection conn_;
  MemoryRegion region_;
  Request pending_;
};

/// Bytes of the test region on each side.
/// The figures of `messages` of `size` bytes moved in `secs`; the peak is at least the average.
void setRates(PerfResult* res, uint64_t messages, uint64_t size, double secs, double peak = 0) {
  res->iterations = messages;
  res->seconds = secs;
  res->bw_avg_MBps = double(messages) * double(size) / secs / 1e6;
  res->bw_peak_MBps = std::max(peak, res->bw_avg_MBps);
  res->msg_rate_Mpps = double(messages) / secs / 1e6;
}

size_t regionBytes(TestKind k, uint64_t max_size, int qps, int slots) {
  if (isLatency(k)) return 2 * max_size;  // [0,max): receive area; [max,2max): send area
  return static_cast<size_t>(qps) * slots * max_size;
}

inline uint8_t markerOf(uint64_t i) { return static_cast<uint8_t>(i % 255 + 1); }

inline uint8_t loadByte(const uint8_t* p) {
  uint8_t v = *reinterpret_cast<const volatile uint8_t*>(p);
  std::atomic_thread_fence(std::memory_order_acquire);
  return v;
}

// ------------------------------------------------------------------ server

class Server {
 public:
  explicit Server(Engine& eng) : eng_(eng) {}

  Status serve(Connection ctl_conn) {
    ZCX_RETURN_IF_ERROR(ctl_.init(eng_, std::move(ctl_conn)));
    Status s = session();
    if (!s.ok()) {
      (void)ctl_.sendError(s);
      ctl_.conn().close();
    }
    for (auto& c : data_) c.close();
    ctl_.conn().close();
    eng_.unexpose("zcx_perf");
    return s;
  }

 private:
  Status session() {
    auto hello = ctl_.expect(kHello);
    if (!hello.ok()) return hello.status();
    h_ = *hello;
    if (h_.qps < 1 || h_.qps > kMaxQps || h_.depth < 1 || h_.slots < 1 || h_.max_size < 1 ||
        h_.max_size > kMaxSize || !parseTestKind(h_.test)) {
      return err(StatusCode::kInvalidArgument, "bad hello from the client");
    }
    kind_ = static_cast<TestKind>(h_.test);
    for (uint32_t q = 0; q < h_.qps; ++q) {
      auto c = eng_.accept(30s);
      if (!c.ok()) return c.status().withContext("accepting data connection " + std::to_string(q));
      data_.push_back(std::move(c.value()));
    }
    size_t bytes = regionBytes(kind_, h_.max_size, h_.qps, h_.slots);
    ZCX_RETURN_IF_ERROR(makeBuffer(eng_, bytes, kRemoteReadWrite, &buf_));
    if (h_.verify && (kind_ == TestKind::kReadBw || kind_ == TestKind::kReadLat)) {
      // Reads fetch a fixed pattern: slot i holds the prefix of pattern i.
      size_t nslots = isLatency(kind_) ? 1 : size_t{h_.qps} * h_.slots;
      for (size_t i = 0; i < nslots; ++i)
        fillPattern(buf_.data() + i * h_.max_size, h_.max_size, h_.seed, i);
    }
    ZCX_RETURN_IF_ERROR(eng_.expose("zcx_perf", buf_.region, exposeOptions()));
    if (kind_ == TestKind::kWriteLat) {
      auto r = data_[0].remoteRegion("zcx_perf_client");
      if (!r.ok()) return r.status().withContext("looking up the client's region");
      peer_region_ = std::move(r.value());
    }
    Ctl ready;
    ready.type = kReady;
    ZCX_RETURN_IF_ERROR(ctl_.send(ready));
    for (;;) {
      auto m = ctl_.recv();
      if (!m.ok()) return m.status();
      if (m->type == kBye) return Status::Ok();
      if (m->type != kStart) return err(StatusCode::kProtocolError, "expected start or bye");
      ZCX_RETURN_IF_ERROR(round(*m));
    }
  }

  static bool parseTestKind(uint32_t t) { return t >= 1 && t <= 6; }

  Status round(const Ctl& start) {
    const uint64_t size = start.size;
    if (size < 1 || size > h_.max_size)
      return err(StatusCode::kInvalidArgument, "round size out of range");
    uint64_t errors = 0, checked = 0;
    std::vector<uint64_t> received(h_.qps, 0);
    if (kind_ == TestKind::kWriteLat) std::memset(buf_.data(), 0, size);
    if (kind_ == TestKind::kSendBw && rings_.empty()) {
      rings_.resize(h_.qps);
      for (uint32_t q = 0; q < h_.qps; ++q) {
        rings_[q].reqs.resize(h_.depth);
        for (uint32_t j = 0; j < h_.depth; ++j) rings_[q].reqs[j] = postRecv(q, j);
      }
    }
    if (kind_ == TestKind::kSendLat && !lat_recv_.valid())
      lat_recv_ = data_[0].recv(buf_.region, 0, h_.max_size);
    Ctl started;
    started.type = kStarted;
    ZCX_RETURN_IF_ERROR(ctl_.send(started));
    const CpuSample cpu_start = CpuSample::now();

    bool done = false;
    Ctl fin;
    if (kind_ == TestKind::kWriteBw || kind_ == TestKind::kReadBw || kind_ == TestKind::kReadLat) {
      // The passive side has nothing to do but wait for the client's "done": it waits in
      // Request::wait, which spins briefly and then sleeps on the transport's fd (progress
      // still runs for transports that need the target, e.g. UCX tcp). Spinning progress()
      // here would take a core, on soft-RoCE the one the device's work needs (perftest's
      // passive side sleeps too).
      auto m = ctl_.recv();
      if (!m.ok()) return m.status();
      if (m->type != kDone) return err(StatusCode::kProtocolError, "expected done");
      fin = *m;
      done = true;
    }
    uint64_t i = 0;  // latency tests: iteration
    Request last;    // latency tests: our previous reply
    auto checkDone = [&]() -> Status {
      if (!done && ctl_.ready()) {
        auto m = ctl_.recv();
        if (!m.ok()) return m.status();
        if (m->type != kDone) return err(StatusCode::kProtocolError, "expected done");
        fin = *m;
        done = true;
      }
      return Status::Ok();
    };
    auto reply = [&](uint64_t iter) -> Status {
      if (last.valid()) ZCX_RETURN_IF_ERROR(last.wait().withContext("previous reply"));
      uint8_t* src = buf_.data() + h_.max_size;
      if (h_.verify) fillPattern(src, size, h_.seed ^ kServerSalt, iter);
      if (kind_ == TestKind::kWriteLat) {
        src[size - 1] = markerOf(iter);
        if (h_.verify) {
          // The marker byte may land before the rest of the message (no transport orders the
          // bytes of one write): a verified run waits for the notification instead.
          RmaOp op{&buf_.region, h_.max_size, &peer_region_, 0, size};
          last = data_[0].writeWithNotify({&op, 1}, static_cast<uint32_t>(iter));
        } else {
          last = data_[0].write(buf_.region, h_.max_size, peer_region_, 0, size);
        }
      } else {
        last = data_[0].send(buf_.region, h_.max_size, size);
      }
      return Status::Ok();
    };
    auto deadline_guard = Clock::now();
    (void)deadline_guard;

    for (uint64_t spin = 0;; ++spin) {
      eng_.progress();
      if ((spin & 63) == 0 || kind_ == TestKind::kWriteBw || kind_ == TestKind::kReadBw ||
          kind_ == TestKind::kReadLat) {
        ZCX_RETURN_IF_ERROR(checkDone());
      }
      switch (kind_) {
        case TestKind::kWriteBw:
        case TestKind::kReadBw:
        case TestKind::kReadLat: break;
        case TestKind::kSendBw:
          for (uint32_t q = 0; q < h_.qps; ++q) {
            Ring& r = rings_[q];
            while (r.reqs[r.head].done()) {
              auto st = r.reqs[r.head].test();
              if (!st->ok()) return st->withContext("receive");
              if (h_.verify) {
                size_t n = r.reqs[r.head].bytes();
                if (n != size) {
                  errors += size;
                } else {
                  errors += countMismatches(slotPtr(q, r.head), size, h_.seed,
                                            received[q] + (uint64_t{q} << 40));
                  checked += size;
                }
              }
              ++received[q];
              r.reqs[r.head] = postRecv(q, r.head);
              r.head = (r.head + 1) % h_.depth;
            }
          }
          break;
        case TestKind::kWriteLat: {
          const uint8_t* mark = buf_.data() + size - 1;
          bool arrived = false;
          if (h_.verify) {
            auto note = data_[0].pollNotification();
            if (note && *note != static_cast<uint32_t>(i)) {
              return err(StatusCode::kProtocolError, "write_lat: notification out of order");
            }
            arrived = note.has_value();
          } else {
            arrived = loadByte(mark) == markerOf(i);
          }
          if (arrived) {
            if (h_.verify) {
              errors += countMismatches(buf_.data(), size - 1, h_.seed, i);
              checked += size;
            }
            ZCX_RETURN_IF_ERROR(reply(i));
            ++i;
          }
          break;
        }
        case TestKind::kSendLat:
          if (lat_recv_.done()) {
            auto st = lat_recv_.test();
            if (!st->ok()) return st->withContext("receive");
            if (h_.verify) {
              if (lat_recv_.bytes() != size)
                errors += size;
              else
                errors += countMismatches(buf_.data(), size, h_.seed, i);
              checked += size;
            }
            lat_recv_ = data_[0].recv(buf_.region, 0, h_.max_size);
            ZCX_RETURN_IF_ERROR(reply(i));
            ++i;
          }
          break;
      }
      if (done) {
        if (kind_ != TestKind::kSendBw) break;
        bool all = true;
        for (uint32_t q = 0; q < h_.qps; ++q) all &= received[q] >= fin.counts[q];
        if (all) break;
      }
    }
    if (last.valid()) ZCX_RETURN_IF_ERROR(last.wait().withContext("last reply"));
    const CpuSample cpu_end = CpuSample::now();  // before the verification below
    if (h_.verify && kind_ == TestKind::kWriteBw) {
      // The last write of every slot (its operation number is in the done message's counts).
      for (uint32_t q = 0; q < h_.qps; ++q) {
        uint64_t n = fin.counts[q];
        for (uint32_t s = 0; s < h_.slots && s < n; ++s) {
          uint64_t last_op =
              n - 1 - ((n - 1 - s) % h_.slots);  // largest op < n with op % slots == s
          errors += countMismatches(slotPtr(q, s), size, h_.seed, last_op + (uint64_t{q} << 40));
          checked += size;
        }
      }
    }
    Ctl res;
    res.type = kResult;
    res.errors = errors;
    res.checked = checked;
    res.cpu_ns = static_cast<uint64_t>(std::max(0.0, cpu_end.cpu_s - cpu_start.cpu_s) * 1e9);
    res.wall_ns = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(cpu_end.wall - cpu_start.wall)
            .count());
    return ctl_.send(res);
  }

  uint8_t* slotPtr(uint32_t q, uint32_t j) {
    return buf_.data() + (size_t{q} * h_.slots + j % h_.slots) * h_.max_size;
  }
  Request postRecv(uint32_t q, uint32_t j) {
    return data_[q].recv(buf_.region, (size_t{q} * h_.slots + j % h_.slots) * h_.max_size,
                         h_.max_size);
  }

  struct Ring {
    std::vector<Request> reqs;
    uint32_t head = 0;
  };

  Engine& eng_;
  CtlChannel ctl_;
  Ctl h_;
  TestKind kind_ = TestKind::kWriteBw;
  std::vector<Connection> data_;
  Buffer buf_;
  RemoteRegion peer_region_;
  std::vector<Ring> rings_;
  Request lat_recv_;
};

/// --metrics: the engine's counters at the end of a run (stdout keeps only JSON with --json).
void printMetrics(const Engine& e, const char* side) {
  if (!FLAGS_metrics) return;
  FILE* out = FLAGS_json ? stderr : stdout;
  std::fprintf(out, "# zcx_perf %s metrics\n%s", side, e.metricsText().c_str());
  std::fflush(out);
}

int runServer() {
  auto eng = makeEngine(listenAddress(FLAGS_port), ProgressMode::kManual);
  if (!eng.ok()) {
    std::fprintf(stderr, "zcx_perf: cannot start the server engine: %s\n",
                 eng.status().toString().c_str());
    return kExitFail;
  }
  Engine& e = **eng;
  std::string addr = e.listenAddress();
  if (FLAGS_ready_fd >= 0) {
    std::string port = addr.substr(addr.rfind(':') + 1) + "\n";
    if (write(FLAGS_ready_fd, port.data(), port.size()) < 0) return kExitFail;
    close(FLAGS_ready_fd);
  }
  std::fprintf(stderr, "zcx_perf server: %s on %s, listening on %s\n",
               std::string(e.transportName()).c_str(), e.transportDescription().c_str(),
               addr.c_str());
  int rc = 0;
  do {
    auto c = e.accept(FLAGS_persistent ? std::chrono::milliseconds(24h)
                                       : std::chrono::milliseconds(600s));
    if (!c.ok()) {
      std::fprintf(stderr, "zcx_perf server: %s\n", c.status().toString().c_str());
      return kExitFail;
    }
    Server srv(e);
    Status s = srv.serve(std::move(c.value()));
    if (!s.ok()) {
      std::fprintf(stderr, "zcx_perf server: client session failed: %s\n", s.toString().c_str());
      rc = kExitFail;
    }
    printMetrics(e, "server");
  } while (FLAGS_persistent);
  return rc;
}

// ------------------------------------------------------------------ client

struct ClientConfig {
  TestKind kind;
  std::vector<uint64_t> sizes;
  int depth, qps, slots, batch;
  bool verify;
};

class Client {
 public:
  Client(Engine& eng, const ClientConfig& cfg) : eng_(eng), cfg_(cfg) {}

  Status run(const std::string& host_port, std::vector<PerfResult>* results) {
    uint64_t max_size = 0;
    for (uint64_t s : cfg_.sizes) max_size = std::max(max_size, s);
    max_size_ = max_size;
    size_t bytes = regionBytes(cfg_.kind, max_size, cfg_.qps, cfg_.slots);
    ZCX_RETURN_IF_ERROR(makeBuffer(
        eng_, bytes, cfg_.kind == TestKind::kWriteLat ? kRemoteWrite : kLocalOnly, &buf_));
    if (cfg_.kind == TestKind::kWriteLat)
      ZCX_RETURN_IF_ERROR(eng_.expose("zcx_perf_client", buf_.region, exposeOptions()));

    auto c = eng_.connect(host_port);
    if (!c.ok()) return c.status().withContext("connecting to " + host_port);
    ZCX_RETURN_IF_ERROR(ctl_.init(eng_, std::move(c.value())));
    Ctl hello;
    hello.type = kHello;
    hello.test = static_cast<uint32_t>(cfg_.kind);
    hello.qps = cfg_.qps;
    hello.depth = cfg_.depth;
    hello.slots = cfg_.slots;
    hello.verify = cfg_.verify;
    hello.max_size = max_size;
    hello.seed = FLAGS_seed;
    ZCX_RETURN_IF_ERROR(ctl_.send(hello));
    for (int q = 0; q < cfg_.qps; ++q) {
      auto d = eng_.connect(host_port);
      if (!d.ok()) return d.status().withContext("data connection " + std::to_string(q));
      data_.push_back(std::move(d.value()));
    }
    auto ready = ctl_.expect(kReady);
    if (!ready.ok()) return ready.status();
    for (auto& d : data_) {
      auto r = d.remoteRegion("zcx_perf");
      if (!r.ok()) return r.status().withContext("looking up the server's region");
      remote_.push_back(std::move(r.value()));
    }
    for (uint64_t size : cfg_.sizes) {
      PerfResult r;
      ZCX_RETURN_IF_ERROR(runSize(size, &r));
      results->push_back(r);
      if (FLAGS_json)
        std::printf("%s\n", toJson(r).c_str()), std::fflush(stdout);
      else
        printRow(r);
    }
    Ctl bye;
    bye.type = kBye;
    ZCX_RETURN_IF_ERROR(ctl_.send(bye));
    for (auto& d : data_) d.close();
    ctl_.conn().close();
    return Status::Ok();
  }

 private:
  uint64_t autoIters(uint64_t size) const {
    if (FLAGS_iters > 0) return FLAGS_iters;
    if (isLatency(cfg_.kind)) return 1000 + 0 * size;
    // perftest runs 5000; fewer for big messages so that --all over tcp stays short.
    return std::clamp<uint64_t>((1ull << 30) / size / cfg_.qps, 200, 5000);
  }

  Status runSize(uint64_t size, PerfResult* res) {
    const uint64_t iters = autoIters(size);
    const bool timed = FLAGS_duration > 0;
    if (cfg_.kind == TestKind::kWriteLat) std::memset(buf_.data(), 0, size);
    size_t cap = timed ? 4'000'000 : iters * cfg_.qps;
    samples_.assign(cap, 0);
    nsamples_ = 0;
    Ctl start;
    start.type = kStart;
    start.size = size;
    ZCX_RETURN_IF_ERROR(ctl_.send(start));
    auto st = ctl_.expect(kStarted);
    if (!st.ok()) return st.status();

    Ctl done;
    done.type = kDone;
    const CpuSample cpu_start = CpuSample::now();
    Status s = isLatency(cfg_.kind) ? latency(size, iters, timed, res, &done)
               : FLAGS_unsignaled   ? unsignaledBandwidth(size, iters, timed, res, &done)
                                    : bandwidth(size, iters, timed, res, &done);
    if (!s.ok()) return s;
    ZCX_RETURN_IF_ERROR(ctl_.send(done));
    const CpuSample cpu_end = CpuSample::now();
    auto result = ctl_.expect(kResult);
    if (!result.ok()) return result.status();
    if (cfg_.kind == TestKind::kSendBw) {
      // A send completes once the transport has the message, not once the peer took it: the
      // run counts as done when the server says every message arrived (its result comes only
      // then), like perftest's send_bw waiting for the receiver.
      double secs = std::chrono::duration<double>(Clock::now() - measure_start_).count();
      setRates(res, res->iterations, size, secs, res->bw_peak_MBps);
    }
    if (FLAGS_cpu_util) {
      res->cpu_measured = true;
      res->cpu_client_s = std::max(0.0, cpu_end.cpu_s - cpu_start.cpu_s);
      res->cpu_client_wall_s = std::chrono::duration<double>(cpu_end.wall - cpu_start.wall).count();
      res->cpu_server_s = static_cast<double>(result->cpu_ns) / 1e9;
      res->cpu_server_wall_s = static_cast<double>(result->wall_ns) / 1e9;
      res->bytes_moved = res->bw_avg_MBps * 1e6 * res->seconds;
    }
    res->test = testName(cfg_.kind);
    res->transport = std::string(eng_.transportName());
    res->transport_description = eng_.transportDescription();
    res->size = size;
    res->depth = isLatency(cfg_.kind) ? 1 : cfg_.depth;
    res->qps = cfg_.qps;
    res->batch = cfg_.batch;
    res->verified = cfg_.verify;
    res->verify_errors += result->errors;
    res->verified_bytes += result->checked;
    samples_.resize(std::min(nsamples_, samples_.size()));
    // Write and send latency are one-way (half the round trip); read is the full round trip.
    double scale =
        (cfg_.kind == TestKind::kWriteLat || cfg_.kind == TestKind::kSendLat) ? 0.5 : 1.0;
    res->lat = computeStats(samples_, scale);
    return Status::Ok();
  }

  void sample(Clock::duration d) {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    samples_[nsamples_ % samples_.size()] =
        static_cast<uint32_t>(std::min<int64_t>(ns, UINT32_MAX));
    ++nsamples_;
  }

  void progressLine(Clock::time_point now, Clock::time_point t0, uint64_t size, double frac,
                    uint64_t bytes) {
    if (!tty_ || now < next_progress_) return;
    if (now - t0 < 2s) return;
    next_progress_ = now + 1s;
    double secs = std::chrono::duration<double>(now - t0).count();
    std::fprintf(stderr, "\r%s %" PRIu64 " B: %3.0f%%  %.1f MB/s   ", testName(cfg_.kind), size,
                 frac * 100, bytes / secs / 1e6);
    progress_shown_ = true;
  }
  void clearProgress() {
    if (progress_shown_) std::fprintf(stderr, "\r\033[K");
    progress_shown_ = false;
  }

  uint8_t* slotPtr(int q, uint64_t n) {
    return buf_.data() + (size_t(q) * cfg_.slots + n % cfg_.slots) * max_size_;
  }
  size_t slotOff(int q, uint64_t n) const {
    return (size_t(q) * cfg_.slots + n % cfg_.slots) * max_size_;
  }

  Request post(int q, uint64_t n, uint64_t size) {
    size_t off = slotOff(q, n);
    if (cfg_.batch > 1) {  // `batch` messages of `size` bytes, all from/to the connection's slot
      for (auto& op : batch_ops_) {
        op = RmaOp{&buf_.region, off, &remote_[q], off, size};
      }
      return cfg_.kind == TestKind::kWriteBw ? data_[q].writeBatch(batch_ops_)
                                             : data_[q].readBatch(batch_ops_);
    }
    switch (cfg_.kind) {
      case TestKind::kWriteBw:
        if (cfg_.verify) fillPattern(buf_.data() + off, size, FLAGS_seed, n + (uint64_t(q) << 40));
        return data_[q].write(buf_.region, off, remote_[q], off, size);
      case TestKind::kReadBw:
        if (cfg_.verify) std::memset(buf_.data() + off, 0, size);
        return data_[q].read(buf_.region, off, remote_[q], off, size);
      default:
        if (cfg_.verify) fillPattern(buf_.data() + off, size, FLAGS_seed, n + (uint64_t(q) << 40));
        return data_[q].send(buf_.region, off, size);
    }
  }

  /// Keeps `depth` operations in flight on every connection; `warm` unmeasured ops first.
  Status bandwidth(uint64_t size, uint64_t iters, bool timed, PerfResult* res, Ctl* done) {
    const int Q = cfg_.qps, D = cfg_.depth;
    const uint64_t B = cfg_.batch;  // messages per request
    iters = (iters + B - 1) / B;    // from here on, counts are requests
    uint64_t warm = timed ? 2 * D : std::min<uint64_t>(iters / 10 + D, 1000);
    std::vector<std::vector<Request>> reqs(Q, std::vector<Request>(D));
    std::vector<std::vector<Clock::time_point>> at(Q, std::vector<Clock::time_point>(D));
    std::vector<uint64_t> posted(Q, 0), completed(Q, 0);
    std::vector<int> head(Q, 0);
    uint64_t verify_errors = 0, verified = 0;

    auto phase = [&](uint64_t target, Clock::time_point stop_at, bool measure, uint64_t* total_done,
                     double* peak) -> Status {
      const uint64_t base_done = *total_done;
      std::vector<uint64_t> goal(Q);
      for (int q = 0; q < Q; ++q) goal[q] = posted[q] + target;
      auto t0 = Clock::now();
      auto win_start = t0;
      uint64_t win_ops = 0;
      bool stopping = false;
      for (int q = 0; q < Q; ++q) {
        for (int k = 0; k < D && posted[q] < goal[q]; ++k) {
          int slot = static_cast<int>(posted[q] % D);
          at[q][slot] = Clock::now();
          reqs[q][slot] = post(q, posted[q], size);
          ++posted[q];
        }
      }
      uint64_t inflight = 0;
      for (int q = 0; q < Q; ++q) inflight += posted[q] - completed[q];
      while (inflight > 0) {
        eng_.progress();
        for (int q = 0; q < Q; ++q) {
          while (posted[q] > completed[q] && reqs[q][head[q]].done()) {
            Request& r = reqs[q][head[q]];
            auto st = r.test();
            if (!st->ok()) return st->withContext(std::string(testName(cfg_.kind)) + " op");
            auto now = Clock::now();
            if (measure) sample(now - at[q][head[q]]);
            if (cfg_.verify && cfg_.kind == TestKind::kReadBw) {
              uint64_t pidx = uint64_t(q) * cfg_.slots + completed[q] % cfg_.slots;
              verify_errors += countMismatches(slotPtr(q, completed[q]), size, FLAGS_seed, pidx);
              verified += size;
            }
            ++completed[q];
            --inflight;
            ++*total_done;
            ++win_ops;
            if (measure && now - win_start >= 10ms) {
              double secs = std::chrono::duration<double>(now - win_start).count();
              *peak = std::max(*peak, win_ops * B * size / secs / 1e6);
              win_start = now;
              win_ops = 0;
            }
            if (!stopping && timed && now >= stop_at) stopping = true;
            if (!stopping && posted[q] < goal[q]) {
              int slot = head[q];
              at[q][slot] = now;
              r = post(q, posted[q], size);
              ++posted[q];
              ++inflight;
            }
            head[q] = (head[q] + 1) % D;
            if (measure) {
              double frac = timed ? std::chrono::duration<double>(now - t0).count() / FLAGS_duration
                                  : double(*total_done - base_done) / double(target * Q);
              progressLine(now, t0, size, frac, (*total_done - base_done) * B * size);
            }
          }
        }
      }
      return Status::Ok();
    };

    uint64_t total = 0;
    double peak = 0;
    auto far = Clock::now() + 24h;
    ZCX_RETURN_IF_ERROR(phase(warm, far, false, &total, &peak));
    total = 0;
    auto t0 = Clock::now();
    measure_start_ = t0;
    uint64_t goal = timed ? UINT64_MAX / 4 : iters;
    ZCX_RETURN_IF_ERROR(phase(goal,
                              timed ? t0 + std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(FLAGS_duration))
                                    : far,
                              true, &total, &peak));
    auto t1 = Clock::now();
    clearProgress();
    double secs = std::chrono::duration<double>(t1 - t0).count();
    setRates(res, total * B, size, secs, peak);
    res->verify_errors = verify_errors;
    res->verified_bytes = verified;
    for (int q = 0; q < Q; ++q) done->counts[q] = posted[q];
    return Status::Ok();
  }

  /// write_bw with Connection::writeUnsignaled: no Request per write; a flush every depth x 64
  /// writes per connection, at most two outstanding (like perftest's selective signalling and
  /// its send-queue depth). The run ends when the last flush completed.
  Status unsignaledBandwidth(uint64_t size, uint64_t iters, bool timed, PerfResult* res,
                             Ctl* done) {
    const int Q = cfg_.qps;
    const uint64_t window = uint64_t(cfg_.depth) * 64;
    std::vector<uint64_t> posted(Q, 0);
    std::vector<std::deque<Request>> flushes(Q);
    auto waitOldest = [&](int q) -> Status {
      Status st = flushes[q].front().wait(std::chrono::milliseconds(120000));
      flushes[q].pop_front();
      return st.withContext("flush");
    };
    auto run = [&](uint64_t count, Clock::time_point stop_at) -> Status {
      std::vector<uint64_t> goal(Q);
      for (int q = 0; q < Q; ++q) goal[q] = posted[q] + count;
      for (bool more = true; more;) {
        more = false;
        for (int q = 0; q < Q; ++q) {
          if (posted[q] >= goal[q]) continue;
          more = true;
          const uint64_t n = posted[q];
          const size_t off = slotOff(q, n);
          if (cfg_.verify)
            fillPattern(buf_.data() + off, size, FLAGS_seed, n + (uint64_t(q) << 40));
          Status st = data_[q].writeUnsignaled(buf_.region, off, remote_[q], off, size);
          if (st.code() == StatusCode::kResourceExhausted && !flushes[q].empty()) {
            ZCX_RETURN_IF_ERROR(waitOldest(q));
            continue;
          }
          ZCX_RETURN_IF_ERROR(st.withContext("writeUnsignaled"));
          ++posted[q];
          if (posted[q] % window == 0 || posted[q] == goal[q]) {
            flushes[q].push_back(data_[q].flush());
            if (flushes[q].size() > 2) ZCX_RETURN_IF_ERROR(waitOldest(q));
          }
          if (stop_at != Clock::time_point{} && (posted[q] & 1023) == 0 &&
              Clock::now() >= stop_at) {
            goal[q] = posted[q];
            flushes[q].push_back(data_[q].flush());
          }
        }
      }
      for (int q = 0; q < Q; ++q)
        while (!flushes[q].empty()) ZCX_RETURN_IF_ERROR(waitOldest(q));
      return Status::Ok();
    };
    const uint64_t warm = std::min<uint64_t>(iters / 10 + window, 100000);
    ZCX_RETURN_IF_ERROR(run(warm, Clock::time_point{}));
    const uint64_t before = std::accumulate(posted.begin(), posted.end(), uint64_t{0});
    auto t0 = Clock::now();
    measure_start_ = t0;
    ZCX_RETURN_IF_ERROR(run(timed ? UINT64_MAX / 4 : iters,
                            timed ? t0 + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(FLAGS_duration))
                                  : Clock::time_point{}));
    auto t1 = Clock::now();
    const uint64_t total = std::accumulate(posted.begin(), posted.end(), uint64_t{0}) - before;
    double secs = std::chrono::duration<double>(t1 - t0).count();
    setRates(res, total, size, secs);
    for (int q = 0; q < Q; ++q) done->counts[q] = posted[q];
    return Status::Ok();
  }

  Status latency(uint64_t size, uint64_t iters, bool timed, PerfResult* res, Ctl* done) {
    Connection& conn = data_[0];
    const RemoteRegion& remote = remote_[0];
    uint8_t* rx = buf_.data();
    uint8_t* tx = buf_.data() + max_size_;
    const size_t tx_off = max_size_;
    uint64_t warm = timed ? 100 : std::min<uint64_t>(iters / 10, 1000);
    uint64_t verify_errors = 0, verified = 0;
    Request recv;
    if (cfg_.kind == TestKind::kSendLat) recv = conn.recv(buf_.region, 0, max_size_);
    auto stop_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(FLAGS_duration));
    Clock::time_point t0{};
    uint64_t measured = 0;
    uint64_t i = 0;
    for (;; ++i) {
      if (i == warm) t0 = Clock::now();
      if (i >= warm) {
        if (timed ? Clock::now() >= stop_at : measured >= iters) break;
      }
      Clock::time_point a, b;
      if (cfg_.kind == TestKind::kReadLat) {
        if (cfg_.verify) std::memset(rx, 0, size);
        a = Clock::now();
        Request r = conn.read(buf_.region, 0, remote, 0, size);
        std::optional<Status> st;
        while (!(st = r.test())) {
        }
        b = Clock::now();
        if (!st->ok()) return st->withContext("read");
        if (cfg_.verify) {
          verify_errors += countMismatches(rx, size, FLAGS_seed, 0);
          verified += size;
        }
      } else if (cfg_.kind == TestKind::kWriteLat) {
        if (cfg_.verify) fillPattern(tx, size, FLAGS_seed, i);
        tx[size - 1] = markerOf(i);
        a = Clock::now();
        // Verified runs use notifications: the marker byte may land before the rest.
        RmaOp op{&buf_.region, tx_off, &remote, 0, size};
        Request w = cfg_.verify ? conn.writeWithNotify({&op, 1}, static_cast<uint32_t>(i))
                                : conn.write(buf_.region, tx_off, remote, 0, size);
        const uint8_t m = markerOf(i);
        uint64_t spins = 0;
        auto arrived = [&] {
          if (!cfg_.verify) return loadByte(rx + size - 1) == m;
          auto note = conn.pollNotification();
          return note.has_value();
        };
        while (!arrived()) {
          eng_.progress();
          if ((++spins & 1023) == 0 && w.done()) {
            auto st = w.test();
            if (!st->ok()) return st->withContext("write");
          }
        }
        b = Clock::now();
        if (cfg_.verify) {
          verify_errors += countMismatches(rx, size - 1, FLAGS_seed ^ kServerSalt, i);
          verified += size;
        }
        ZCX_RETURN_IF_ERROR(w.wait().withContext("write"));
      } else {  // send_lat
        if (cfg_.verify) fillPattern(tx, size, FLAGS_seed, i);
        a = Clock::now();
        Request s = conn.send(buf_.region, tx_off, size);
        std::optional<Status> st;
        while (!(st = recv.test())) {
        }
        b = Clock::now();
        if (!st->ok()) return st->withContext("receive");
        if (cfg_.verify) {
          if (recv.bytes() != size)
            verify_errors += size;
          else
            verify_errors += countMismatches(rx, size, FLAGS_seed ^ kServerSalt, i);
          verified += size;
        }
        recv = conn.recv(buf_.region, 0, max_size_);
        ZCX_RETURN_IF_ERROR(s.wait().withContext("send"));
      }
      if (i >= warm) {
        sample(b - a);
        ++measured;
        double frac = timed ? std::chrono::duration<double>(b - t0).count() / FLAGS_duration
                            : double(measured) / iters;
        progressLine(b, t0, size, frac, measured * size);
      }
    }
    auto t1 = Clock::now();
    clearProgress();
    double secs = std::chrono::duration<double>(t1 - t0).count();
    setRates(res, measured, size, secs);
    res->verify_errors = verify_errors;
    res->verified_bytes = verified;
    done->counts[0] = i;
    return Status::Ok();
  }

  Engine& eng_;
  ClientConfig cfg_;
  std::vector<RmaOp> batch_ops_ = std::vector<RmaOp>(cfg_.batch);
  CtlChannel ctl_;
  std::vector<Connection> data_;
  std::vector<RemoteRegion> remote_;
  Buffer buf_;
  uint64_t max_size_ = 0;
  std::vector<uint32_t> samples_;
  size_t nsamples_ = 0;
  bool tty_ = isatty(2);
  bool progress_shown_ = false;
  Clock::time_point next_progress_{};
  Clock::time_point measure_start_{};  ///< start of the measured phase (bandwidth tests)
};

// ------------------------------------------------------------------ main pieces

Status validate(ClientConfig* cfg) {
  if (!parseTest(FLAGS_test, &cfg->kind)) {
    return err(StatusCode::kInvalidArgument,
               "--test must be write_bw, read_bw, send_bw, write_lat, read_lat or send_lat, not '" +
                   FLAGS_test + "'");
  }
  if (FLAGS_all) {
    for (uint64_t s = 2; s <= (8u << 20); s *= 2) cfg->sizes.push_back(s);
  } else {
    uint64_t s = 0;
    if (!parseSize(FLAGS_size, &s) || s < 1 || s > kMaxSize) {
      return err(StatusCode::kInvalidArgument,
                 "--size must be between 1 byte and 1 GiB (e.g. 65536, 64K, 4M), not '" +
                     FLAGS_size + "'");
    }
    cfg->sizes.push_back(s);
  }
  if (FLAGS_iters < 0) return err(StatusCode::kInvalidArgument, "--iters must be positive");
  if (FLAGS_duration < 0 || FLAGS_duration > 86400) {
    return err(StatusCode::kInvalidArgument, "--duration must be between 0 and 86400 seconds");
  }
  if (FLAGS_iters > 0 && FLAGS_duration > 0) {
    return err(StatusCode::kInvalidArgument, "give --iters or --duration, not both");
  }
  if (FLAGS_depth < 1 || FLAGS_depth > 4096)
    return err(StatusCode::kInvalidArgument, "--depth must be 1..4096");
  if (FLAGS_qps < 1 || FLAGS_qps > kMaxQps) {
    return err(StatusCode::kInvalidArgument, "--qps must be 1.." + std::to_string(kMaxQps));
  }
  if (FLAGS_transport != "auto" && FLAGS_transport != "ucx" && FLAGS_transport != "verbs") {
    return err(StatusCode::kInvalidArgument,
               "--transport must be auto, ucx or verbs, not '" + FLAGS_transport + "'");
  }
  if (FLAGS_port < 0 || FLAGS_port > 65535)
    return err(StatusCode::kInvalidArgument, "--port must be 0..65535");
  if (FLAGS_listen.empty() || FLAGS_listen.front() == ':') {
    return err(StatusCode::kInvalidArgument,
               "--listen needs a host: 127.0.0.1 (this machine only), this node's address, or "
               "0.0.0.0 (every interface)");
  }
  if (FLAGS_mem != "alloc" && FLAGS_mem != "user") {
    return err(StatusCode::kInvalidArgument, "--mem must be alloc or user");
  }
  if (FLAGS_mpi && !FLAGS_metadata.empty())
    return err(StatusCode::kInvalidArgument, "--metadata does not combine with --mpi");
  if (FLAGS_mpi_pattern != "pairs" && FLAGS_mpi_pattern != "ring") {
    return err(StatusCode::kInvalidArgument, "--mpi_pattern must be pairs or ring");
  }
  if (FLAGS_batch < 1 || FLAGS_batch > 1024)
    return err(StatusCode::kInvalidArgument, "--batch must be 1..1024");
  if (FLAGS_batch > 1 && cfg->kind != TestKind::kWriteBw && cfg->kind != TestKind::kReadBw) {
    return err(StatusCode::kInvalidArgument, "--batch applies to write_bw and read_bw only");
  }
  if (FLAGS_batch > 1 && FLAGS_verify)
    return err(StatusCode::kInvalidArgument, "--batch does not combine with --verify");
  if (FLAGS_unsignaled && (cfg->kind != TestKind::kWriteBw || FLAGS_batch > 1)) {
    return err(StatusCode::kInvalidArgument,
               "--unsignaled applies to write_bw without --batch (unsignaled writes are batched "
               "by the engine)");
  }
  cfg->batch = FLAGS_batch;
  cfg->depth = FLAGS_depth;
  cfg->qps = FLAGS_qps;
  cfg->verify = FLAGS_verify;
  if (isLatency(cfg->kind)) {
    if (FLAGS_qps != 1)
      return err(StatusCode::kInvalidArgument, "latency tests use one connection: drop --qps");
    cfg->depth = 1;
  }
  if (cfg->kind == TestKind::kSendBw || cfg->kind == TestKind::kSendLat) {
    for (uint64_t s : cfg->sizes) {
      if (s > (8u << 20))
        return err(StatusCode::kInvalidArgument, "send tests take messages up to 8 MiB");
    }
  }
  // Like perftest, the operations in flight on one connection share one buffer; --verify gives
  // each its own slot so that data in flight is never overwritten. --slots overrides.
  cfg->slots = cfg->verify && !isLatency(cfg->kind) ? cfg->depth : 1;
  if (FLAGS_slots < 0 || FLAGS_slots > 65536)
    return err(StatusCode::kInvalidArgument, "--slots must be 0 (automatic) to 65536");
  if (FLAGS_slots > 0 && !isLatency(cfg->kind)) {
    if (cfg->verify && FLAGS_slots < cfg->depth) {
      return err(StatusCode::kInvalidArgument,
                 "--verify needs --slots of at least --depth (operations in flight would "
                 "overwrite each other's data)");
    }
    cfg->slots = FLAGS_slots;
  }
  uint64_t max_size = *std::max_element(cfg->sizes.begin(), cfg->sizes.end());
  double bytes = double(regionBytes(cfg->kind, max_size, cfg->qps, cfg->slots));
  if (bytes > 8.0 * (1ull << 30)) {
    return err(StatusCode::kInvalidArgument,
               "the test would register more than 8 GiB: lower --depth, --qps or --size");
  }
  return Status::Ok();
}

std::string hostPort(const std::string& server) {
  if (!FLAGS_metadata.empty() && server.find(':') == std::string::npos) return server;  // a name
  if (server.find(':') != std::string::npos && server.find(':') == server.rfind(':')) return server;
  return server + ":" + std::to_string(FLAGS_port);
}

int runClient(const ClientConfig& cfg, const std::string& server) {
  auto eng = makeEngine("", ProgressMode::kManual);
  if (!eng.ok()) {
    std::fprintf(stderr, "zcx_perf: cannot start the engine: %s\n",
                 eng.status().toString().c_str());
    return kExitFail;
  }
  if (!FLAGS_json) {
    std::printf("zcx_perf %s  transport %s (%s)  depth %d  qps %d%s\n", testName(cfg.kind),
                std::string((*eng)->transportName()).c_str(),
                (*eng)->transportDescription().c_str(), cfg.depth, cfg.qps,
                cfg.verify ? "  verify" : "");
    std::printf("MB/s = 10^6 bytes/s.%s\n",
                cfg.kind == TestKind::kReadLat ? " Latency: full round trip of a read."
                : isLatency(cfg.kind)          ? " Latency: one-way (half the round trip)."
                                               : " lat_p50: post to completion.");
    printHeader(isLatency(cfg.kind));
  }
  Client client(**eng, cfg);
  std::vector<PerfResult> results;
  Status s = client.run(hostPort(server), &results);
  printMetrics(**eng, "client");
  if (!s.ok()) {
    std::fprintf(stderr, "zcx_perf: %s\n", s.toString().c_str());
    return kExitFail;
  }
  for (const auto& r : results) {
    if (r.verify_errors) {
      std::fprintf(stderr,
                   "zcx_perf: verification FAILED: %" PRIu64 " bad bytes at size %" PRIu64 "\n",
                   r.verify_errors, r.size);
      return kExitVerify;
    }
  }
  return 0;
}

/// The host part of --listen (the --loopback server and the --mpi ranks listen there on a free
/// port).
std::string listenHost() {
  std::string host = listenAddress(0);
  host.resize(host.rfind(':'));
  return host;
}

int runLoopback(const ClientConfig& cfg) {
  int fds[2];
  if (pipe(fds) != 0) {
    std::perror("zcx_perf: pipe");
    return kExitFail;
  }
  std::vector<std::string> args = {"/proc/self/exe",
                                   "--transport=" + FLAGS_transport,
                                   "--device=" + FLAGS_device,
                                   "--gid_index=" + std::to_string(FLAGS_gid_index),
                                   "--ucx_tls=" + FLAGS_ucx_tls,
                                   "--ucx_net_devices=" + FLAGS_ucx_net_devices,
                                   "--mem=" + FLAGS_mem,
                                   std::string("--quiet=") + (FLAGS_quiet ? "true" : "false"),
                                   std::string("--metrics=") + (FLAGS_metrics ? "true" : "false"),
                                   "--progress_spin_us=" + std::to_string(FLAGS_progress_spin_us),
                                   "--auth-secret-file=" + FLAGS_auth_secret_file,
                                   "--listen=" + listenHost() + ":0",
                                   "--ready_fd=" + std::to_string(fds[1])};
  std::string connect_host = listenHost();
  if (connect_host == "0.0.0.0") connect_host = "127.0.0.1";
  if (connect_host == "[::]") connect_host = "[::1]";
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("zcx_perf: fork");
    return kExitFail;
  }
  if (pid == 0) {
    close(fds[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    std::perror("zcx_perf: exec");
    _exit(127);
  }
  close(fds[1]);
  char buf[32] = {};
  ssize_t n = 0;
  pollfd p{fds[0], POLLIN, 0};
  if (poll(&p, 1, 60000) > 0) n = read(fds[0], buf, sizeof buf - 1);
  close(fds[0]);
  int port = n > 0 ? std::atoi(buf) : 0;
  int status = 0;
  if (port <= 0) {
    std::fprintf(stderr, "zcx_perf --loopback: the server process did not start\n");
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    return kExitFail;
  }
  int rc = runClient(cfg, connect_host + ":" + std::to_string(port));
  if (rc != 0) kill(pid, SIGTERM);
  waitpid(pid, &status, 0);
  if (rc != 0) return rc;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "zcx_perf --loopback: the server process failed (status %d)\n", status);
    return kExitFail;
  }
  return 0;
}

// ------------------------------------------------------------------ MPI (bootstrap only)

#if ZCX_PERF_HAVE_MPI
/// write_bw from this rank to `conn` (background progress: every rank's progress thread serves
/// the writes that land in its memory while this thread only posts and reaps).
Result<double> mpiWriteBw(Connection& conn, Buffer& buf, const RemoteRegion& remote, uint64_t size,
                          uint64_t iters, int depth) {
  std::vector<Request> reqs(depth);
  uint64_t posted = 0, completed = 0;
  auto t0 = Clock::now();
  for (; posted < std::min<uint64_t>(depth, iters); ++posted)
    reqs[posted % depth] = conn.write(buf.region, 0, remote, 0, size);
  while (completed < posted) {
    Request& r = reqs[completed % depth];
    Status s = r.wait();
    if (!s.ok()) return s.withContext("write");
    ++completed;
    if (posted < iters) {
      r = conn.write(buf.region, 0, remote, 0, size);
      ++posted;
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  return completed * size / secs / 1e6;
}

int runMpi(int argc, char** argv, const ClientConfig& cfg) {
  MPI_Init(&argc, &argv);
  int rank = 0, n = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "zcx_perf --mpi rank %d: %s\n", rank, what.c_str());
    MPI_Abort(MPI_COMM_WORLD, kExitFail);
    return kExitFail;
  };
  if (cfg.kind != TestKind::kWriteBw || cfg.sizes.size() != 1) {
    return fail("--mpi measures write_bw at one --size (no --all)");
  }
  const uint64_t size = cfg.sizes[0];
  const uint64_t iters =
      FLAGS_iters > 0 ? FLAGS_iters : std::clamp<uint64_t>((256ull << 20) / size, 100, 2000);
  const bool ring = FLAGS_mpi_pattern == "ring";

  // Each rank listens on a free port and publishes "host:port" through MPI.
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string listen = listenHost() + ":0";
  auto eng = makeEngine(listen, ProgressMode::kThread);
  if (!eng.ok()) return fail(eng.status().toString());
  Engine& e = **eng;
  Buffer buf;
  Status s = makeBuffer(e, size, kRemoteReadWrite, &buf);
  if (!s.ok()) return fail(s.toString());
  s = e.expose("zcx_perf", buf.region, exposeOptions());
  if (!s.ok()) return fail(s.toString());
  std::string addr = e.listenAddress();
  if (listen.rfind("0.0.0.0:", 0) == 0 || listen.rfind("[::]:", 0) == 0)
    addr = std::string(host) + addr.substr(addr.rfind(':'));
  constexpr int kAddr = 256;
  std::vector<char> all(size_t(kAddr) * n, 0);
  char mine[kAddr] = {};
  std::snprintf(mine, sizeof mine, "%s", addr.c_str());
  MPI_Allgather(mine, kAddr, MPI_CHAR, all.data(), kAddr, MPI_CHAR, MPI_COMM_WORLD);

  std::vector<int> targets;
  for (int j = 0; j < n; ++j) {
    if (j == rank) continue;
    if (!ring || j == (rank + 1) % n) targets.push_back(j);
  }
  std::vector<Connection> conns(n);
  std::vector<RemoteRegion> remotes(n);
  for (int j : targets) {
    auto c = e.connect(&all[size_t(j) * kAddr]);
    if (!c.ok())
      return fail("connecting to rank " + std::to_string(j) + ": " + c.status().toString());
    conns[j] = std::move(c.value());
    auto r = conns[j].remoteRegion("zcx_perf");
    if (!r.ok()) return fail("region of rank " + std::to_string(j) + ": " + r.status().toString());
    remotes[j] = std::move(r.value());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  size_t incoming = ring ? (n > 1 ? 1 : 0) : size_t(n - 1);
  std::vector<Connection> accepted;
  for (size_t k = 0; k < incoming; ++k) {
    auto c = e.accept(30s);
    if (!c.ok()) return fail("accept: " + c.status().toString());
    accepted.push_back(std::move(c.value()));
  }
  MPI_Barrier(MPI_COMM_WORLD);

  std::vector<double> row(n, 0.0);  // MB/s from this rank to each destination
  if (ring) {
    if (n > 1) {
      int j = targets[0];
      auto bw = mpiWriteBw(conns[j], buf, remotes[j], size, iters, cfg.depth);
      if (!bw.ok()) return fail(bw.status().toString());
      row[j] = *bw;
    }
    MPI_Barrier(MPI_COMM_WORLD);
  } else {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        if (i == j) continue;
        MPI_Barrier(MPI_COMM_WORLD);  // one pair at a time
        if (rank == i) {
          auto bw = mpiWriteBw(conns[j], buf, remotes[j], size, iters, cfg.depth);
          if (!bw.ok()) return fail(bw.status().toString());
          row[j] = *bw;
        }
      }
    }
  }
  std::vector<double> matrix(rank == 0 ? size_t(n) * n : 0);
  MPI_Gather(row.data(), n, MPI_DOUBLE, matrix.data(), n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    if (FLAGS_json) {
      for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
          if (matrix[size_t(i) * n + j] <= 0) continue;
          std::printf("{\"test\":\"write_bw\",\"transport\":\"%s\",\"size\":%" PRIu64
                      ",\"iterations\":%" PRIu64
                      ",\"src\":%d,\"dst\":%d,\"bw_avg_MBps\":%.6g,\"pattern\":\"%s\"}\n",
                      std::string(e.transportName()).c_str(), size, iters, i, j,
                      matrix[size_t(i) * n + j], FLAGS_mpi_pattern.c_str());
        }
      }
    } else {
      std::printf("zcx_perf --mpi: write_bw %" PRIu64 " B, %" PRIu64
                  " iterations, depth %d, %s, transport %s\n",
                  size, iters, cfg.depth,
                  ring ? "ring (all pairs at once)" : "every ordered pair, one at a time",
                  std::string(e.transportName()).c_str());
      std::printf("bandwidth matrix, MB/s (10^6 B/s); row = writer, column = target\n%8s", "");
      for (int j = 0; j < n; ++j) std::printf(" %10d", j);
      std::printf("\n");
      for (int i = 0; i < n; ++i) {
        std::printf("%8d", i);
        for (int j = 0; j < n; ++j) {
          double v = matrix[size_t(i) * n + j];
          if (v > 0)
            std::printf(" %10.1f", v);
          else
            std::printf(" %10s", "-");
        }
        std::printf("\n");
      }
    }
    std::fflush(stdout);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  for (auto& c : conns) c.close();
  for (auto& c : accepted) c.close();
  MPI_Finalize();
  return 0;
}
#endif

}  // namespace
}  // namespace zcx::perf

int main(int argc, char** argv) {
  gflags::SetUsageMessage(
      "perftest-style benchmark for zcx.\n"
      "  server:   zcx_perf --listen HOST[:PORT] [--auth-secret-file PATH] [options]\n"
      "  client:   zcx_perf [--auth-secret-file PATH] [options] SERVER\n"
      "  by name:  zcx_perf --metadata etcd://HOST:PORT --name NAME [options]   (server)\n"
      "            zcx_perf --metadata etcd://HOST:PORT [options] NAME          (client)\n"
      "  loopback: zcx_perf --loopback [options]\n"
      "  MPI:      mpirun -np N zcx_perf --mpi [options]");
  gflags::ParseCommandLineFlags(&argc, &argv, true);
  FLAGS_logtostderr = true;
  if (FLAGS_quiet) FLAGS_minloglevel = std::max(FLAGS_minloglevel, 1);
  google::InitGoogleLogging(argv[0]);
  signal(SIGPIPE, SIG_IGN);

  zcx::perf::ClientConfig cfg;
  zcx::Status s = zcx::perf::validate(&cfg);
  if (!s.ok()) {
    std::fprintf(stderr, "zcx_perf: %s\n", s.message().c_str());
    return zcx::perf::kExitUsage;
  }
  if (FLAGS_mpi) {
    if (argc > 1 || FLAGS_loopback) {
      std::fprintf(stderr, "zcx_perf: --mpi takes no SERVER and no --loopback\n");
      return zcx::perf::kExitUsage;
    }
#if ZCX_PERF_HAVE_MPI
    return zcx::perf::runMpi(argc, argv, cfg);
#else
    std::fprintf(stderr, "zcx_perf: built without MPI (install libopenmpi-dev and rebuild)\n");
    return zcx::perf::kExitFail;
#endif
  }
  if (argc > 2) {
    std::fprintf(stderr, "zcx_perf: one SERVER at most, got '%s' and '%s'\n", argv[1], argv[2]);
    return zcx::perf::kExitUsage;
  }
  if (FLAGS_loopback) {
    if (argc > 1) {
      std::fprintf(stderr, "zcx_perf: --loopback takes no SERVER\n");
      return zcx::perf::kExitUsage;
    }
    return zcx::perf::runLoopback(cfg);
  }
  if (argc == 2) return zcx::perf::runClient(cfg, argv[1]);
  return zcx::perf::runServer();
}

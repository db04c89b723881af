// zcx_perf's server: the passive side of every test. It learns the test from the client's hello
// and, per size, serves the data connections until the client says the round is done (UCX over
// tcp emulates one-sided operations in software, so the target must progress too).
#include "perf_server.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "perf_control.h"
#include "perf_engine.h"
#include "perf_flags.h"
#include "perf_report.h"

namespace zcx::perf {

using namespace std::chrono_literals;

namespace {

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

}  // namespace

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

}  // namespace zcx::perf

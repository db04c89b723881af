// zcx_perf's client: the active side of every test. It tells the server the test over the
// control connection, then per size measures bandwidth (--depth operations in flight on each
// of --qps connections) or latency (one at a time, ping-pong for write and send). Progress is
// manual: the measuring thread busy-polls, like perftest.
#include "perf_client.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <deque>
#include <numeric>
#include <optional>

#include "perf_control.h"
#include "perf_engine.h"
#include "perf_flags.h"
#include "perf_report.h"

namespace zcx::perf {

using namespace std::chrono_literals;

namespace {

/// The figures of `messages` of `size` bytes moved in `secs`; the peak is at least the average.
void setRates(PerfResult* res, uint64_t messages, uint64_t size, double secs, double peak = 0) {
  res->iterations = messages;
  res->seconds = secs;
  res->bw_avg_MBps = double(messages) * double(size) / secs / 1e6;
  res->bw_peak_MBps = std::max(peak, res->bw_avg_MBps);
  res->msg_rate_Mpps = double(messages) / secs / 1e6;
}

/// The "BW peak" column: the highest rate over windows of at least 10 ms of completions.
class PeakRate {
 public:
  explicit PeakRate(Clock::time_point start = {}) : start_(start) {}
  void add(uint64_t bytes, Clock::time_point now) {
    bytes_ += bytes;
    if (now - start_ < 10ms) return;
    mbps_ =
        std::max(mbps_, double(bytes_) / std::chrono::duration<double>(now - start_).count() / 1e6);
    start_ = now;
    bytes_ = 0;
  }
  double mbps() const { return mbps_; }

 private:
  Clock::time_point start_;
  uint64_t bytes_ = 0;
  double mbps_ = 0;
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
      printResult(r);
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
    rails_start_ = eng_.stats().devices;  // the tests take it again once warmed up
    const CpuSample cpu_start = CpuSample::now();
    Status s = isLatency(cfg_.kind) ? latency(size, iters, timed, res, &done)
               : cfg_.cq_mod > 1    ? selectiveBandwidth(size, iters, timed, res, &done)
                                    : bandwidth(size, iters, timed, res, &done);
    if (!s.ok()) return s;
    ZCX_RETURN_IF_ERROR(ctl_.send(done));
    const CpuSample cpu_end = CpuSample::now();
    res->rails.clear();
    for (const DeviceStats& d : eng_.stats().devices) {
      uint64_t before = 0;
      for (const DeviceStats& b : rails_start_) before = b.device == d.device ? b.bytes : before;
      res->rails.emplace_back(d.device, d.bytes - before);
    }
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
    res->cq_mod = cfg_.cq_mod;
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
    // An unmeasured first round (compare.sh's zcx_bytes mirrors this rule).
    uint64_t warm = timed ? 2 * D : std::min<uint64_t>({iters / 10 + D, iters, 1000});
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
      PeakRate window(t0);
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
            if (measure) {
              window.add(B * size, now);
              *peak = std::max(*peak, window.mbps());
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
    rails_start_ = eng_.stats().devices;
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

  /// write_bw with selective signalling, like perftest's: writes go out with
  /// Connection::writeUnsignaled (no Request each) and every cq_mod-th is followed by a flush(),
  /// whose completion confirms every write before it; at most `window` writes per connection are
  /// posted and not yet confirmed (perftest's tx-depth). The run ends when the last flush
  /// completed. Latency samples: per flush, from posting the first write it covers to its
  /// completion (the oldest of those writes' post-to-completion time).
  Status selectiveBandwidth(uint64_t size, uint64_t iters, bool timed, PerfResult* res, Ctl* done) {
    const int Q = cfg_.qps;
    const uint64_t cq_mod = cfg_.cq_mod, window = cfg_.window;
    struct Flush {
      Request request;
      uint64_t covers;               ///< posted writes when it was made: it confirms all of them
      Clock::time_point first_post;  ///< when the first write it covers was posted
    };
    std::vector<uint64_t> posted(Q, 0), confirmed(Q, 0);
    std::vector<std::deque<Flush>> flushes(Q);
    // The first write after the newest flush, and whether one was posted since.
    std::vector<Clock::time_point> group_start(Q);
    std::vector<char> group_open(Q, 0);
    bool measure = false;
    PeakRate peak;
    auto flushNow = [&](int q) {
      if (flushes[q].empty() || flushes[q].back().covers != posted[q]) {
        flushes[q].push_back({data_[q].flush(), posted[q], group_start[q]});
        group_open[q] = 0;
      }
    };
    auto waitOldest = [&](int q) -> Status {
      Flush& f = flushes[q].front();
      Status st = f.request.wait(std::chrono::milliseconds(120000));
      if (measure && st.ok()) {
        const auto now = Clock::now();
        sample(now - f.first_post);
        peak.add((f.covers - confirmed[q]) * size, now);
      }
      confirmed[q] = f.covers;
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
          // The send queue is full: reap the oldest completion, like perftest polling its CQ.
          // (cq_mod <= window, so one is in flight; a new flush here would split the batches.)
          if (posted[q] - confirmed[q] >= window) {
            if (flushes[q].empty()) flushNow(q);
            ZCX_RETURN_IF_ERROR(waitOldest(q));
            continue;
          }
          const uint64_t n = posted[q];
          const size_t off = slotOff(q, n);
          if (cfg_.verify)
            fillPattern(buf_.data() + off, size, FLAGS_seed, n + (uint64_t(q) << 40));
          // The clock is read once per flush group, not per write (a read costs as much as half
          // of an 8-byte writeUnsignaled).
          const auto now = group_open[q] ? Clock::time_point{} : Clock::now();
          Status st = data_[q].writeUnsignaled(buf_.region, off, remote_[q], off, size);
          if (st.code() == StatusCode::kResourceExhausted) {  // the engine's own limit
            if (flushes[q].empty()) flushNow(q);
            ZCX_RETURN_IF_ERROR(waitOldest(q));
            continue;
          }
          ZCX_RETURN_IF_ERROR(st.withContext("writeUnsignaled"));
          if (!group_open[q]) group_start[q] = now, group_open[q] = 1;
          ++posted[q];
          if (posted[q] % cq_mod == 0 || posted[q] == goal[q]) flushNow(q);
          if (stop_at != Clock::time_point{} && (posted[q] & 1023) == 0 &&
              Clock::now() >= stop_at) {
            goal[q] = posted[q];
            flushNow(q);
          }
        }
      }
      for (int q = 0; q < Q; ++q)
        while (!flushes[q].empty()) ZCX_RETURN_IF_ERROR(waitOldest(q));
      return Status::Ok();
    };
    // An unmeasured first round (compare.sh's zcx_bytes mirrors this rule).
    const uint64_t warm =
        timed ? 2 * window : std::min<uint64_t>({iters / 10 + window, iters, 100000});
    ZCX_RETURN_IF_ERROR(run(warm, Clock::time_point{}));
    const uint64_t before = std::accumulate(posted.begin(), posted.end(), uint64_t{0});
    rails_start_ = eng_.stats().devices;
    auto t0 = Clock::now();
    measure_start_ = t0;
    measure = true;
    peak = PeakRate(t0);
    ZCX_RETURN_IF_ERROR(run(timed ? UINT64_MAX / 4 : iters,
                            timed ? t0 + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(FLAGS_duration))
                                  : Clock::time_point{}));
    auto t1 = Clock::now();
    const uint64_t total = std::accumulate(posted.begin(), posted.end(), uint64_t{0}) - before;
    double secs = std::chrono::duration<double>(t1 - t0).count();
    setRates(res, total, size, secs, peak.mbps());
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
      if (i == warm) {
        rails_start_ = eng_.stats().devices;
        t0 = Clock::now();
      }
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
  /// Each rail's bytes when the measured phase started (PerfResult::rails is the difference).
  std::vector<DeviceStats> rails_start_;
};

std::string hostPort(const std::string& server) {
  if (!FLAGS_metadata.empty() && server.find(':') == std::string::npos) return server;  // a name
  if (server.find(':') != std::string::npos && server.find(':') == server.rfind(':')) return server;
  return server + ":" + std::to_string(FLAGS_port);
}

}  // namespace

int runClient(const ClientConfig& cfg, const std::string& server) {
  auto eng = makeEngine("", ProgressMode::kManual);
  if (!eng.ok()) {
    std::fprintf(stderr, "zcx_perf: cannot start the engine: %s\n",
                 eng.status().toString().c_str());
    return kExitFail;
  }
  printClientBanner(cfg.kind, std::string((*eng)->transportName()), (*eng)->transportDescription(),
                    cfg.depth, cfg.qps, cfg.verify);
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

}  // namespace zcx::perf

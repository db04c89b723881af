// Metrics (issue 12, item 4): the counters match the bytes really moved between two engines,
// the Prometheus text parses, and the /metrics HTTP server survives hostile clients.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "metrics.h"
#include "metrics_http.h"
#include "zcx/zcx.h"

namespace zcx::test {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

EngineOptions options(bool listen, std::string metrics_address = "") {
  EngineOptions o;
  o.transport = "ucx";
  o.transport_params = {{"ucx.tls", "tcp,self"}, {"ucx.net_devices", "lo"}};
  o.listen_address = listen ? "127.0.0.1:0" : "";
  o.metrics_address = std::move(metrics_address);
  o.connect_timeout = 5s;
  o.operation_timeout = 20s;
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

// ---------------------------------------------------------------- Prometheus text checks

/// One parsed sample: metric name, labels, value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  std::string value;
};

/// Parses every non-comment line as `name{labels} value` (label values unescaped); the error
/// says which line is malformed.
Result<std::vector<Sample>> parsePrometheus(const std::string& text) {
  std::vector<Sample> out;
  size_t pos = 0;
  int lineno = 0;
  auto bad = [&](const std::string& why) {
    return Status(StatusCode::kProtocolError, "line " + std::to_string(lineno) + ": " + why);
  };
  if (text.empty() || text.back() != '\n')
    return Status(StatusCode::kProtocolError, "no final newline");
  while (pos < text.size()) {
    ++lineno;
    size_t end = text.find('\n', pos);
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty()) return bad("empty line");
    if (line[0] == '#') {
      if (line.rfind("# HELP ", 0) != 0 && line.rfind("# TYPE ", 0) != 0)
        return bad("unknown comment");
      continue;
    }
    Sample s;
    size_t i = 0;
    auto nameChar = [](char c, bool first) {
      return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
             (!first && std::isdigit(static_cast<unsigned char>(c)));
    };
    while (i < line.size() && nameChar(line[i], i == 0)) s.name += line[i++];
    if (s.name.empty()) return bad("no metric name");
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        std::string key;
        while (i < line.size() && nameChar(line[i], key.empty())) key += line[i++];
        if (key.empty() || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"')
          return bad("bad label");
        i += 2;
        std::string value;
        for (;;) {
          if (i >= line.size()) return bad("unterminated label value");
          char c = line[i++];
          if (c == '"') break;
          if (c == '\\') {
            if (i >= line.size()) return bad("dangling escape");
            char e = line[i++];
            if (e == 'n')
              value += '\n';
            else if (e == '\\' || e == '"')
              value += e;
            else
              return bad("bad escape");
          } else {
            value += c;
          }
        }
        if (!s.labels.emplace(key, value).second) return bad("duplicate label " + key);
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size()) return bad("unterminated labels");
      ++i;
    }
    if (i >= line.size() || line[i] != ' ') return bad("no space before the value");
    s.value = line.substr(i + 1);
    if (s.value.empty() || s.value.find_first_not_of("0123456789") != std::string::npos)
      return bad("value is not an unsigned integer: '" + s.value + "'");
    out.push_back(std::move(s));
  }
  return out;
}

/// The value of the sample `name` whose labels include all of `want`; -1 if none.
long long valueOf(const std::vector<Sample>& samples, const std::string& name,
                  const std::map<std::string, std::string>& want) {
  for (const auto& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : want) {
      auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) return std::stoll(s.value);
  }
  return -1;
}

// ---------------------------------------------------------------- unit tests

TEST(MetricsUnit, LatencyBucketsAreLog2Microseconds) {
  using detail::latencyBucket;
  EXPECT_EQ(latencyBucket(0), 0u);
  EXPECT_EQ(latencyBucket(1), 0u);
  EXPECT_EQ(latencyBucket(2), 1u);
  EXPECT_EQ(latencyBucket(3), 2u);
  EXPECT_EQ(latencyBucket(4), 2u);
  EXPECT_EQ(latencyBucket(5), 3u);
  EXPECT_EQ(latencyBucket(1024), 10u);
  EXPECT_EQ(latencyBucket(1025), 11u);
  EXPECT_EQ(latencyBucket(UINT64_MAX), LatencyHistogram::kBuckets - 1);
  for (size_t i = 0; i + 1 < LatencyHistogram::kBuckets; ++i)
    EXPECT_EQ(latencyBucket(LatencyHistogram::upperBoundUs(i)), i);
}

TEST(MetricsUnit, LabelValuesAreEscaped) {
  EXPECT_EQ(detail::escapeLabelValue("plain"), "plain");
  EXPECT_EQ(detail::escapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
}

TEST(MetricsUnit, HostilePeerNameRendersParseably) {
  EngineStats stats;
  stats.rails.push_back({"ucx \"rail\"\n", {}});
  ConnectionStats c;
  c.id = 7;
  c.peer = std::string("x\"} 1\nzcx_fake{a=\"\\") + '\0' + "end\\";
  c.open = true;
  c.traffic.op(OpKind::kWrite).operations = 3;
  c.traffic.op(OpKind::kWrite).bytes = 300;
  c.traffic.errors[static_cast<size_t>(StatusCode::kTimedOut)] = 2;
  stats.connections.push_back(c);
  std::string text = detail::renderPrometheus(stats, "engine\nname");
  auto samples = parsePrometheus(text);
  ASSERT_TRUE(samples.ok()) << samples.status().toString() << "\n" << text;
  EXPECT_EQ(valueOf(*samples, "zcx_bytes_total", {{"peer", c.peer}, {"op", "write"}}), 300);
  EXPECT_EQ(valueOf(*samples, "zcx_errors_total", {{"peer", c.peer}, {"code", "TimedOut"}}), 2);
  EXPECT_EQ(valueOf(*samples, "zcx_fake", {}), -1) << "a peer name injected a sample";
}

TEST(MetricsUnit, HttpResponses) {
  auto render = [] { return std::string("body\n"); };
  auto status = [&](std::string_view req) {
    std::string r = detail::metricsHttpResponse(req, 8192, render);
    return r.substr(0, r.find("\r\n"));
  };
  EXPECT_EQ(status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.0 200 OK");
  EXPECT_EQ(status("GET /metrics?x=1 HTTP/1.0\n\n"), "HTTP/1.0 200 OK");
  EXPECT_EQ(status("GET / HTTP/1.0\r\n\r\n"), "HTTP/1.0 404 Not Found");
  EXPECT_EQ(status("GET /metricsx HTTP/1.0\r\n\r\n"), "HTTP/1.0 404 Not Found");
  EXPECT_EQ(status("POST /metrics HTTP/1.0\r\n\r\n"), "HTTP/1.0 405 Method Not Allowed");
  EXPECT_EQ(status("DELETE / HTTP/1.0\r\n\r\n"), "HTTP/1.0 405 Method Not Allowed");
  EXPECT_EQ(status("GET /metrics\r\n\r\n"), "HTTP/1.0 400 Bad Request");
  EXPECT_EQ(status("GET  /metrics HTTP/1.0\r\n\r\n"), "HTTP/1.0 400 Bad Request");
  EXPECT_EQ(status("\x01\x02\xff\r\n\r\n"), "HTTP/1.0 400 Bad Request");
  EXPECT_EQ(status("\r\n\r\n"), "HTTP/1.0 400 Bad Request");
  EXPECT_EQ(status(std::string(9000, 'A')), "HTTP/1.0 431 Request Header Fields Too Large");
  EXPECT_EQ(status("GET /metrics HTTP/1.0\r\nX: " + std::string(9000, 'a') + "\r\n\r\n"),
            "HTTP/1.0 431 Request Header Fields Too Large");
  std::string ok = detail::metricsHttpResponse("GET /metrics HTTP/1.0\r\n\r\n", 8192, render);
  EXPECT_NE(ok.find("Content-Length: 5\r\n"), std::string::npos) << ok;
  EXPECT_EQ(ok.substr(ok.size() - 5), "body\n");
}

TEST(MetricsUnit, MetricsAddressIsValidated) {
  for (const char* bad : {":0", "nohost", "127.0.0.1:99999", "127.0.0.1"}) {
    auto e = Engine::create(options(false, bad));
    ASSERT_FALSE(e.ok()) << bad;
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument) << e.status().toString();
  }
}

// ---------------------------------------------------------------- counters of real transfers

struct Pair {
  std::unique_ptr<Engine> server, client;
  Connection to_server, to_client;
};

Pair connectPair(EngineOptions server_options, EngineOptions client_options) {
  Pair p;
  p.server = makeEngine(server_options);
  p.client = makeEngine(client_options);
  if (!p.server || !p.client) return p;
  auto c = p.client->connect(p.server->listenAddress());
  EXPECT_TRUE(c.ok()) << c.status().toString();
  if (c.ok()) p.to_server = std::move(*c);
  auto a = p.server->accept(5s);
  EXPECT_TRUE(a.ok()) << a.status().toString();
  if (a.ok()) p.to_client = std::move(*a);
  return p;
}

/// The one connection's counters in `stats` (fails the test if there is not exactly one).
const TrafficStats& onlyConnection(const EngineStats& stats) {
  static const TrafficStats none;
  EXPECT_EQ(stats.connections.size(), 1u);
  return stats.connections.empty() ? none : stats.connections[0].traffic;
}

void expectHistogramMatches(const OpStats& op, const char* what) {
  uint64_t sum = 0;
  for (uint64_t b : op.latency.buckets) sum += b;
  EXPECT_EQ(op.latency.count, op.operations) << what;
  EXPECT_EQ(sum, op.operations) << what;
}

TEST(Metrics, CountersMatchWhatWasMoved) {
  Pair p = connectPair(options(true), options(false));
  ASSERT_TRUE(p.to_server.valid() && p.to_client.valid());

  constexpr size_t kSize = 1 << 20;
  std::vector<uint8_t> target(kSize, 0), source(kSize, 0), back(kSize, 0);
  auto target_region = p.server->registerMemory(target.data(), kSize, kRemoteReadWrite);
  ASSERT_TRUE(target_region.ok()) << target_region.status().toString();
  ASSERT_TRUE(p.server->expose("target", *target_region).ok());
  auto src = p.client->registerMemory(source.data(), kSize, kLocalOnly);
  auto dst = p.client->registerMemory(back.data(), kSize, kLocalOnly);
  ASSERT_TRUE(src.ok() && dst.ok());
  auto remote = p.to_server.remoteRegion("target");
  ASSERT_TRUE(remote.ok()) << remote.status().toString();

  for (size_t i = 0; i < kSize; ++i) source[i] = static_cast<uint8_t>(i * 31 + 7);
  uint64_t written = 0, read = 0, sent = 0;
  const size_t write_sizes[] = {1, 100, 4096, 65536, kSize};
  for (size_t n : write_sizes) {
    ASSERT_TRUE(p.to_server.write(*src, 0, *remote, 0, n).wait(20s).ok());
    written += n;
  }
  // A batch is one operation carrying the sum of its lengths.
  RmaOp batch[2] = {{&*src, 0, &*remote, 0, 1000}, {&*src, 1000, &*remote, 1000, 2000}};
  ASSERT_TRUE(p.to_server.writeBatch(batch).wait(20s).ok());
  written += 3000;
  const size_t read_sizes[] = {7, 8192, kSize};
  for (size_t n : read_sizes) {
    ASSERT_TRUE(p.to_server.read(*dst, 0, *remote, 0, n).wait(20s).ok());
    read += n;
  }
  ASSERT_EQ(0, std::memcmp(source.data(), back.data(), kSize)) << "the bytes really moved";

  // Two-sided: three messages, received into the server's buffer.
  std::vector<uint8_t> inbox(64 * 1024);
  auto inbox_region = p.server->registerMemory(inbox.data(), inbox.size(), kLocalOnly);
  ASSERT_TRUE(inbox_region.ok());
  const size_t msg_sizes[] = {1, 333, 60000};
  std::vector<Request> recvs;
  for (size_t i = 0; i < 3; ++i) recvs.push_back(p.to_client.recv(*inbox_region, 0, inbox.size()));
  for (size_t n : msg_sizes) {
    ASSERT_TRUE(p.to_server.send(*src, 0, n).wait(20s).ok());
    sent += n;
  }
  for (auto& r : recvs) ASSERT_TRUE(r.wait(20s).ok());

  // Errors: two refused before posting (out of range), counted under their code.
  EXPECT_EQ(p.to_server.write(*src, 0, *remote, kSize - 10, 11).wait(5s).code(),
            StatusCode::kOutOfRange);
  EXPECT_EQ(p.to_server.read(*dst, kSize, *remote, 0, 1).wait(5s).code(), StatusCode::kOutOfRange);

  EngineStats cs = p.client->stats();
  const TrafficStats& c = onlyConnection(cs);
  EXPECT_EQ(c.op(OpKind::kWrite).operations, std::size(write_sizes) + 1);
  EXPECT_EQ(c.op(OpKind::kWrite).bytes, written);
  EXPECT_EQ(c.op(OpKind::kRead).operations, std::size(read_sizes));
  EXPECT_EQ(c.op(OpKind::kRead).bytes, read);
  EXPECT_EQ(c.op(OpKind::kSend).operations, 3u);
  EXPECT_EQ(c.op(OpKind::kSend).bytes, sent);
  EXPECT_EQ(c.op(OpKind::kRecv).operations, 0u);
  EXPECT_EQ(c.error(StatusCode::kOutOfRange), 2u);
  uint64_t other_errors = 0;
  for (uint64_t e : c.errors) other_errors += e;
  EXPECT_EQ(other_errors, 2u);
  for (size_t k = 0; k < kOpKinds; ++k) expectHistogramMatches(c.ops[k], "client");
  EXPECT_GT(c.op(OpKind::kWrite).latency.sum_us, 0u);
  ASSERT_EQ(cs.rails.size(), 1u);
  EXPECT_EQ(cs.rails[0].name, p.client->transportDescription());
  EXPECT_EQ(cs.rails[0].traffic.op(OpKind::kWrite).bytes, written);
  EXPECT_TRUE(cs.connections[0].open);

  EngineStats ss = p.server->stats();
  const TrafficStats& s = onlyConnection(ss);
  EXPECT_EQ(s.op(OpKind::kRecv).operations, 3u);
  EXPECT_EQ(s.op(OpKind::kRecv).bytes, sent);
  EXPECT_EQ(s.op(OpKind::kWrite).operations, 0u);  // one-sided: the target counts nothing
  expectHistogramMatches(s.op(OpKind::kRecv), "server recv");

  // The same numbers in the Prometheus text.
  std::string text = p.client->metricsText();
  auto samples = parsePrometheus(text);
  ASSERT_TRUE(samples.ok()) << samples.status().toString() << "\n" << text;
  EXPECT_EQ(valueOf(*samples, "zcx_bytes_total", {{"op", "write"}}),
            static_cast<long long>(written));
  EXPECT_EQ(valueOf(*samples, "zcx_operations_total", {{"op", "read"}}), 3);
  EXPECT_EQ(valueOf(*samples, "zcx_errors_total", {{"code", "OutOfRange"}}), 2);
  EXPECT_EQ(valueOf(*samples, "zcx_latency_microseconds_count", {{"op", "write"}}), 6);
  EXPECT_EQ(valueOf(*samples, "zcx_latency_microseconds_bucket", {{"op", "write"}, {"le", "+Inf"}}),
            6);
  EXPECT_EQ(valueOf(*samples, "zcx_rail_bytes_total", {{"op", "send"}}),
            static_cast<long long>(sent));
  EXPECT_EQ(valueOf(*samples, "zcx_connections_open", {}), 1);
  EXPECT_NE(text.find("# TYPE zcx_latency_microseconds histogram\n"), std::string::npos);

  // A close cancels a posted receive: counted as Cancelled. The connection's counts then stay
  // in the rail's totals once nothing refers to the connection.
  Request pending = p.to_client.recv(*inbox_region, 0, inbox.size());
  p.to_client.close();
  EXPECT_EQ(pending.wait(5s).code(), StatusCode::kCancelled);
  ss = p.server->stats();
  ASSERT_EQ(ss.connections.size(), 1u);
  EXPECT_FALSE(ss.connections[0].open);
  EXPECT_EQ(ss.connections[0].traffic.error(StatusCode::kCancelled), 1u);
  p.to_client = Connection();
  // The engine's threads may still hold the closed connection for a moment.
  auto until = Clock::now() + 5s;
  do {
    ss = p.server->stats();
  } while (!ss.connections.empty() && Clock::now() < until &&
           (std::this_thread::sleep_for(1ms), true));
  EXPECT_TRUE(ss.connections.empty()) << "a closed, unreferenced connection stays listed";
  EXPECT_EQ(ss.rails[0].traffic.op(OpKind::kRecv).bytes, sent);
  EXPECT_EQ(ss.rails[0].traffic.error(StatusCode::kCancelled), 1u);
}

TEST(Metrics, HostilePeerNameIsEscaped) {
  EngineOptions evil = options(false);
  evil.name = "evil\"} 1\nzcx_injected 1\n\\";
  Pair p = connectPair(options(true), evil);
  ASSERT_TRUE(p.to_client.valid());
  // The handshake already turned the control characters into '?' (they would forge log lines);
  // the quote and the backslash are left for the Prometheus escaping to handle.
  const std::string seen = "evil\"} 1?zcx_injected 1?\\";
  EXPECT_EQ(p.to_client.peerName(), seen);
  std::string text = p.server->metricsText();
  auto samples = parsePrometheus(text);
  ASSERT_TRUE(samples.ok()) << samples.status().toString() << "\n" << text;
  EXPECT_EQ(valueOf(*samples, "zcx_injected", {}), -1);
  EXPECT_EQ(valueOf(*samples, "zcx_operations_total", {{"peer", seen}, {"op", "write"}}), 0);
}

// ---------------------------------------------------------------- the HTTP server

/// A plain TCP socket connected to 127.0.0.1:port.
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

struct Socket {
  int fd;
  explicit Socket(int f) : fd(f) {}
  ~Socket() {
    if (fd >= 0) ::close(fd);
  }
};

/// Reads until EOF or `timeout`; `eof` says which.
std::string readAll(int fd, std::chrono::milliseconds timeout, bool* eof = nullptr) {
  std::string out;
  auto until = Clock::now() + timeout;
  if (eof) *eof = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
    if (left.count() <= 0) return out;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      if (eof) *eof = true;
      return out;
    }
    out.append(buf, static_cast<size_t>(n));
  }
}

/// Sends `request` on a new connection and returns the whole response.
std::string exchange(uint16_t port, const std::string& request,
                     std::chrono::milliseconds timeout = 5s) {
  Socket s(rawConnect(port));
  if (s.fd < 0) return "connect failed";
  if (::send(s.fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size()))
    return "send failed";
  return readAll(s.fd, timeout);
}

std::string statusLine(const std::string& response) {
  return response.substr(0, response.find("\r\n"));
}

class MetricsHttp : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = makeEngine(options(false, "127.0.0.1:0"));
    ASSERT_NE(engine_, nullptr);
    ASSERT_EQ(engine_->metricsAddress().rfind("127.0.0.1:", 0), 0u) << engine_->metricsAddress();
    port_ = portOf(engine_->metricsAddress());
    ASSERT_NE(port_, 0);
  }
  bool scrapeOk(std::chrono::milliseconds timeout = 5s) {
    std::string r = exchange(port_, "GET /metrics HTTP/1.0\r\n\r\n", timeout);
    return statusLine(r) == "HTTP/1.0 200 OK" &&
           r.find("# TYPE zcx_bytes_total counter") != std::string::npos;
  }
  std::unique_ptr<Engine> engine_;
  uint16_t port_ = 0;
};

TEST_F(MetricsHttp, ScrapesMetricsOverARealSocket) {
  std::string r = exchange(port_, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
  ASSERT_EQ(statusLine(r), "HTTP/1.0 200 OK") << r;
  size_t body = r.find("\r\n\r\n");
  ASSERT_NE(body, std::string::npos);
  std::string text = r.substr(body + 4);
  EXPECT_EQ(text, engine_->metricsText());
  auto samples = parsePrometheus(text);
  ASSERT_TRUE(samples.ok()) << samples.status().toString();
  EXPECT_EQ(valueOf(*samples, "zcx_connections_open", {}), 0);
  EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(r.find("Content-Length: " + std::to_string(text.size()) + "\r\n"), std::string::npos);
}

TEST_F(MetricsHttp, WrongMethodAndPath) {
  EXPECT_EQ(statusLine(exchange(port_, "POST /metrics HTTP/1.0\r\n\r\n")),
            "HTTP/1.0 405 Method Not Allowed");
  EXPECT_EQ(statusLine(exchange(port_, "HEAD /metrics HTTP/1.0\r\n\r\n")),
            "HTTP/1.0 405 Method Not Allowed");
  EXPECT_EQ(statusLine(exchange(port_, "GET /admin HTTP/1.0\r\n\r\n")), "HTTP/1.0 404 Not Found");
  EXPECT_EQ(statusLine(exchange(port_, "GET / HTTP/1.0\r\n\r\n")), "HTTP/1.0 404 Not Found");
  EXPECT_TRUE(scrapeOk());
}

TEST_F(MetricsHttp, OversizeRequestGets431AndClose) {
  // Headers that never end: the server answers once it has more than 8 KiB and closes.
  std::string big = "GET /metrics HTTP/1.0\r\nX: " + std::string(20000, 'a');
  bool eof = false;
  Socket s(rawConnect(port_));
  ASSERT_GE(s.fd, 0);
  ASSERT_EQ(::send(s.fd, big.data(), big.size(), MSG_NOSIGNAL), static_cast<ssize_t>(big.size()));
  std::string r = readAll(s.fd, 5s, &eof);
  EXPECT_EQ(statusLine(r), "HTTP/1.0 431 Request Header Fields Too Large") << r.substr(0, 200);
  EXPECT_TRUE(eof) << "the server keeps an oversize client open";
  EXPECT_TRUE(scrapeOk());
}

TEST_F(MetricsHttp, GarbageBytesNeverCrashIt) {
  std::mt19937 rng(12);
  for (int i = 0; i < 20; ++i) {
    std::string junk(1 + rng() % 3000, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    if (i % 2) junk += "\r\n\r\n";  // half of them end their "headers"
    Socket s(rawConnect(port_));
    ASSERT_GE(s.fd, 0);
    (void)::send(s.fd, junk.data(), junk.size(), MSG_NOSIGNAL);
    if (i % 2) {
      std::string r = readAll(s.fd, 5s);
      EXPECT_EQ(r.rfind("HTTP/1.0 4", 0), 0u) << "junk " << i << " got: " << r.substr(0, 100);
    }
  }
  EXPECT_EQ(statusLine(exchange(port_, "\r\n\r\n")), "HTTP/1.0 400 Bad Request");
  EXPECT_TRUE(scrapeOk());
}

TEST_F(MetricsHttp, RequestSplitAcrossPacketsIsAnswered) {
  // The header terminator straddles two packets; the pauses (pacing, not synchronisation) let
  // each piece arrive on its own.
  Socket s(rawConnect(port_));
  ASSERT_GE(s.fd, 0);
  for (std::string piece : {"GET /met", "rics HTTP/1.0\r", "\n\r", "\n"}) {
    ASSERT_EQ(::send(s.fd, piece.data(), piece.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(piece.size()));
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(statusLine(readAll(s.fd, 5s)), "HTTP/1.0 200 OK");
}

TEST_F(MetricsHttp, IdleSocketsDoNotStallOtherScrapers) {
  // Idle clients (connected, sending nothing) and one that sent half a request.
  std::vector<std::unique_ptr<Socket>> idle;
  for (int i = 0; i < 8; ++i) {
    idle.push_back(std::make_unique<Socket>(rawConnect(port_)));
    ASSERT_GE(idle.back()->fd, 0);
  }
  Socket half(rawConnect(port_));
  ASSERT_GE(half.fd, 0);
  ASSERT_EQ(::send(half.fd, "GET /met", 8, MSG_NOSIGNAL), 8);
  auto start = Clock::now();
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(scrapeOk(1s)) << "scrape " << i;
  EXPECT_LT(Clock::now() - start, 1s) << "scrapes waited behind idle sockets";
  // The server drops the idle ones at its client timeout (2 s), not never.
  bool eof = false;
  std::string got = readAll(idle[0]->fd, 5s, &eof);
  EXPECT_TRUE(eof) << "an idle socket is held beyond the client timeout";
  EXPECT_TRUE(got.empty()) << got;
  got = readAll(half.fd, 5s, &eof);
  EXPECT_TRUE(eof);
}

TEST_F(MetricsHttp, StoppingTheEngineStopsTheServerPromptly) {
  Socket idle(rawConnect(port_));
  ASSERT_GE(idle.fd, 0);
  ASSERT_TRUE(scrapeOk());
  auto start = Clock::now();
  engine_.reset();
  EXPECT_LT(Clock::now() - start, 1s);
  bool eof = false;
  readAll(idle.fd, 2s, &eof);
  EXPECT_TRUE(eof) << "the idle client's socket outlived the engine";
  EXPECT_LT(rawConnect(port_), 0) << "still listening after the engine stopped";
}

TEST(MetricsHttpLimits, TooManyClientsAreClosedNotQueued) {
  detail::HostPort where{"127.0.0.1", 0};
  detail::MetricsServer::Limits limits;
  limits.max_clients = 2;
  limits.client_timeout = 10s;
  auto server = detail::MetricsServer::start(
      where, [] { return std::string("x\n"); }, limits);
  ASSERT_TRUE(server.ok()) << server.status().toString();
  uint16_t port = portOf((*server)->address());
  Socket a(rawConnect(port)), b(rawConnect(port));
  // Both idle clients must have been accepted before the third arrives; the scrape below
  // proves the server loop went round.
  std::string r = exchange(port, "GET /metrics HTTP/1.0\r\n\r\n", 2s);
  // Two idle clients fill it: a third connection is closed at once (no response, no wait).
  EXPECT_EQ(r, "");
  ::close(a.fd);
  a.fd = -1;
  // A freed slot serves again (the server notices the close within its poll round).
  std::string ok;
  auto until = Clock::now() + 5s;
  while (Clock::now() < until && statusLine(ok) != "HTTP/1.0 200 OK")
    ok = exchange(port, "GET /metrics HTTP/1.0\r\n\r\n", 2s);
  EXPECT_EQ(statusLine(ok), "HTTP/1.0 200 OK");
}

}  // namespace
}  // namespace zcx::test

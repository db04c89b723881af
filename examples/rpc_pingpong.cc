// Request/response over two-sided send/recv, as an RPC layer uses zcx: the client sends a
// request, the server computes the response from it (the payload reversed, each byte XOR 0x5A)
// and sends it back; the client checks every byte of every response and prints the round-trip
// latency percentiles for a few message sizes.
//
//   build/examples/rpc_pingpong                       # both sides on this machine
//   build/examples/rpc_pingpong server 0.0.0.0:18620  # on the server node
//   build/examples/rpc_pingpong client server:18620   # on the client node
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "example_common.h"
#include "zcx/zcx.h"

using namespace std::chrono_literals;
using example::Clock;

namespace {

struct Header {
  uint64_t seq;
  uint32_t length;  // payload bytes after the header
  uint32_t last;    // 1: the client is done, no response
};

constexpr size_t kSizes[] = {64, 4096, 32768};  // payload bytes
constexpr int kWarmup = 200;
constexpr int kIters = 2000;
constexpr size_t kMaxPayload = 32768;
constexpr size_t kMaxMessage = sizeof(Header) + kMaxPayload;

void respond(const uint8_t* request, uint8_t* response) {
  Header h;
  std::memcpy(&h, request, sizeof(h));
  std::memcpy(response, &h, sizeof(h));
  const uint8_t* in = request + sizeof(h);
  uint8_t* out = response + sizeof(h);
  for (uint32_t i = 0; i < h.length; ++i) out[i] = in[h.length - 1 - i] ^ 0x5A;
}

int server(const std::string& listen, const std::function<void(std::string)>& ready) {
  zcx::EngineOptions options;
  options.listen_address = listen;
  auto engine = zcx::Engine::create(options);
  if (!engine.ok()) return example::fail("engine", engine.status());
  // Two receive buffers: the next request's receive is posted before this response is sent.
  auto in = (*engine)->allocate(2 * kMaxMessage, zcx::kLocalOnly);
  auto out = (*engine)->allocate(kMaxMessage, zcx::kLocalOnly);
  if (!in.ok() || !out.ok()) return example::fail("allocate", in.ok() ? out.status() : in.status());
  ready((*engine)->listenAddress());
  auto conn = (*engine)->accept(60s);
  if (!conn.ok()) return example::fail("accept", conn.status());

  uint64_t served = 0;
  int slot = 0;
  zcx::Request next = conn->recv(*in, 0, kMaxMessage);
  for (;;) {
    zcx::Request got = next;
    if (auto s = got.wait(60s); !s.ok()) return example::fail("receive a request", s);
    const uint8_t* request = in->data() + slot * kMaxMessage;
    Header h;
    std::memcpy(&h, request, sizeof(h));
    if (h.last) break;
    if (h.length > kMaxPayload || got.bytes() != sizeof(h) + h.length)
      return std::fputs("error: malformed request\n", stderr), 1;
    slot ^= 1;
    next = conn->recv(*in, slot * kMaxMessage, kMaxMessage);
    respond(request, out->data());
    if (auto s = conn->send(*out, 0, got.bytes()).wait(30s); !s.ok())
      return example::fail("send a response", s);
    ++served;
  }
  std::printf("server:  answered %" PRIu64 " requests\n", served);
  return 0;
}

int client(const std::string& address) {
  auto engine = zcx::Engine::create({});
  if (!engine.ok()) return example::fail("engine", engine.status());
  auto conn = (*engine)->connect(address);
  if (!conn.ok()) return example::fail("connect", conn.status());
  if (conn->maxMessageSize() < kMaxMessage)
    return std::fprintf(stderr, "error: messages are limited to %zu bytes\n",
                        conn->maxMessageSize()),
           1;
  auto req = (*engine)->allocate(kMaxMessage, zcx::kLocalOnly);
  auto resp = (*engine)->allocate(kMaxMessage, zcx::kLocalOnly);
  if (!req.ok() || !resp.ok())
    return example::fail("allocate", req.ok() ? resp.status() : req.status());
  std::vector<uint8_t> expected(kMaxMessage);
  std::mt19937_64 rng(std::random_device{}());

  std::printf("client:  %d round trips per size over %s, every response checked\n", kIters,
              std::string((*engine)->transportName()).c_str());
  std::printf("client:  %8s %9s %9s %9s %9s %12s\n", "payload", "p50 us", "p99 us", "p99.9 us",
              "max us", "requests/s");
  uint64_t seq = 0;
  for (size_t size : kSizes) {
    std::vector<double> rtt_us;
    rtt_us.reserve(kIters);
    auto t_size = Clock::now();
    for (int it = 0; it < kWarmup + kIters; ++it) {
      if (it == kWarmup) t_size = Clock::now();
      Header h{++seq, static_cast<uint32_t>(size), 0};
      std::memcpy(req->data(), &h, sizeof(h));
      for (size_t i = 0; i < size; i += 8) {
        uint64_t word = rng();
        std::memcpy(req->data() + sizeof(h) + i, &word, std::min<size_t>(8, size - i));
      }
      respond(req->data(), expected.data());
      size_t length = sizeof(h) + size;

      auto t0 = Clock::now();
      zcx::Request response = conn->recv(*resp, 0, kMaxMessage);  // posted before the request
      zcx::Request request = conn->send(*req, 0, length);
      if (auto s = request.wait(30s); !s.ok()) return example::fail("send a request", s);
      if (auto s = response.wait(30s); !s.ok()) return example::fail("receive a response", s);
      auto t1 = Clock::now();
      if (response.bytes() != length || std::memcmp(resp->data(), expected.data(), length) != 0) {
        std::fprintf(stderr, "error: response %" PRIu64 " differs from what was expected\n", seq);
        return 1;
      }
      if (it >= kWarmup)
        rtt_us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    double rate = kIters / example::secondsSince(t_size);
    double p50 = example::percentile(rtt_us, 0.50), p99 = example::percentile(rtt_us, 0.99);
    double p999 = example::percentile(rtt_us, 0.999), max = rtt_us.back();
    std::printf("client:  %8zu %9.1f %9.1f %9.1f %9.1f %12.0f\n", size, p50, p99, p999, max, rate);
  }
  Header bye{++seq, 0, 1};
  std::memcpy(req->data(), &bye, sizeof(bye));
  if (auto s = conn->send(*req, 0, sizeof(bye)).wait(30s); !s.ok())
    return example::fail("send the last message", s);
  return example::waitForPeerClose(*conn, 30s).ok() ? 0 : example::fail("close", conn->status());
}

}  // namespace

int main(int argc, char** argv) { return example::run(argc, argv, server, client); }

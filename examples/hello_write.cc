// The README's example: the server exposes a buffer; the client writes into it and notifies.
//   build/examples/hello_write server 127.0.0.1:18600
//   build/examples/hello_write client 127.0.0.1:18600
#include <glog/logging.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "zcx/zcx.h"

using namespace std::chrono_literals;

int fail(const zcx::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.toString().c_str());
  return 1;
}

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s server|client HOST:PORT\n", argv[0]);
    return 2;
  }
  std::string role = argv[1], address = argv[2];

  zcx::EngineOptions options;  // transport "auto": verbs if an RDMA port is up, else UCX
  if (role == "server") options.listen_address = address;
  auto engine = zcx::Engine::create(options);
  if (!engine.ok()) return fail(engine.status());

  std::vector<char> buffer(4096, 0);
  auto region = (*engine)->registerMemory(buffer.data(), buffer.size(), zcx::kRemoteWrite);
  if (!region.ok()) return fail(region.status());

  if (role == "server") {
    if (auto s = (*engine)->expose("inbox", *region); !s.ok()) return fail(s);
    auto conn = (*engine)->accept(60s);
    if (!conn.ok()) return fail(conn.status());
    auto note = conn->waitNotification(60s);  // arrives after the data is visible
    if (!note.ok()) return fail(note.status());
    std::printf("server: notification %u, inbox says \"%s\"\n", *note, buffer.data());
    return 0;
  }

  auto conn = (*engine)->connect(address);
  if (!conn.ok()) return fail(conn.status());
  auto inbox = conn->remoteRegion("inbox");  // address + key, exchanged by the handshake
  if (!inbox.ok()) return fail(inbox.status());
  std::snprintf(buffer.data(), buffer.size(), "hello over %s",
                std::string((*engine)->transportName()).c_str());
  zcx::RmaOp op{&*region, 0, &*inbox, 0, std::strlen(buffer.data()) + 1};
  zcx::Status done = conn->writeWithNotify({&op, 1}, 42).wait(10s);
  if (!done.ok()) return fail(done);
  std::printf("client: wrote %zu bytes\n", op.length);
  return 0;
}

// Two engines in one process over loopback: the server publishes a buffer by name, the client
// writes into it with a notification, the server checks every byte. Exits 0 when they match.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "zcx/zcx.h"  // CMake: find_package(zcx) + zcx::zcx; or pkg-config zcx
using namespace std::chrono_literals;

int fail(const char* what, const zcx::Status& s) {
  std::fprintf(stderr, "%s: %s\n", what, s.toString().c_str());
  return 1;
}

int main() {
  // Server: register memory peers may write and publish it as "inbox".
  zcx::EngineOptions server_options;  // transport "auto": verbs if an RDMA port is up, else UCX
  server_options.listen_address = "127.0.0.1:0";  // port 0: any free port
  auto server = zcx::Engine::create(server_options);
  if (!server.ok()) return fail("server engine", server.status());
  std::vector<char> inbox(1 << 20, 0);
  auto inbox_mr = (*server)->registerMemory(inbox.data(), inbox.size(), zcx::kRemoteWrite);
  if (!inbox_mr.ok()) return fail("register inbox", inbox_mr.status());
  if (auto s = (*server)->expose("inbox", *inbox_mr); !s.ok()) return fail("expose", s);

  // Client: connect, look the region up by name (address + key from the handshake).
  auto client = zcx::Engine::create({});
  if (!client.ok()) return fail("client engine", client.status());
  auto conn = (*client)->connect((*server)->listenAddress());
  if (!conn.ok()) return fail("connect", conn.status());
  auto accepted = (*server)->accept(10s);
  if (!accepted.ok()) return fail("accept", accepted.status());
  auto remote = conn->remoteRegion("inbox");
  if (!remote.ok()) return fail("remoteRegion", remote.status());

  // One write of the whole buffer, then notification 42 once the data is visible at the server.
  std::vector<char> data(inbox.size());
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  auto src = (*client)->registerMemory(data.data(), data.size(), zcx::kLocalOnly);
  if (!src.ok()) return fail("register source", src.status());
  zcx::RmaOp op{&*src, 0, &*remote, 0, data.size()};  // bounds-checked before posting
  if (auto s = conn->writeWithNotify({&op, 1}, 42).wait(10s); !s.ok()) return fail("write", s);

  auto note = accepted->waitNotification(10s);  // arrives after the data is visible here
  if (!note.ok()) return fail("notification", note.status());
  if (*note != 42 || std::memcmp(inbox.data(), data.data(), data.size()) != 0) {
    return std::puts("data or notification differ"), 1;
  }
  std::printf("wrote %zu bytes over %s, notification %u, every byte verified\n", data.size(),
              std::string((*client)->transportName()).c_str(), *note);
  return 0;
}

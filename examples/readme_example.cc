// The README's API example, compiled with the project so it cannot rot. Run it as
//   build/examples/readme_example server 127.0.0.1:18600   and   ... client 127.0.0.1:18600
#include <cstdio>
#include <string>
#include <vector>

#include "zcx/zcx.h"  // CMake: target_link_libraries(app PRIVATE zcx)
using namespace std::chrono_literals;

// Server: register a buffer peers may write, publish it by name, wait for a peer's notification.
int serve(const std::string& address, std::vector<char>& inbox) {
  zcx::EngineOptions options;        // transport "auto": verbs if an RDMA port is up, else UCX
  options.listen_address = address;  // e.g. "10.0.0.5:18600"; see Authentication below
  auto engine = zcx::Engine::create(options);
  if (!engine.ok()) return std::puts(engine.status().toString().c_str()), 1;
  auto region = (*engine)->registerMemory(inbox.data(), inbox.size(), zcx::kRemoteWrite);
  if (!region.ok() || !(*engine)->expose("inbox", *region).ok()) return 1;
  auto conn = (*engine)->accept(60s);
  if (!conn.ok()) return 1;
  auto note = conn->waitNotification(60s);  // arrives after the data is visible here
  return note.ok() ? 0 : 1;
}

// Client: look the region up by name and write into it with one notification.
int send(const std::string& address, std::vector<char>& data) {
  auto engine = zcx::Engine::create({});
  if (!engine.ok()) return 1;
  auto conn = (*engine)->connect(address);  // e.g. "server:18600"
  if (!conn.ok()) return std::puts(conn.status().toString().c_str()), 1;
  auto inbox = conn->remoteRegion("inbox");  // address + key from the handshake
  auto src = (*engine)->registerMemory(data.data(), data.size(), zcx::kLocalOnly);
  if (!inbox.ok() || !src.ok()) return 1;
  zcx::RmaOp op{&*src, 0, &*inbox, 0, data.size()};  // bounds-checked before posting
  zcx::Status done = conn->writeWithNotify({&op, 1}, 42).wait(10s);
  return done.ok() ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc != 3) return std::puts("usage: readme_example server|client HOST:PORT"), 2;
  std::vector<char> buffer(4096, 'z');
  return std::string(argv[1]) == "server" ? serve(argv[2], buffer) : send(argv[2], buffer);
}

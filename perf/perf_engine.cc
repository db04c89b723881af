// zcx_perf's engine and memory, made from the command line.
#include "perf_engine.h"

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "perf_flags.h"

namespace zcx::perf {

using namespace std::chrono_literals;

namespace {

constexpr size_t kMaxMessage = (8u << 20) + 4096;  // send tests take messages up to 8 MiB

}  // namespace

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

Result<std::map<std::string, std::string>> parseTransportParams(const std::string& list) {
  // KEY=VALUE items separated by commas; a piece without '=' continues the previous value
  // (ucx.tls=tcp,self,ucx.net_devices=lo).
  std::vector<std::string> items;
  for (size_t start = 0; start <= list.size() && !list.empty();) {
    size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    std::string piece = list.substr(start, comma - start);
    start = comma + 1;
    if (piece.empty()) {
      return Status(StatusCode::kInvalidArgument,
                    "--transport_params: an empty item in '" + list + "' (KEY=VALUE,KEY=VALUE)");
    }
    if (piece.find('=') == std::string::npos && !items.empty()) {
      items.back() += "," + piece;
    } else {
      items.push_back(std::move(piece));
    }
    if (comma == list.size()) break;
  }
  std::map<std::string, std::string> params;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    if (eq == 0 || eq == std::string::npos) {
      return Status(StatusCode::kInvalidArgument,
                    "--transport_params: '" + item + "' is not KEY=VALUE");
    }
    if (!params.emplace(item.substr(0, eq), item.substr(eq + 1)).second) {
      return Status(StatusCode::kInvalidArgument,
                    "--transport_params: " + item.substr(0, eq) + " is given twice");
    }
  }
  return params;
}

Result<std::unique_ptr<Engine>> makeEngine(const std::string& listen, ProgressMode mode) {
  EngineOptions o;
  o.transport = FLAGS_transport;
  // Several devices ("rxe0,rxe1", "all") are rails: EngineOptions::devices.
  if (FLAGS_device == "all" || FLAGS_device.find(',') != std::string::npos) {
    o.devices = FLAGS_device;
  } else {
    o.device = FLAGS_device;
  }
  o.gid_index = FLAGS_gid_index;
  if (!FLAGS_ucx_tls.empty()) o.transport_params["ucx.tls"] = FLAGS_ucx_tls;
  if (!FLAGS_ucx_net_devices.empty()) o.transport_params["ucx.net_devices"] = FLAGS_ucx_net_devices;
  if (!FLAGS_ucx_rma.empty()) o.transport_params["ucx.rma"] = FLAGS_ucx_rma;
  auto extra = parseTransportParams(FLAGS_transport_params);
  if (!extra.ok()) return extra.status();
  for (auto& [key, value] : *extra) {
    // The engine checks keys and values: an unknown one fails Engine::create with its name.
    if (!o.transport_params.emplace(key, value).second) {
      return Status(StatusCode::kInvalidArgument, "--transport_params: " + key +
                                                      " is also set by --ucx_tls/--ucx_net_devices/"
                                                      "--ucx_rma");
    }
  }
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

std::string listenAddress(int default_port) {
  const std::string& l = FLAGS_listen;
  const auto colon = l.rfind(':');
  const bool has_port = l.front() == '[' ? l.find("]:") != std::string::npos
                                         : colon != std::string::npos && l.find(':') == colon;
  if (has_port) return l;
  const bool bare_v6 = l.front() != '[' && l.find(':') != std::string::npos;
  return (bare_v6 ? "[" + l + "]" : l) + ":" + std::to_string(default_port);
}

std::string listenHost() {
  std::string host = listenAddress(0);
  host.resize(host.rfind(':'));
  return host;
}

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

}  // namespace zcx::perf

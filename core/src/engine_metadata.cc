#include "engine_metadata.h"

#include <algorithm>

#include "socket.h"
#include "zcx/memory.h"

namespace zcx::detail {
namespace {
bool isWildcard(std::string_view host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]";
}
}  // namespace

MetadataConfig metadataConfig(const EngineOptions& o) {
  MetadataConfig c;
  c.url = o.metadata;
  c.prefix = o.metadata_prefix;
  c.lease_ttl = o.metadata_lease_ttl;
  // A keepalive must be able to try every member well within the lease.
  c.call_timeout = std::min<std::chrono::milliseconds>(
      o.connect_timeout,
      std::chrono::duration_cast<std::chrono::milliseconds>(o.metadata_lease_ttl) / 2);
  return c;
}

Status validateMetadataOptions(const EngineOptions& o) {
  if (o.metadata.empty()) {
    if (!o.advertise_host.empty()) {
      return Status(StatusCode::kInvalidArgument,
                    "advertise_host is what an engine publishes in etcd; set metadata too "
                    "(etcd://HOST:PORT) or leave advertise_host empty");
    }
    return Status::Ok();
  }
  ZCX_RETURN_IF_ERROR(validateMetadataConfig(metadataConfig(o)));
  if (o.listen_address.empty()) return Status::Ok();  // connects only: publishes nothing
  if (o.name.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "metadata is set and the engine listens, so it publishes itself in etcd under "
                  "its name: set EngineOptions::name (zcx_perf --name), 1-128 characters of "
                  "A-Z a-z 0-9 . _ -");
  }
  ZCX_RETURN_IF_ERROR(validateEngineName(o.name));
  auto hp = parseHostPort(o.listen_address);
  if (!hp.ok()) return hp.status();
  if (!o.advertise_host.empty()) {
    if (isWildcard(o.advertise_host) || o.advertise_host.find('/') != std::string::npos ||
        o.advertise_host.size() > 253) {
      return Status(StatusCode::kInvalidArgument,
                    "advertise_host '" + o.advertise_host +
                        "' is not an address peers can dial; give this node's IP or host name");
    }
  } else if (isWildcard(hp->host)) {
    return Status(StatusCode::kInvalidArgument,
                  "listen_address '" + o.listen_address +
                      "' listens on every interface, which is no address a peer can dial: set "
                      "EngineOptions::advertise_host (zcx_perf --advertise_host) to the address "
                      "peers should use, to be published in etcd");
  }
  return Status::Ok();
}

std::string advertisedAddress(const EngineOptions& o, std::string_view listen_host, uint16_t port) {
  std::string host = o.advertise_host.empty() ? std::string(listen_host) : o.advertise_host;
  if (host.find(':') != std::string::npos && host.front() != '[') host = "[" + host + "]";
  return host + ":" + std::to_string(port);
}

std::string regionValue(uint64_t size, uint32_t access) {
  const char* a = access == kRemoteReadWrite ? "rw"
                  : access == kRemoteRead    ? "r"
                  : access == kRemoteWrite   ? "w"
                                             : "none";
  return "size=" + std::to_string(size) + " access=" + a;
}

}  // namespace zcx::detail

// zcx_perf's engine and memory, made from the command line: the engine, the test buffer, the
// addresses it listens on and who may see what it exposes.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "zcx/zcx.h"

namespace zcx::perf {

inline Status err(StatusCode c, std::string m) { return Status(c, std::move(m)); }

/// The ExposeOptions of every exposure zcx_perf makes (--expose_to).
ExposeOptions exposeOptions();

/// --transport_params: KEY=VALUE items separated by commas, where a piece without '=' continues
/// the previous value ("ucx.tls=tcp,self,ucx.net_devices=lo"). kInvalidArgument for an empty
/// item, an item without KEY=, or a key given twice. Keys and values are the engine's to check.
Result<std::map<std::string, std::string>> parseTransportParams(const std::string& list);

/// An engine with the flags' transport, device, security and metadata settings.
Result<std::unique_ptr<Engine>> makeEngine(const std::string& listen, ProgressMode mode);

/// --listen as "host:port": a bare host (or bracketed IPv6 address) gets `default_port`.
std::string listenAddress(int default_port);

/// The host part of --listen (the --loopback server and the --mpi ranks listen there on a free
/// port).
std::string listenHost();

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

/// Fills `b` with `len` zeroed bytes of --mem memory registered with `access`.
Status makeBuffer(Engine& eng, size_t len, uint32_t access, Buffer* b);

}  // namespace zcx::perf

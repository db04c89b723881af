// zcx_perf's client: drives the tests against a server and reports the results.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "perf_common.h"

namespace zcx::perf {

/// The test the command line asks for (validated).
struct ClientConfig {
  TestKind kind;
  std::vector<uint64_t> sizes;
  int depth, qps, slots, batch;
  bool verify;
};

/// Runs `cfg` against `server` (HOST[:PORT], or a --metadata name); returns the exit code.
int runClient(const ClientConfig& cfg, const std::string& server);

}  // namespace zcx::perf

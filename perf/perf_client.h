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
  /// write_bw without --batch: one flush() per `cq_mod` writes (writeUnsignaled between them),
  /// at most `window` writes posted and not yet confirmed by a flush. cq_mod 1: one Request per
  /// write (write()).
  uint64_t cq_mod = 1, window = 1;
};

/// Runs `cfg` against `server` (HOST[:PORT], or a --metadata name); returns the exit code.
int runClient(const ClientConfig& cfg, const std::string& server);

}  // namespace zcx::perf

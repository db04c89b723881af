// zcx_perf --loopback: a server process and the client on this machine.
#pragma once

#include "perf_client.h"

namespace zcx::perf {

/// Forks and execs this binary as a server on a free port of --listen's host, runs the client
/// against it and returns the exit code (a failed server fails the run too).
int runLoopback(const ClientConfig& cfg);

}  // namespace zcx::perf

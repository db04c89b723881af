// zcx_perf's server: serves one client's tests (or, with --persistent, one client after another).
#pragma once

namespace zcx::perf {

/// Listens on --listen/--port and serves clients; returns the process exit code.
int runServer();

}  // namespace zcx::perf

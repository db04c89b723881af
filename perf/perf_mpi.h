// zcx_perf --mpi: write_bw between MPI ranks (MPI only bootstraps; zcx moves the data).
#pragma once

#include "perf_client.h"

namespace zcx::perf {

/// Measures write_bw between every ordered pair of ranks (or a ring, all at once) and prints the
/// matrix on rank 0; returns the exit code.
int runMpi(int argc, char** argv, const ClientConfig& cfg);

}  // namespace zcx::perf

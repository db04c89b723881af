// zcx_perf --mpi: every rank listens on a free port, the addresses are exchanged with
// MPI_Allgather, then each writer connects to its targets; MPI barriers order the pairs.
#include "perf_mpi.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "perf_engine.h"
#include "perf_flags.h"
#include "perf_report.h"

namespace zcx::perf {

using namespace std::chrono_literals;

namespace {

/// write_bw from this rank to `conn` (background progress: every rank's progress thread serves
/// the writes that land in its memory while this thread only posts and reaps).
Result<double> mpiWriteBw(Connection& conn, Buffer& buf, const RemoteRegion& remote, uint64_t size,
                          uint64_t iters, int depth) {
  std::vector<Request> reqs(depth);
  uint64_t posted = 0, completed = 0;
  auto t0 = Clock::now();
  for (; posted < std::min<uint64_t>(depth, iters); ++posted)
    reqs[posted % depth] = conn.write(buf.region, 0, remote, 0, size);
  while (completed < posted) {
    Request& r = reqs[completed % depth];
    Status s = r.wait();
    if (!s.ok()) return s.withContext("write");
    ++completed;
    if (posted < iters) {
      r = conn.write(buf.region, 0, remote, 0, size);
      ++posted;
    }
  }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  return completed * size / secs / 1e6;
}

}  // namespace

int runMpi(int argc, char** argv, const ClientConfig& cfg) {
  MPI_Init(&argc, &argv);
  int rank = 0, n = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "zcx_perf --mpi rank %d: %s\n", rank, what.c_str());
    MPI_Abort(MPI_COMM_WORLD, kExitFail);
    return kExitFail;
  };
  if (cfg.kind != TestKind::kWriteBw || cfg.sizes.size() != 1) {
    return fail("--mpi measures write_bw at one --size (no --all)");
  }
  const uint64_t size = cfg.sizes[0];
  const uint64_t iters =
      FLAGS_iters > 0 ? FLAGS_iters : std::clamp<uint64_t>((256ull << 20) / size, 100, 2000);
  const bool ring = FLAGS_mpi_pattern == "ring";

  // Each rank listens on a free port and publishes "host:port" through MPI.
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string listen = listenHost() + ":0";
  auto eng = makeEngine(listen, ProgressMode::kThread);
  if (!eng.ok()) return fail(eng.status().toString());
  Engine& e = **eng;
  Buffer buf;
  Status s = makeBuffer(e, size, kRemoteReadWrite, &buf);
  if (!s.ok()) return fail(s.toString());
  s = e.expose("zcx_perf", buf.region, exposeOptions());
  if (!s.ok()) return fail(s.toString());
  std::string addr = e.listenAddress();
  if (listen.rfind("0.0.0.0:", 0) == 0 || listen.rfind("[::]:", 0) == 0)
    addr = std::string(host) + addr.substr(addr.rfind(':'));
  constexpr int kAddr = 256;
  std::vector<char> all(size_t(kAddr) * n, 0);
  char mine[kAddr] = {};
  std::snprintf(mine, sizeof mine, "%s", addr.c_str());
  MPI_Allgather(mine, kAddr, MPI_CHAR, all.data(), kAddr, MPI_CHAR, MPI_COMM_WORLD);

  std::vector<int> targets;
  for (int j = 0; j < n; ++j) {
    if (j == rank) continue;
    if (!ring || j == (rank + 1) % n) targets.push_back(j);
  }
  std::vector<Connection> conns(n);
  std::vector<RemoteRegion> remotes(n);
  for (int j : targets) {
    auto c = e.connect(&all[size_t(j) * kAddr]);
    if (!c.ok())
      return fail("connecting to rank " + std::to_string(j) + ": " + c.status().toString());
    conns[j] = std::move(c.value());
    auto r = conns[j].remoteRegion("zcx_perf");
    if (!r.ok()) return fail("region of rank " + std::to_string(j) + ": " + r.status().toString());
    remotes[j] = std::move(r.value());
  }
  MPI_Barrier(MPI_COMM_WORLD);
  size_t incoming = ring ? (n > 1 ? 1 : 0) : size_t(n - 1);
  std::vector<Connection> accepted;
  for (size_t k = 0; k < incoming; ++k) {
    auto c = e.accept(30s);
    if (!c.ok()) return fail("accept: " + c.status().toString());
    accepted.push_back(std::move(c.value()));
  }
  MPI_Barrier(MPI_COMM_WORLD);

  std::vector<double> row(n, 0.0);  // MB/s from this rank to each destination
  if (ring) {
    if (n > 1) {
      int j = targets[0];
      auto bw = mpiWriteBw(conns[j], buf, remotes[j], size, iters, cfg.depth);
      if (!bw.ok()) return fail(bw.status().toString());
      row[j] = *bw;
    }
    MPI_Barrier(MPI_COMM_WORLD);
  } else {
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        if (i == j) continue;
        MPI_Barrier(MPI_COMM_WORLD);  // one pair at a time
        if (rank == i) {
          auto bw = mpiWriteBw(conns[j], buf, remotes[j], size, iters, cfg.depth);
          if (!bw.ok()) return fail(bw.status().toString());
          row[j] = *bw;
        }
      }
    }
  }
  std::vector<double> matrix(rank == 0 ? size_t(n) * n : 0);
  MPI_Gather(row.data(), n, MPI_DOUBLE, matrix.data(), n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    printMpiMatrix(matrix, n, size, iters, cfg.depth, FLAGS_mpi_pattern,
                   std::string(e.transportName()));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  for (auto& c : conns) c.close();
  for (auto& c : accepted) c.close();
  MPI_Finalize();
  return 0;
}

}  // namespace zcx::perf

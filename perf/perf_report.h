// zcx_perf's output, all of it in one place: the text table, the JSON lines (one object per
// result; with --json stdout holds nothing else), the --mpi matrix and the --metrics dump.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "perf_common.h"

namespace zcx {
class Engine;
}

namespace zcx::perf {

/// One result as a JSON object (one line).
std::string toJson(const PerfResult& r);
void printHeader(bool latency);
void printRow(const PerfResult& r);

/// The client's lines before its first result (nothing with --json).
void printClientBanner(TestKind kind, const std::string& transport, const std::string& description,
                       int depth, int qps, bool verify);
/// One result: a JSON line with --json, else a table row.
void printResult(const PerfResult& r);
/// --metrics: the engine's counters at the end of a run (stdout keeps only JSON with --json).
void printMetrics(const Engine& e, const char* side);
/// --mpi: MB/s from row rank to column rank (0: not measured).
void printMpiMatrix(const std::vector<double>& matrix, int n, uint64_t size, uint64_t iters,
                    int depth, const std::string& pattern, const std::string& transport);

}  // namespace zcx::perf

// What the workload examples share: running the two sides (two processes on this machine, or one
// side per machine), clocks, percentiles and a deterministic byte pattern to verify against.
// Only the public API (zcx/zcx.h) is used.
#pragma once

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "zcx/zcx.h"

namespace example {

using Clock = std::chrono::steady_clock;

inline double secondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline int fail(const char* what, const zcx::Status& s) {
  std::fprintf(stderr, "error: %s: %s\n", what, s.toString().c_str());
  return 1;
}

/// splitmix64: the reference data both sides can compute from a seed.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// Word w of the pattern named `seed` (bytes 8w..8w+7, little-endian).
inline uint64_t patternWord(uint64_t seed, size_t w) { return mix(seed ^ w * 0x100000001b3ULL); }

/// Fills p[0, n) with the pattern named `seed`.
inline void fillPattern(uint8_t* p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t word = patternWord(seed, i / 8);
    std::memcpy(p + i, &word, std::min<size_t>(8, n - i));
  }
}

/// The first offset where p[0, n) differs from the pattern, or n if it matches everywhere.
inline size_t checkPattern(const uint8_t* p, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t word = patternWord(seed, i / 8);
    size_t len = std::min<size_t>(8, n - i);
    if (std::memcmp(p + i, &word, len) != 0) {
      for (size_t j = 0; j < len; ++j)
        if (p[i + j] != reinterpret_cast<const uint8_t*>(&word)[j]) return i + j;
    }
  }
  return n;
}

/// q-quantile (0..1) of latencies, nearest rank; sorts `v`.
inline double percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(q * static_cast<double>(v.size()));
  return v[std::min(rank, v.size() - 1)];
}

/// The side that sent the last message waits for its peer to hang up before it exits, so that
/// message is not lost in a race with the connection's close. Ok once the peer closed.
inline zcx::Status waitForPeerClose(zcx::Connection& conn, std::chrono::milliseconds timeout) {
  auto until = Clock::now() + timeout;
  while (conn.status().ok()) {
    if (Clock::now() > until) return zcx::Status(zcx::StatusCode::kTimedOut, "peer stayed");
    usleep(1000);
  }
  return zcx::Status::Ok();
}

/// A side of an example: gets the address to listen on (server) or connect to (client) and
/// returns the process exit code. The server calls `ready(address)` once it listens.
using Server = std::function<int(const std::string& listen, std::function<void(std::string)>)>;
using Client = std::function<int(const std::string& address)>;

/// `prog server HOST:PORT` / `prog client HOST:PORT` run one side (two machines). `prog` alone
/// runs the server in a child process listening on 127.0.0.1 (any free port) and the client in
/// this one; it exits 0 only if both sides did. The fork happens before any engine exists.
inline int run(int argc, char** argv, const Server& server, const Client& client) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // both processes' lines in the order printed
  if (argc == 3 && std::string(argv[1]) == "server") {
    return server(argv[2], [](std::string address) {
      std::printf("server: listening on %s\n", address.c_str());
      std::fflush(stdout);
    });
  }
  if (argc == 3 && std::string(argv[1]) == "client") return client(argv[2]);
  if (argc != 1) {
    std::fprintf(stderr, "usage: %s [server HOST:PORT | client HOST:PORT]\n", argv[0]);
    return 2;
  }
  int fds[2];
  if (pipe(fds) != 0) return std::perror("pipe"), 1;
  std::fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) return std::perror("fork"), 1;
  if (pid == 0) {
    close(fds[0]);
    int rc = server("127.0.0.1:0", [fd = fds[1]](std::string address) {
      address += '\n';
      if (write(fd, address.data(), address.size()) != static_cast<ssize_t>(address.size())) {
        std::perror("write to parent");
      }
      close(fd);
    });
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(rc);
  }
  close(fds[1]);
  std::string address;
  pollfd pfd{fds[0], POLLIN, 0};
  char c;
  while (poll(&pfd, 1, 30000) == 1 && read(fds[0], &c, 1) == 1 && c != '\n') address += c;
  close(fds[0]);
  int rc = 1;
  if (address.empty()) {
    std::fprintf(stderr, "error: the server process did not start listening within 30 s\n");
    kill(pid, SIGKILL);
  } else {
    rc = client(address);
    std::fflush(stdout);
  }
  int wstatus = 0;
  if (waitpid(pid, &wstatus, 0) != pid || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
    std::fprintf(stderr, "error: the server process failed (wait status %d)\n", wstatus);
    rc = 1;
  }
  return rc;
}

}  // namespace example

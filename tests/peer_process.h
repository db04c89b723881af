// Test helpers: a forked peer process with a line-based command pipe, seeded data, poison checks.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace zcx::test {

constexpr uint8_t kPoison = 0xA5;

/// Deterministic bytes for (seed, position): both processes can produce and check them.
inline void fillPattern(uint8_t* p, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  uint64_t v = rng();
  for (size_t k = 0; i < n; ++i, ++k) p[i] = static_cast<uint8_t>(v >> (8 * k));
}

/// "" if [p, p+n) holds the pattern of `seed`, else where it first differs.
inline std::string checkPattern(const uint8_t* p, size_t n, uint64_t seed) {
  std::vector<uint8_t> want(n);
  fillPattern(want.data(), n, seed);
  if (n == 0 || std::memcmp(p, want.data(), n) == 0) return "";  // fast path (sanitizer builds)
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != want[i])
      return "byte " + std::to_string(i) + " is " + std::to_string(p[i]) + ", want " +
             std::to_string(want[i]);
  }
  return "";
}

/// "" if every byte of [p, p+n) is the poison.
inline std::string checkPoison(const uint8_t* p, size_t n, size_t base = 0) {
  if (n == 0 || (p[0] == kPoison && std::memcmp(p, p + 1, n - 1) == 0)) return "";  // all equal
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != kPoison)
      return "byte " + std::to_string(base + i) + " outside the target range was overwritten";
  }
  return "";
}

/// Line-oriented messages over a socketpair, every read with a timeout.
class Pipe {
 public:
  explicit Pipe(int fd = -1) : fd_(fd) {}
  void send(const std::string& line) {
    std::string l = line + "\n";
    size_t done = 0;
    while (done < l.size()) {
      ssize_t n = ::write(fd_, l.data() + done, l.size() - done);
      if (n <= 0) return;
      done += static_cast<size_t>(n);
    }
  }
  std::optional<std::string> recv(
      std::chrono::milliseconds timeout = std::chrono::milliseconds(30000)) {
    auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char tmp[4096];
      ssize_t n = ::read(fd_, tmp, sizeof(tmp));
      if (n <= 0) return std::nullopt;
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  std::string buf_;
};

/// A peer is a named function run in a fresh process: the test binary re-executes itself with
/// "--zcx-peer NAME FD ARGS..." (exec, not just fork: a forked child cannot use the RDMA device
/// contexts its parent opened, and librdmacm opens them once per process).
using PeerMain = int (*)(Pipe& pipe, const std::vector<std::string>& args);

inline std::map<std::string, PeerMain>& peerRegistry() {
  static std::map<std::string, PeerMain> registry;
  return registry;
}

struct PeerRegistration {
  PeerRegistration(const char* name, PeerMain fn) { peerRegistry()[name] = fn; }
};

/// Defines a peer: ZCX_TEST_PEER(name) { ... use pipe and args ...; return exit_code; }
#define ZCX_TEST_PEER(name)                                                     \
  static int name##PeerMain(Pipe& pipe, const std::vector<std::string>& args);  \
  static const PeerRegistration name##PeerRegistration(#name, &name##PeerMain); \
  static int name##PeerMain([[maybe_unused]] Pipe& pipe,                        \
                            [[maybe_unused]] const std::vector<std::string>& args)

/// In main(): runs the peer if this process was started as one; -1 otherwise.
inline int runPeerIfAsked(int argc, char** argv) {
  if (argc < 4 || std::string(argv[1]) != "--zcx-peer") return -1;
  auto it = peerRegistry().find(argv[2]);
  if (it == peerRegistry().end()) return 98;
  Pipe pipe(std::atoi(argv[3]));
  std::vector<std::string> args(argv + 4, argv + argc);
  return it->second(pipe, args);
}

/// A peer process; killed (SIGKILL) if still running when destroyed.
class PeerProcess {
 public:
  /// `prefix`, if given, is a command that runs the test binary, e.g. {"ip", "netns", "exec",
  /// "NS"} to start the peer inside network namespace NS (the kill then reaches that command's
  /// process, which execs the binary: the same pid).
  PeerProcess(const std::string& name, const std::vector<std::string>& args,
              const std::vector<std::string>& prefix = {}) {
    std::string exe = "/proc/self/exe";
    if (!prefix.empty()) {  // another program resolves /proc/self/exe to itself
      char path[4096];
      ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
      if (n > 0) exe.assign(path, static_cast<size_t>(n));
    }
    int sv[2];
    ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
    pid_ = ::fork();
    if (pid_ == 0) {
      int fd = ::dup(sv[1]);  // without CLOEXEC: the exec'd peer keeps it
      std::vector<std::string> argv_s = prefix;
      for (const std::string& a : {exe, std::string("--zcx-peer"), name, std::to_string(fd)})
        argv_s.push_back(a);
      argv_s.insert(argv_s.end(), args.begin(), args.end());
      std::vector<char*> argv;
      for (auto& a : argv_s) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execvp(argv[0], argv.data());
      ::_exit(97);
    }
    ::close(sv[1]);
    pipe_ = Pipe(sv[0]);
  }
  ~PeerProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    ::close(pipe_.fd());
  }
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;
  Pipe& pipe() { return pipe_; }
  pid_t pid() const { return pid_; }
  /// The exit code, or -1 if it had to be killed after `timeout`.
  int join(std::chrono::milliseconds timeout = std::chrono::milliseconds(60000)) {
    auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      if (std::chrono::steady_clock::now() >= until) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        reaped_ = true;
        return -1;
      }
      ::usleep(2000);
    }
  }
  void kill(int sig = SIGKILL) { ::kill(pid_, sig); }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  Pipe pipe_;
};

inline std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> w;
  for (std::string s; in >> s;) w.push_back(s);
  return w;
}

}  // namespace zcx::test

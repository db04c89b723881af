// Test helpers: a forked peer process with a line-based command pipe, seeded data, poison checks.
// Peers may also run on another machine (ZCX_TEST_REMOTE_PEER, see PeerProcess).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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

inline std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> w;
  for (std::string s; in >> s;) w.push_back(s);
  return w;
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

/// "host:port" of a peer server on another machine (ZCX_TEST_REMOTE_PEER), or "".
inline std::string remotePeerServer() {
  const char* v = std::getenv("ZCX_TEST_REMOTE_PEER");
  return v ? v : "";
}

/// A TCP connection to IPv4 "a.b.c.d:port", or -1.
inline int tcpConnect(const std::string& hostport) {
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos) return -1;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::atoi(hostport.c_str() + colon + 1)));
  if (::inet_pton(AF_INET, hostport.substr(0, colon).c_str(), &sa.sin_addr) != 1) return -1;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

/// A peer process; killed (SIGKILL) if still running when destroyed.
///
/// With ZCX_TEST_REMOTE_PEER=HOST:PORT in the environment, peers run on another machine: a peer
/// server there (the same test binary started as `BINARY --zcx-peer-server=ADDR:PORT`, see
/// runPeerServerIfAsked) starts each one, and the pipe is a TCP connection. kill() and join()
/// then go through the peer server, so tests that stop or kill their peer work unchanged. Peer
/// arguments must not contain blanks. A peer started with a `prefix` always runs here.
class PeerProcess {
 public:
  /// `prefix`, if given, is a command that runs the test binary, e.g. {"ip", "netns", "exec",
  /// "NS"} to start the peer inside network namespace NS (the kill then reaches that command's
  /// process, which execs the binary: the same pid).
  PeerProcess(const std::string& name, const std::vector<std::string>& args,
              const std::vector<std::string>& prefix = {}) {
    if (prefix.empty() && !remotePeerServer().empty()) {
      startRemote(name, args);
      return;
    }
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
    if (remote_) {
      if (pid_ > 0 && !reaped_) remoteKill(SIGKILL);
    } else if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (pipe_.fd() >= 0) ::close(pipe_.fd());
  }
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;
  Pipe& pipe() { return pipe_; }
  pid_t pid() const { return pid_; }
  /// The exit code, or -1 if it had to be killed after `timeout`.
  int join(std::chrono::milliseconds timeout = std::chrono::milliseconds(60000)) {
    if (remote_) return remoteJoin(timeout);
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
  void kill(int sig = SIGKILL) {
    if (remote_)
      remoteKill(sig);
    else
      ::kill(pid_, sig);
  }

 private:
  // Remote peers: the peer server answers "spawn NAME ARGS..." with "zcx-peer-pid PID", then the
  // connection is the peer's pipe, and "zcx-peer-exit CODE" follows the peer's last line.
  void startRemote(const std::string& name, const std::vector<std::string>& args) {
    remote_ = true;
    pipe_ = Pipe(tcpConnect(remotePeerServer()));
    if (pipe_.fd() < 0) {
      std::fprintf(stderr, "[remote peer %s: cannot reach the peer server %s]\n", name.c_str(),
                   remotePeerServer().c_str());
      return;
    }
    std::string line = "spawn " + name;
    for (const auto& a : args) line += " " + a;
    pipe_.send(line);
    auto hello = pipe_.recv(std::chrono::milliseconds(30000));
    if (hello && hello->rfind("zcx-peer-pid ", 0) == 0) pid_ = std::atoi(hello->c_str() + 13);
    std::fprintf(stderr, "[remote peer %s on %s, pid %d]\n", name.c_str(),
                 remotePeerServer().c_str(), static_cast<int>(pid_));
  }
  void remoteKill(int sig) {
    if (pid_ <= 0) return;
    Pipe p(tcpConnect(remotePeerServer()));
    if (p.fd() < 0) return;
    p.send("kill " + std::to_string(pid_) + " " + std::to_string(sig));
    p.recv(std::chrono::milliseconds(10000));
    ::close(p.fd());
  }
  int remoteJoin(std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    bool killed = false;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        if (killed) return -1;  // the peer server is gone too
        remoteKill(SIGKILL);
        killed = true;
        until = std::chrono::steady_clock::now() + std::chrono::milliseconds(10000);
        continue;
      }
      auto line = pipe_.recv(left);
      if (!line) {
        if (std::chrono::steady_clock::now() < until) return -1;  // connection lost
        continue;
      }
      if (line->rfind("zcx-peer-exit ", 0) == 0) {
        reaped_ = true;
        return killed ? -1 : std::atoi(line->c_str() + 14);
      }
    }
  }

  pid_t pid_ = -1;
  bool reaped_ = false;
  bool remote_ = false;
  Pipe pipe_;
};

/// In main(), before runPeerIfAsked: "--zcx-peer-server=ADDR:PORT" makes this process a peer
/// server for tests running on another machine with ZCX_TEST_REMOTE_PEER=ADDR:PORT. It serves
/// until killed; each connection either spawns a peer (this binary, "--zcx-peer NAME FD ARGS",
/// FD being the connection) or sends a signal to one. Returns -1 if not asked.
inline int runPeerServerIfAsked(int argc, char** argv) {
  const std::string flag = "--zcx-peer-server=";
  if (argc < 2 || std::string(argv[1]).rfind(flag, 0) != 0) return -1;
  std::string addr = std::string(argv[1]).substr(flag.size());
  auto colon = addr.rfind(':');
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(std::atoi(addr.c_str() + colon + 1)));
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (colon == std::string::npos ||
      ::inet_pton(AF_INET, addr.substr(0, colon).c_str(), &sa.sin_addr) != 1 ||
      ::bind(lfd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || ::listen(lfd, 64) != 0) {
    std::fprintf(stderr, "zcx peer server: cannot listen on %s: %s\n", addr.c_str(),
                 std::strerror(errno));
    return 1;
  }
  std::printf("zcx peer server listening on %s\n", addr.c_str());
  std::fflush(stdout);
  ::signal(SIGCHLD, SIG_IGN);  // connection handlers are reaped by the kernel
  for (;;) {
    int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return 1;
    }
    if (::fork() != 0) {  // (a failed fork drops this connection)
      ::close(c);
      continue;
    }
    // Connection handler.
    ::close(lfd);
    ::signal(SIGCHLD, SIG_DFL);  // it waits for its peer
    Pipe pipe(c);
    auto first = pipe.recv(std::chrono::milliseconds(30000));
    std::vector<std::string> w = first ? words(*first) : std::vector<std::string>{};
    if (w.size() == 3 && w[0] == "kill") {
      int rc = ::kill(std::atoi(w[1].c_str()), std::atoi(w[2].c_str()));
      pipe.send(rc == 0 ? "ok" : std::string("error ") + std::strerror(errno));
      ::_exit(0);
    }
    if (w.size() < 2 || w[0] != "spawn") {
      pipe.send("error unknown request");
      ::_exit(1);
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      pipe.send("zcx-peer-pid " + std::to_string(::getpid()));  // before the peer's first line
      int fd = ::dup(c);  // without CLOEXEC: the exec'd peer keeps it
      char path[4096];
      ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
      path[n > 0 ? n : 0] = 0;
      std::vector<std::string> argv_s = {path, "--zcx-peer", w[1], std::to_string(fd)};
      argv_s.insert(argv_s.end(), w.begin() + 2, w.end());
      std::vector<char*> args;
      for (auto& a : argv_s) args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(path, args.data());
      ::_exit(97);
    }
    int st = 0;
    int code = 96;
    if (pid > 0 && ::waitpid(pid, &st, 0) == pid)
      code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pipe.send("zcx-peer-exit " + std::to_string(code));
    ::_exit(0);
  }
}

}  // namespace zcx::test

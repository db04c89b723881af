// Test helper: real etcd members on loopback (free ports, temporary data directories), started as
// child processes and killed with SIGKILL when the cluster object goes.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "etcd_client.h"

namespace zcx::test {

/// The etcd binary ($ZCX_ETCD, else etcd on PATH, else /usr/bin/etcd), or "" if there is none.
inline std::string etcdBinary() {
  if (const char* e = std::getenv("ZCX_ETCD"); e && *e) return ::access(e, X_OK) == 0 ? e : "";
  if (const char* path = std::getenv("PATH")) {
    std::string p = path;
    size_t start = 0;
    while (start <= p.size()) {
      size_t end = p.find(':', start);
      std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
      std::string cand = (dir.empty() ? "." : dir) + "/etcd";
      if (::access(cand.c_str(), X_OK) == 0) return cand;
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  return ::access("/usr/bin/etcd", X_OK) == 0 ? "/usr/bin/etcd" : "";
}

/// A port nobody listens on right now (bound to port 0, then released).
inline uint16_t freePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(sa);
  uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) == 0)
    port = ntohs(sa.sin_port);
  ::close(fd);
  return port;
}

class EtcdCluster {
 public:
  struct Member {
    std::string name;
    uint16_t client_port = 0;
    uint16_t peer_port = 0;
    pid_t pid = -1;
    std::string client() const { return "127.0.0.1:" + std::to_string(client_port); }
  };

  /// Starts `n` members and waits (up to `ready_within`) until every one serves a linearizable
  /// read, i.e. the cluster has a leader. ok() says whether that worked; error() why not.
  EtcdCluster(int n, std::chrono::seconds ready_within = std::chrono::seconds(30)) {
    binary_ = etcdBinary();
    if (binary_.empty()) {
      error_ = "no etcd binary";
      return;
    }
    char tmpl[] = "/tmp/zcx-etcd-XXXXXX";
    if (!::mkdtemp(tmpl)) {
      error_ = "mkdtemp failed";
      return;
    }
    dir_ = tmpl;
    std::string initial;
    for (int i = 0; i < n; ++i) {
      Member m;
      m.name = "m" + std::to_string(i);
      m.client_port = freePort();
      m.peer_port = freePort();
      members_.push_back(m);
      if (i) initial += ",";
      initial += m.name + "=http://127.0.0.1:" + std::to_string(m.peer_port);
    }
    for (Member& m : members_) start(m, initial);
    auto until = std::chrono::steady_clock::now() + ready_within;
    for (const Member& m : members_) {
      auto c = detail::EtcdClient::create("etcd://" + m.client(), std::chrono::seconds(2));
      for (;;) {
        if ((*c)->range("/zcx-ready-probe").ok()) break;
        if (std::chrono::steady_clock::now() > until) {
          error_ = "etcd member " + m.name + " at " + m.client() + " not ready (log: " + dir_ +
                   "/" + m.name + ".log)";
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    ok_ = true;
  }
  ~EtcdCluster() {
    for (Member& m : members_) kill(m);
    if (!dir_.empty() && ok_) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  std::vector<Member>& members() { return members_; }
  /// "etcd://127.0.0.1:A,127.0.0.1:B,..." of every member.
  std::string url() const {
    std::string u = "etcd://";
    for (size_t i = 0; i < members_.size(); ++i) u += (i ? "," : "") + members_[i].client();
    return u;
  }
  void kill(Member& m) {
    if (m.pid <= 0) return;
    ::kill(m.pid, SIGKILL);
    ::waitpid(m.pid, nullptr, 0);
    m.pid = -1;
  }

 private:
  void start(Member& m, const std::string& initial) {
    std::string peer = "http://127.0.0.1:" + std::to_string(m.peer_port);
    std::string client = "http://" + m.client();
    std::vector<std::string> args = {
        binary_,
        "--name=" + m.name,
        "--data-dir=" + dir_ + "/" + m.name,
        "--listen-client-urls=" + client,
        "--advertise-client-urls=" + client,
        "--listen-peer-urls=" + peer,
        "--initial-advertise-peer-urls=" + peer,
        "--initial-cluster=" + initial,
        "--initial-cluster-state=new",
        "--initial-cluster-token=zcx-test-" + std::to_string(::getpid()) + "-" + dir_.substr(14)};
    std::string log = dir_ + "/" + m.name + ".log";
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    m.pid = ::fork();
    if (m.pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a crashed test
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(argv[0], argv.data());
      ::_exit(97);
    }
    if (fd >= 0) ::close(fd);
  }

  std::string binary_;
  std::string dir_;
  std::vector<Member> members_;
  bool ok_ = false;
  std::string error_;
};

}  // namespace zcx::test
